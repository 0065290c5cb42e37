//! `nanovllm`: the command-line front end. It owns argument parsing and
//! input/output formats only; everything it runs lives in nanovllm-core.

mod args;
mod bench;
mod bench_serve;
mod chat;
mod completions;
mod download;
mod generate;
mod load_progress;
mod logging;
mod perplexity;
mod requests;
mod run_batch;
mod serve;
mod worker;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let verbosity = logging::Verbosity::from_flags(cli.verbose, cli.quiet);
    logging::init(verbosity);
    let result = match cli.command {
        Command::Generate(args) => generate::run(args, verbosity),
        Command::Serve(args) => serve::run(args, verbosity),
        Command::Chat(args) => chat::run(args, verbosity),
        Command::Bench(args) => bench::run(*args),
        Command::Perplexity(args) => perplexity::run(*args, verbosity),
        Command::Worker(args) => worker::run(args),
        Command::Completions(args) => completions::run(args),
        Command::Download(args) => download::run(args, verbosity),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        // Some requests failed; each has its error entry in the output.
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            // One line: the error and its causes.
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
