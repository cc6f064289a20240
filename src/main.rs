//! The `tern` command: parses the command line and hands over to [`tern::cli`].

use std::process::ExitCode;

// Events are allocated by the thread that decodes them and often freed by another (sharded
// replay, the live pipeline's engine thread); mimalloc is faster than glibc at both.
#[global_allocator]
static ALLOCATOR: tern::alloc::Allocator = tern::alloc::Allocator;

fn main() -> ExitCode {
    tern::cli::main()
}
