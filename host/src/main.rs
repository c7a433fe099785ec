//! The `pigeon` binary: parse, set up logging, dispatch, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // A shell asking for completions (`COMPLETE=bash pigeon -- ...`) is answered here, and exits.
    pigeon::cli::complete_if_asked();
    let cli = pigeon::cli::Cli::parse();
    if cli.may_die_of_a_closed_pipe() {
        // Rust ignores SIGPIPE, which makes `println!` panic when a reader such as `head` goes
        // away; the default action ends the process quietly, as with any Unix filter.
        // SAFETY: no other thread exists yet, and SIG_DFL is a valid disposition for SIGPIPE.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let format = cli.log_format();
    pigeon::logging::init(format, cli.verbose());
    pigeon::home::restrict_umask();
    pigeon::home::forbid_core_dumps();
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
