//! Subcommands; each is a thin shell over the library. This file parses
//! the command line and runs the subcommand asked for.

mod args;
mod dev;
mod devices;
mod fetch;
mod generate;
mod mirror;
mod progress;
mod serve;
mod units;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "schnell",
    version = version_line(),
    about = "FLUX.1-schnell text-to-image: generate, fetch and mirror models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make an image from a prompt.
    Generate(generate::GenerateArgs),
    /// Serve the OpenAI-style images API and the web UI.
    Serve(serve::ServeArgs),
    /// Download a model's files (or any Hub files) into the standard cache.
    Fetch(fetch::FetchArgs),
    /// Serve a folder of model files over the Hub's resolve protocol.
    Mirror(mirror::MirrorArgs),
    /// The back ends this build has (cpu, cuda, metal) and the devices each sees.
    Devices,
    /// Developer tools.
    #[command(subcommand)]
    Dev(dev::DevCommand),
}

/// `schnell 0.1.0 (back ends: cpu, cuda)`, without the name clap prefixes.
fn version_line() -> &'static str {
    // Once per process; clap wants a 'static string.
    Box::leak(
        format!(
            "{} (back ends: {})",
            env!("CARGO_PKG_VERSION"),
            schnell::flux::COMPILED_BACKENDS
        )
        .into_boxed_str(),
    )
}

/// Parses the command line, sets up logging and the runtime, and runs the
/// subcommand; errors are printed, and the exit code says whether it failed.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_log = match cli.command {
        Command::Mirror(_) | Command::Serve(_) => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_log)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Generate(args) => generate::run(args).await,
            Command::Serve(args) => serve::run(args).await,
            Command::Fetch(args) => fetch::run(args).await,
            Command::Mirror(args) => mirror::run(args).await,
            Command::Devices => devices::run().await,
            Command::Dev(command) => dev::run(command).await,
        }
    });
    // A blocking task (hashing a large file, say) must not hold the exit up.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
