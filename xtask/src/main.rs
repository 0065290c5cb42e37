//! `cargo xtask`: benchmarks, the GPU check bundle and chores. Depends on nanovllm-core only.

mod bench;
mod gpu_check;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "nanovllm benchmarks and chores")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    // Boxed: its flags make it far larger than the other variants.
    /// Throughput on nano-vLLM's bench.py workload (profile `seed`) or its CPU-sized variant.
    Bench(Box<bench::BenchArgs>),
    /// Builds the CUDA tests, `nanovllm` and this tool (release, `--features cuda`) into one
    /// folder under 64 MiB with a `run.sh`, and prints the command that runs it on a GPU machine.
    GpuCheck(gpu_check::GpuCheckArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench(args) => bench::run(*args),
        Command::GpuCheck(args) => gpu_check::run_gpu_check(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}
