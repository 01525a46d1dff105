//! Subcommands; each is a thin shell over the library.

mod generate;
mod progress;
mod serve;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use schnell::flux::{parse_dtype, DeviceChoice, EngineOptions, ModelDescription, TextEncoders};
use schnell::hub::{HubClient, HubClientBuilder, HubFile};
use schnell::mirror::Mirror;

#[derive(Parser)]
#[command(
    name = "schnell",
    version,
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
    Fetch(FetchArgs),
    /// Serve a folder of model files over the Hub's resolve protocol.
    Mirror(MirrorArgs),
    /// Developer tools.
    #[command(subcommand)]
    Dev(DevCommand),
}

#[derive(Subcommand)]
enum DevCommand {
    /// Write tiny random-weight models (real file and tensor names, toy sizes;
    /// their images are noise) for `schnell mirror --dir DIR`.
    TinyModels {
        /// Folder to write `<org>/<name>/<path>` into.
        dir: PathBuf,
    },
}

/// Where files come from and go to.
#[derive(Args, Clone)]
struct HubArgs {
    /// Hub or mirror to fetch from (default: $HF_ENDPOINT, else https://huggingface.co).
    #[arg(long)]
    endpoint: Option<String>,
    /// Cache folder (default: $HF_HUB_CACHE, else $HF_HOME/hub).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

impl HubArgs {
    /// The environment's settings, overridden by the flags.
    fn builder(&self) -> HubClientBuilder {
        let mut builder = HubClientBuilder::from_env();
        if let Some(endpoint) = &self.endpoint {
            builder = builder.endpoint(endpoint);
        }
        if let Some(dir) = &self.cache_dir {
            builder = builder.cache_dir(dir);
        }
        builder
    }

    /// A client that draws progress bars.
    fn client(&self, bars: &progress::DownloadBars) -> Result<HubClient> {
        Ok(self.builder().on_event(bars.sink()).build()?)
    }
}

/// How the engine runs.
#[derive(Args, Clone)]
struct EngineArgs {
    /// cpu, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// bf16 or f32 (default: bf16 on GPUs, f32 on the CPU; f16 is refused).
    #[arg(long)]
    dtype: Option<String>,
    /// flux-repo (about 34 GB) or original (about 70 GB, candle's file list).
    #[arg(long, default_value_t = TextEncoders::FluxRepo)]
    text_encoders: TextEncoders,
    /// Load T5, encode, free it, then load the transformer, on every image.
    #[arg(long)]
    low_memory: bool,
}

impl EngineArgs {
    fn options(&self) -> Result<EngineOptions> {
        Ok(EngineOptions {
            device: self.device,
            dtype: self.dtype.as_deref().map(parse_dtype).transpose()?,
            text_encoders: self.text_encoders,
            low_memory: self.low_memory,
        })
    }
}

#[derive(Args)]
struct FetchArgs {
    /// Every file of a model: `flux-schnell`.
    #[arg(long, conflicts_with_all = ["repo", "files"])]
    model: Option<String>,
    /// With --model: which text encoders.
    #[arg(long, default_value_t = TextEncoders::FluxRepo)]
    text_encoders: TextEncoders,
    /// Repository, `org/name`, for ad-hoc files.
    #[arg(long, requires = "files")]
    repo: Option<String>,
    /// Branch, tag, `refs/pr/N` or commit.
    #[arg(long, default_value = "main")]
    revision: String,
    /// Files of --repo to fetch.
    #[arg(long = "file", num_args = 1.., requires = "repo")]
    files: Vec<String>,
    #[command(flatten)]
    hub: HubArgs,
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
            Command::Fetch(args) => fetch(args).await,
            Command::Mirror(args) => mirror(args).await,
            Command::Dev(DevCommand::TinyModels { dir }) => tiny_models(dir).await,
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
    let files: Vec<HubFile> = match (&args.model, &args.repo) {
        (Some(name), _) => {
            let model = ModelDescription::find(name)
                .with_context(|| format!("unknown model {name:?}: try flux-schnell"))?;
            model.files(args.text_encoders).all()
        }
        (None, Some(repo)) => args
            .files
            .iter()
            .map(|f| HubFile::new(repo, f).at_revision(&args.revision))
            .collect(),
        (None, None) => bail!("say what to fetch: --model flux-schnell, or --repo R --file F…"),
    };
    let bars = progress::DownloadBars::new();
    let client = args.hub.client(&bars)?;
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

async fn tiny_models(dir: PathBuf) -> Result<()> {
    let target = dir.clone();
    let written =
        tokio::task::spawn_blocking(move || schnell::flux::tiny::write_tiny_models(&target))
            .await?
            .map_err(|e| anyhow::anyhow!("writing tiny models into {}: {e}", dir.display()))?;
    println!(
        "wrote {} files of tiny random-weight models into {} (their images are noise)",
        written.len(),
        dir.display()
    );
    println!("serve them with: schnell mirror --dir {}", dir.display());
    Ok(())
}
