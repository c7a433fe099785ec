//! The `pigeon` binary: parse, set up logging, dispatch, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = pigeon::cli::Cli::parse();
    let format = cli.log_format();
    pigeon::logging::init(format, cli.verbose());
    pigeon::home::restrict_umask();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(pigeon::cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            pigeon::logging::report_error(format, &e);
            ExitCode::from(e.kind().exit_code() as u8)
        }
    }
}
