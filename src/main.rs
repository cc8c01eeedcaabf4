//! `imagebuild`: thin entry point. Parses the command line, runs one subcommand, prints
//! the error once.

use std::process::ExitCode;

fn main() -> ExitCode {
    imagebuild::cli::main()
}
