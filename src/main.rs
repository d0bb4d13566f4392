//! The `qtier` command line: parse, validate into a config, run, map errors to exit codes.

/// `println!` for results on stdout: a closed pipe (`qtier ... | head`) ends the process quietly
/// with status 0 instead of panicking, as Unix tools do.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(error) = writeln!(std::io::stdout(), $($arg)*) {
            $crate::stdout_failed(error);
        }
    }};
}

/// `print!` counterpart of [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(error) = write!(std::io::stdout(), $($arg)*) {
            $crate::stdout_failed(error);
        }
    }};
}

mod cli;
mod commands;
mod k8s;
mod progress;
mod serve;
mod test_model;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

/// Exit status of a command that failed (bad input, I/O, a refused overwrite). Usage errors exit
/// with clap's status 2.
const EXIT_FAILURE: u8 = 1;

/// Ends the process after a failed write to stdout: quietly for a closed pipe, with a message
/// otherwise.
fn stdout_failed(error: std::io::Error) -> ! {
    if error.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: writing to stdout: {error}");
    std::process::exit(i32::from(EXIT_FAILURE));
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `--threads` sizes both pools: rayon's (quantization, tokenization, loading) and the
    // kernels' spinning pool (GEMMs, attention, the row-wise encoder ops).
    if let Some(threads) = cli.threads {
        let sized = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.get())
            .build_global()
            .map_err(|e| e.to_string())
            .and_then(|()| qtier_kernels::set_threads(threads).map_err(|e| e.to_string()));
        if let Err(error) = sized {
            eprintln!("error: --threads {threads}: {error}");
            return ExitCode::from(EXIT_FAILURE);
        }
    }
    let result = match cli.command {
        Command::Quantize(args) => commands::quantize::run(args),
        Command::Inspect(args) => commands::inspect::run(args),
        Command::Embed(args) => commands::embed::run(args),
        Command::Eval(args) => commands::eval::run(args),
        Command::Bench(command) => commands::bench::run(command),
        Command::Compare(args) => commands::compare::run(args),
        Command::Recommend(args) => commands::recommend::run(args),
        Command::Profiles(command) => commands::profiles::run(command),
        Command::Publish(args) => commands::publish::run_publish(args),
        Command::Pull(args) => commands::publish::run_pull(args),
        Command::PublishReport(args) => commands::publish::run_publish_report(args),
        Command::Run(args) => commands::run::run(args),
        Command::Demo(args) => commands::demo::run(args),
        Command::TestModel(args) => commands::test_model::run(args),
        Command::Serve(args) => commands::serve::run(args),
        Command::K8s(command) => commands::k8s::run(command),
        Command::Generate(args) => commands::generate::run(args),
        Command::Synth(args) => commands::synth::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.is::<commands::compare::RegressionDetected>() => {
            eprintln!("{error}");
            ExitCode::from(commands::compare::EXIT_REGRESSION)
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
