//! The `qtier` command line: parse, validate into a config, run, map errors to exit codes.

mod cli;
mod commands;
mod progress;
mod test_model;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

/// Exit status of a command that failed (bad input, I/O, a refused overwrite). Usage errors exit
/// with clap's status 2.
const EXIT_FAILURE: u8 = 1;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(threads) = cli.threads
        && let Err(error) = rayon::ThreadPoolBuilder::new().num_threads(threads.get()).build_global()
    {
        eprintln!("error: --threads {threads}: {error}");
        return ExitCode::from(EXIT_FAILURE);
    }
    let result = match cli.command {
        Command::Quantize(args) => commands::quantize::run(args),
        Command::Inspect(args) => commands::inspect::run(args),
        Command::Embed(args) => commands::embed::run(args),
        Command::Eval(args) => commands::eval::run(args),
        Command::Bench(command) => commands::bench::run(command, cli.threads),
        Command::Demo(args) => commands::demo::run(args),
        Command::TestModel(args) => commands::test_model::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
