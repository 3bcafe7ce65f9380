//! The Slurm launch script, run for real on this machine: `srun` and `scontrol` are stand-ins
//! that start the given command once per task (with `SLURM_PROCID`) and name this host as the
//! allocation's first node. The sweep it launches must write the numbers a local run writes.

use std::path::Path;
use std::process::Command;

use batchlab_tests::{batchlab, free_port, study_numbers, text};

const SRUN: &str = r#"#!/bin/bash
# Stand-in for srun: drops srun's options, starts the command once per task.
ntasks=1
while [[ "$1" == -* ]]; do
  case "$1" in --ntasks=*) ntasks="${1#--ntasks=}" ;; esac
  shift
done
pids=()
for ((i = 0; i < ntasks; i++)); do SLURM_PROCID=$i "$@" & pids+=($!); done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
"#;

const SCONTROL: &str = r#"#!/bin/bash
# Stand-in for `scontrol show hostnames`: this host first.
[[ "$1 $2" == "show hostnames" ]] || { echo "unexpected: scontrol $*" >&2; exit 2; }
printf 'localhost\nnode002\n'
"#;

fn write_exe(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn the_slurm_script_runs_a_sweep_on_its_tasks_with_the_numbers_of_a_local_run() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    write_exe(&bin.join("srun"), SRUN);
    write_exe(&bin.join("scontrol"), SCONTROL);
    let args = "--set task.dim=12 --batches 2,32 --seeds 2 --lr-grid 0.3:1.2:3 \
                --target-fraction 0.05 --steps 400 --probe-samples 2048";
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/slurm/batchlab.sbatch");
    let out = dir.path().join("slurm");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let o = Command::new("bash")
        .arg(&script)
        .current_dir(dir.path())
        .env("PATH", path)
        .env("BATCHLAB", batchlab_tests::exe())
        .env("BATCHLAB_ARGS", args)
        .env("BATCHLAB_OUT", &out)
        .env("BATCHLAB_PORT", free_port().to_string())
        .env("SLURM_JOB_ID", "42")
        .env("SLURM_JOB_NODELIST", "localhost,node002")
        .env("SLURM_NTASKS", "3")
        .env("RUST_LOG", "info")
        .env_remove("BATCHLAB_TOKEN")
        .env_remove("RANK")
        .output()
        .unwrap();
    let log = text(&o);
    assert!(o.status.success(), "the sbatch script failed:\n{log}");
    // Three workers joined, with the ranks Slurm gave them, and a token was made up for them.
    assert_eq!(log.matches("worker joined").count(), 3, "{log}");
    let local = dir.path().join("local");
    let mut local_args = vec!["sweep", "--out", local.to_str().unwrap()];
    local_args.extend(args.split_whitespace());
    let l = batchlab(&local_args);
    assert!(l.status.success(), "{}", text(&l));
    let (a, b) = (study_numbers(&local), study_numbers(&out));
    assert!(a.len() >= 8, "{a:?}");
    assert_eq!(a, b);
}
