//! The `batchlab` binary: one entry point for every experiment.

mod allreduce;
mod analysis;
mod cluster;
mod config;
mod exec;
mod lrfind;
mod output;
mod plan;
mod reproduce;
mod sweep;
mod train;
mod warmup;

#[cfg(test)]
mod deploy_check;
#[cfg(test)]
mod fuzz_tests;

use clap::{Parser, Subcommand};

/// mimalloc keeps freed message buffers (MiB each, many per all-reduce) for reuse; glibc's
/// malloc handed them back to the kernel and page-faulted them in again on every piece.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// batchlab: how training behaves as the batch grows.
///
/// Data-parallel training simulator: linear and square-root learning-rate scaling, warmup
/// stability, and the critical batch size against the gradient noise scale, on exact small
/// models (noisy quadratic, linear/logistic regression, MLPs).
#[derive(Parser, Debug)]
#[command(name = "batchlab", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train one run in this process and write its per-step metrics and summary.
    Train(train::TrainArgs),
    /// Batch-size sweep: steps and samples to a target, the critical batch size, the noise scale.
    Sweep(sweep::SweepArgs),
    /// Learning-rate finder: ramp the rate exponentially, find α* (the largest rate before the
    /// loss blows up), and report λ_max ≈ 2/α* beside the Lanczos λ_max at θ₀.
    LrFind(lrfind::LrFindArgs),
    /// Warmup stability grid: peak rate (× 2/λ_max at θ₀) × warmup length × shape × momentum.
    Warmup(warmup::WarmupArgs),
    /// Time and worker-hours to a sweep's target on N workers, per batch size, from its fitted
    /// S(B) and a model of compute and network; the fastest batch per worker count.
    Plan(plan::PlanArgs),
    /// Published claims about batch size, each checked by one command with a verdict: the
    /// entry's experiments, the published figure beside the measured one, holds / does not
    /// hold / inconclusive.
    Reproduce(reproduce::ReproduceArgs),
    /// Re-analyse a study folder (from `sweep`, `warmup` or `lr-find`) and render its report.html again.
    Report {
        /// The study folder.
        dir: std::path::PathBuf,
    },
    /// Train one run on N local worker processes (coordinator in this process, loopback).
    Run(cluster::RunArgs),
    /// Wait for workers on --listen, train the configured run on them, shut them down.
    Coordinator(cluster::CoordinatorArgs),
    /// Join a coordinator and train whatever it hands out until it says stop.
    Worker(cluster::WorkerArgs),
    /// Benchmarks (they print figures; they are not tests).
    #[command(subcommand)]
    Bench(Bench),
}

#[derive(Subcommand, Debug)]
enum Bench {
    /// Step time of one run on 1, 2, 4 local workers, split into compute and all-reduce.
    Step(cluster::BenchStepArgs),
    /// All-reduce bandwidth, latency and correctness across workers, nccl-tests style: per
    /// size time, algbw, busbw, #wrong, p50/p99; the α-β fit per algorithm; a stress mode.
    Allreduce(allreduce::AllreduceArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging();
    quiet_on_broken_pipe();
    let result = match cli.command {
        Command::Train(args) => train::run(args),
        Command::Run(args) => cluster::run(args),
        Command::Sweep(args) => sweep::run(args),
        Command::LrFind(args) => lrfind::run(args),
        Command::Warmup(args) => warmup::run(args),
        Command::Plan(args) => plan::run(args),
        Command::Reproduce(args) => reproduce::run(args),
        Command::Report { dir } => report(&dir),
        Command::Coordinator(args) => cluster::coordinator(args),
        Command::Worker(args) => cluster::worker(args),
        Command::Bench(Bench::Step(args)) => cluster::bench_step(args),
        Command::Bench(Bench::Allreduce(args)) => allreduce::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<exec::Interrupted>().is_some() => {
            let stop = e.downcast_ref::<exec::Interrupted>().expect("checked");
            eprintln!("{stop}");
            std::process::ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// `batchlab report DIR`: the study's own report, with the folder claimed while it is written.
fn report(dir: &std::path::Path) -> anyhow::Result<()> {
    if !dir.is_dir() {
        anyhow::bail!(
            "{}: no such folder: expected a study folder written by sweep, warmup or lr-find",
            dir.display()
        );
    }
    let _lock = output::FolderLock::acquire(dir, "batchlab report")?;
    match output::Experiment::of(dir)? {
        output::Experiment::Sweep => sweep::report(dir),
        output::Experiment::Warmup => warmup::report(dir),
        output::Experiment::LrFind => lrfind::report(dir),
    }
}

/// A reader that went away (`batchlab … | head`) stops the program without a panic message:
/// the print's panic still unwinds, so local workers are shut down as on any other error.
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            return;
        }
        default(info);
    }));
}

/// `tracing` to stderr, filtered by `RUST_LOG` (default `info`).
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only on a terminal: logs redirected to a file stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
