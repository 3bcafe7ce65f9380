//! The launch files in `deploy/` against this binary's flags: every command line they start
//! is parsed by the real command-line parser, and the values that must agree across files
//! (ports, worker counts, service names, the token's secret) are compared.

use std::collections::HashMap;
use std::path::PathBuf;

use clap::Parser;
use yaml_rust2::{Yaml, YamlLoader};

use crate::Cli;

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn load(rel: &str) -> Vec<Yaml> {
    let path = deploy_dir().join(rel);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{rel} is not YAML: {e}"))
}

/// Parses `args` (without the program name) as batchlab would, or names the file and error.
fn parse(what: &str, args: &[String]) -> Cli {
    Cli::try_parse_from(std::iter::once("batchlab".to_string()).chain(args.iter().cloned()))
        .unwrap_or_else(|e| panic!("{what}: `batchlab {}` is refused:\n{e}", args.join(" ")))
}

/// The value of `--flag` in `args`.
fn flag<'a>(args: &'a [String], name: &str) -> &'a str {
    let i = args
        .iter()
        .position(|a| a == name)
        .unwrap_or_else(|| panic!("{name} missing from {args:?}"));
    &args[i + 1]
}

fn strings(y: &Yaml) -> Vec<String> {
    y.as_vec()
        .unwrap_or_else(|| panic!("expected a list of strings, got {y:?}"))
        .iter()
        .map(|a| a.as_str().expect("a string").to_string())
        .collect()
}

/// Docker Compose's interpolation: `${NAME}`, `${NAME:-default}`, `${NAME:?message}`.
fn interpolate(s: &str, env: &HashMap<&str, &str>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let end = rest[i..].find('}').expect("an unclosed ${") + i;
        let expr = &rest[i + 2..end];
        let (name, default) = match expr.find(":-").or_else(|| expr.find(":?")) {
            Some(j) if &expr[j..j + 2] == ":-" => (&expr[..j], Some(&expr[j + 2..])),
            Some(j) => (&expr[..j], None),
            None => (expr, Some("")),
        };
        match (env.get(name), default) {
            (Some(v), _) => out.push_str(v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => panic!("compose requires {name}, which the test did not set"),
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

fn env_value<'a>(container: &'a Yaml, name: &str) -> &'a Yaml {
    container["env"]
        .as_vec()
        .expect("an env list")
        .iter()
        .find(|e| e["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {name} in the container's env"))
}

fn containers(doc: &Yaml) -> &Yaml {
    &doc["spec"]["template"]["spec"]["containers"][0]
}

#[test]
fn the_kubernetes_manifests_start_commands_batchlab_accepts_and_agree_with_each_other() {
    let coordinator = load("k8s/coordinator.yaml");
    let by_kind = |docs: &[Yaml], kind: &str| {
        docs.iter()
            .find(|d| d["kind"].as_str() == Some(kind))
            .unwrap_or_else(|| panic!("no {kind}"))
            .clone()
    };
    let deployment = by_kind(&coordinator, "Deployment");
    let service = by_kind(&coordinator, "Service");
    let pvc = by_kind(&coordinator, "PersistentVolumeClaim");
    let job = by_kind(&load("k8s/workers.yaml"), "Job");

    // The coordinator's command.
    let c = containers(&deployment);
    let c_args = strings(&c["args"]);
    parse("k8s/coordinator.yaml", &c_args);
    let listen: std::net::SocketAddr = flag(&c_args, "--listen").parse().unwrap();
    assert!(
        listen.ip().is_unspecified(),
        "the coordinator must listen on every interface"
    );
    assert_eq!(deployment["spec"]["replicas"].as_i64(), Some(1));
    assert_eq!(
        deployment["spec"]["selector"]["matchLabels"],
        deployment["spec"]["template"]["metadata"]["labels"]
    );
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["template"]["metadata"]["labels"]
    );
    assert_eq!(
        service["spec"]["ports"][0]["targetPort"].as_i64(),
        Some(i64::from(listen.port()))
    );
    assert_eq!(
        c["ports"][0]["containerPort"].as_i64(),
        Some(i64::from(listen.port()))
    );
    let out = flag(&c_args, "--out");
    let mount = c["volumeMounts"][0]["mountPath"].as_str().unwrap();
    assert!(
        out.starts_with(mount),
        "--out {out} is not on the volume at {mount}"
    );
    assert_eq!(
        deployment["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
        pvc["metadata"]["name"]
    );

    // The workers' command: one pod per rank, as many as the coordinator waits for.
    let w = containers(&job);
    let w_args = strings(&w["args"]);
    // Kubernetes expands $(POD_IP) from the container's env before the process starts.
    assert!(
        env_value(w, "POD_IP")["valueFrom"]["fieldRef"]["fieldPath"].as_str()
            == Some("status.podIP")
    );
    let w_args: Vec<String> = w_args
        .iter()
        .map(|a| a.replace("$(POD_IP)", "10.1.2.3"))
        .collect();
    parse("k8s/workers.yaml", &w_args);
    assert_eq!(w_args[0], "worker");
    let workers: i64 = flag(&c_args, "--workers").parse().unwrap();
    assert_eq!(job["spec"]["completions"].as_i64(), Some(workers));
    assert_eq!(job["spec"]["parallelism"].as_i64(), Some(workers));
    assert_eq!(job["spec"]["completionMode"].as_str(), Some("Indexed"));
    assert_eq!(
        flag(&w_args, "--coordinator"),
        format!(
            "{}:{}",
            service["metadata"]["name"].as_str().unwrap(),
            service["spec"]["ports"][0]["port"].as_i64().unwrap()
        )
    );
    let w_listen: std::net::SocketAddr = flag(&w_args, "--listen").parse().unwrap();
    let declared: Vec<i64> = w["ports"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_i64().unwrap())
        .collect();
    assert!(declared.contains(&i64::from(w_listen.port())));
    assert!(declared.contains(&flag(&w_args, "--data-port").parse::<i64>().unwrap()));
    // Both read the token from the same secret.
    assert_eq!(
        env_value(c, "BATCHLAB_TOKEN")["valueFrom"],
        env_value(w, "BATCHLAB_TOKEN")["valueFrom"]
    );
    assert_eq!(c["image"], w["image"]);
}

#[test]
fn the_compose_file_starts_commands_batchlab_accepts_for_every_experiment() {
    let docs = load("compose/docker-compose.yml");
    let services = &docs[0]["services"];
    let command = |service: &str, env: &HashMap<&str, &str>| {
        let raw = services[service]["command"]
            .as_str()
            .unwrap_or_else(|| panic!("{service} has no command"));
        // Compose splits a string command into words like a shell.
        shlex::split(&interpolate(raw, env)).expect("a command compose can split")
    };
    for experiment in [
        "sweep",
        "warmup",
        "lr-find",
        "coordinator",
        "bench allreduce",
    ] {
        let mut env = HashMap::from([
            ("BATCHLAB_TOKEN", "secret"),
            ("BATCHLAB_EXPERIMENT", experiment),
        ]);
        let c = command("coordinator", &env);
        parse(&format!("compose coordinator ({experiment})"), &c);
        env.insert("BATCHLAB_WORKERS", "3");
        env.insert("BATCHLAB_ARGS", "--seeds 3");
        if experiment == "sweep" {
            let c = command("coordinator", &env);
            parse("compose coordinator with BATCHLAB_ARGS", &c);
            assert_eq!(flag(&c, "--workers"), "3");
        }
        let listen: std::net::SocketAddr = flag(&c, "--listen").parse().unwrap();
        let w = command("worker", &env);
        parse("compose worker", &w);
        assert_eq!(
            flag(&w, "--coordinator"),
            format!("coordinator:{}", listen.port())
        );
        let results = services["coordinator"]["volumes"][0].as_str().unwrap();
        assert!(flag(&c, "--out").starts_with(results.rsplit(':').next().unwrap()));
    }
    // Neither service starts without the token.
    for service in ["coordinator", "worker"] {
        let token = services[service]["environment"]["BATCHLAB_TOKEN"]
            .as_str()
            .unwrap();
        assert!(token.contains(":?"), "{service}: {token}");
    }
    assert_eq!(
        docs[0]["networks"]["batchlab"]["internal"].as_bool(),
        Some(true)
    );
}

#[test]
fn interpolation_follows_compose() {
    let env = HashMap::from([("A", "x")]);
    assert_eq!(interpolate("${A}-${B:-d}-${A:-d}-${A:?m}", &env), "x-d-x-x");
    assert_eq!(interpolate("no vars", &env), "no vars");
}
