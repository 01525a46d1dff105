//! The `schnell` command line (native only: the browser uses the library).

#[cfg(not(target_arch = "wasm32"))]
mod cli;

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    cli::main()
}

/// Built only because integration tests for wasm32 build every target.
#[cfg(target_arch = "wasm32")]
fn main() {}
