//! Subcommands; each is a thin shell over the library.

mod progress;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use schnell::hub::{HubClientBuilder, HubFile};
use schnell::mirror::Mirror;

#[derive(Parser)]
#[command(
    name = "schnell",
    version,
    about = "FLUX.1-schnell text-to-image: fetch, mirror and serve models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download files from the Hugging Face Hub into the standard cache.
    Fetch(FetchArgs),
    /// Serve a folder of model files over the Hub's resolve protocol.
    Mirror(MirrorArgs),
}

#[derive(Args)]
struct FetchArgs {
    /// Repository, `org/name`.
    #[arg(long)]
    repo: String,
    /// Branch, tag, `refs/pr/N` or commit.
    #[arg(long, default_value = "main")]
    revision: String,
    /// Files to fetch (repeat, or list several).
    #[arg(long = "file", required = true, num_args = 1..)]
    files: Vec<String>,
    /// Hub or mirror to fetch from (default: $HF_ENDPOINT, else https://huggingface.co).
    #[arg(long)]
    endpoint: Option<String>,
    /// Cache folder (default: $HF_HUB_CACHE, else $HF_HOME/hub).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

#[derive(Args)]
struct MirrorArgs {
    /// `DIR/<org>/<name>/<path>`, or a Hugging Face cache folder.
    #[arg(long)]
    dir: PathBuf,
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:8090")]
    addr: SocketAddr,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_log = match cli.command {
        Command::Mirror(_) => "info",
        Command::Fetch(_) => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_log)),
        )
        .with_writer(std::io::stderr)
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
            Command::Fetch(args) => fetch(args).await,
            Command::Mirror(args) => mirror(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn fetch(args: FetchArgs) -> Result<()> {
    let mut builder = HubClientBuilder::from_env();
    if let Some(endpoint) = args.endpoint {
        builder = builder.endpoint(endpoint);
    }
    if let Some(dir) = args.cache_dir {
        builder = builder.cache_dir(dir);
    }
    let bars = progress::DownloadBars::new();
    let client = builder.on_event(bars.sink()).build()?;
    let files: Vec<HubFile> = args
        .files
        .iter()
        .map(|f| HubFile::new(&args.repo, f).at_revision(&args.revision))
        .collect();
    let fetched = client.files(&files).await;
    bars.finish();
    let fetched = fetched.context("fetch failed")?;
    for f in &fetched {
        let how = if f.from_cache() {
            "cached"
        } else {
            "downloaded"
        };
        println!(
            "{}\t{}\t{} bytes\t{how}",
            f.file.path,
            f.path().display(),
            f.size()
        );
    }
    if fetched.len() != files.len() {
        bail!("{} of {} files arrived", fetched.len(), files.len());
    }
    Ok(())
}

async fn mirror(args: MirrorArgs) -> Result<()> {
    let mirror = Mirror::open(&args.dir)
        .await
        .with_context(|| format!("cannot serve {}", args.dir.display()))?;
    let (root, layout) = (mirror.root().to_path_buf(), mirror.layout());
    schnell::mirror::serve(mirror, args.addr, |addr| {
        // A closed stdout must not take the server down with it.
        let mut out = std::io::stdout();
        let _ = writeln!(
            out,
            "serving {} ({layout:?} layout) at http://{addr}",
            root.display()
        );
        let _ = writeln!(out, "use it with: HF_ENDPOINT=http://{addr}");
    })
    .await
    .with_context(|| format!("mirror on {}", args.addr))
}
