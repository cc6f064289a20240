//! The `tern` command: parses the command line and hands over to [`tern::cli`].

use std::process::ExitCode;

fn main() -> ExitCode {
    tern::cli::main()
}
