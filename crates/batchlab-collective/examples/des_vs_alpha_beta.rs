//! The α-β formulas against a discrete-event run of the same plans (`simulate`), per algorithm,
//! world and size, on one modelled network: the table of docs/science.md#alpha-beta-model.
//!
//!     cargo run --release -p batchlab-collective --example des_vs_alpha_beta [ALPHA_US] [BETA_GBS]
//!
//! Defaults: α = 50 µs, β = 1.6 GB/s (about this machine's loopback fit). Sizes in bytes of
//! 8-byte words; pieces of 512 Ki words (4 MiB), as the data plane cuts them.

use batchlab_collective::{Algorithm, PlanConfig, alpha_beta_time, plan, simulate};

fn main() {
    let mut args = std::env::args().skip(1);
    let alpha_us: f64 = args
        .next()
        .map_or(50.0, |a| a.parse().expect("ALPHA_US: a number"));
    let beta_gbs: f64 = args
        .next()
        .map_or(1.6, |a| a.parse().expect("BETA_GBS: a number"));
    let (alpha, beta) = (alpha_us * 1e-6, beta_gbs * 1e9);
    println!("α = {alpha_us} µs, β = {beta_gbs} GB/s; times in ms; ratio = formula / simulation");
    println!(
        "{:>12} {:>6} {:>10} {:>12} {:>12} {:>7}",
        "algorithm", "ranks", "bytes", "formula", "simulation", "ratio"
    );
    for algorithm in Algorithm::ALL {
        for world in [2, 3, 8, 12] {
            for bytes in [8usize << 10, 1 << 20, 64 << 20] {
                let len = bytes / 8;
                let cfg = PlanConfig {
                    algorithm,
                    chunk_elems: 1 << 19,
                };
                let plans: Vec<_> = (0..world).map(|r| plan(&cfg, r, world, len)).collect();
                let des = simulate(&plans, 8, alpha, beta);
                let model = alpha_beta_time(algorithm, bytes as f64, world, alpha, beta);
                println!(
                    "{:>12} {world:>6} {bytes:>10} {:>12.4} {:>12.4} {:>7.3}",
                    algorithm.name(),
                    model * 1e3,
                    des * 1e3,
                    model / des
                );
            }
        }
    }
}
