//! `schnell serve`: listen at once, fetch and load in the background.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use schnell::flux::{FluxSchnell, ModelDescription, RetryPolicy};
use schnell::listen::{self, ServeOptions};
use schnell::server::{self, ServerConfig};

use super::args::{EngineArgs, HubArgs};
use super::units::{parse_bytes, parse_duration};

const API_KEY_ENV: &str = "SCHNELL_API_KEY";

#[derive(Args)]
// `schnell serve`'s flags (a doc comment here would change clap's help text).
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// The model to serve.
    #[arg(long, default_value = "flux-schnell")]
    model: String,
    #[command(flatten)]
    engine: EngineArgs,
    /// Requests admitted at once (running and waiting); more get 429.
    #[arg(long, default_value_t = 16)]
    max_queue: usize,
    /// Require `Authorization: Bearer KEY` on /v1 and for /hub's weights
    /// (an empty key is refused).
    #[arg(long, env = API_KEY_ENV, hide_env_values = true)]
    api_key: Option<String>,
    /// Allow browser calls from this origin, e.g. http://localhost:8081
    /// (repeat; `*` for any). Other sites' pages are refused.
    #[arg(long = "cors-origin")]
    cors_origins: Vec<String>,
    /// Answer to this host name too, besides localhost, IP addresses and
    /// --public-url's host (repeat; `*` for any). Other names are refused.
    #[arg(long = "allowed-host")]
    allowed_hosts: Vec<String>,
    /// The Trunk-built web UI.
    #[arg(long, default_value = "dist")]
    dist: PathBuf,
    /// Base of image URLs, e.g. https://images.example.com (default: relative
    /// URLs, /v1/images/ID.png).
    #[arg(long)]
    public_url: Option<String>,
    /// Keep `response_format: "url"` images in this folder (shareable between
    /// replicas) instead of in memory.
    #[arg(long)]
    image_dir: Option<PathBuf>,
    /// The most --image-dir may hold (e.g. 1GB); the oldest images go first.
    #[arg(long, value_parser = parse_bytes, default_value = "1GB", requires = "image_dir")]
    image_dir_max: u64,
    /// Connections open at once; at the cap a new one closes the longest-idle
    /// one (default: half the open-file limit, 16 to 1024).
    #[arg(long)]
    max_connections: Option<usize>,
    /// Time a client has to send a request's headers, and again its body.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    header_timeout: Duration,
    /// Time a client has to send an edit's body (its image, up to 50 MiB).
    #[arg(long, value_parser = parse_duration, default_value = "2m")]
    upload_timeout: Duration,
    /// Cut a request body that brings less than this a second over any 5 s,
    /// the first included (0 for no minimum).
    #[arg(long, value_parser = parse_bytes, default_value = "16KiB")]
    min_body_rate: u64,
    /// Close a connection with no request in flight after this long.
    #[arg(long, value_parser = parse_duration, default_value = "75s")]
    idle_timeout: Duration,
    /// On SIGTERM or Ctrl-C, let requests in flight finish for this long,
    /// then cancel them and exit (a second signal exits at once).
    #[arg(long, value_parser = parse_duration, default_value = "25s")]
    shutdown_grace: Duration,
    #[command(flatten)]
    hub: HubArgs,
}

/// Listens at once, prepares the model in the background, serves until SIGINT or SIGTERM.
pub async fn run(args: ServeArgs) -> Result<()> {
    // clap takes an empty environment variable for an absent one, which would
    // quietly turn authentication off.
    let api_key = match (args.api_key, std::env::var_os(API_KEY_ENV)) {
        (None, Some(_)) => Some(String::new()),
        (key, _) => key,
    };
    if let Some(key) = &api_key {
        server::check_api_key(key)
            .with_context(|| format!("refusing --api-key (or {API_KEY_ENV})"))?;
    }
    if args.max_connections == Some(0) {
        bail!("--max-connections must be at least 1");
    }
    let model = ModelDescription::find(&args.model)
        .with_context(|| format!("unknown model {:?}: try flux-schnell", args.model))?;
    let hub = args.hub.builder().build()?;
    let hub_cache = hub.cache_dir().to_path_buf();
    let engine = FluxSchnell::for_model(model, hub, args.engine.options()?);
    let app = server::router(
        engine.clone(),
        model,
        ServerConfig::default()
            .max_queue(args.max_queue.max(1))
            .api_key(api_key)
            .cors_origins(args.cors_origins)
            .allowed_hosts(args.allowed_hosts)
            .dist(args.dist)
            .hub_cache(hub_cache)
            .public_url(args.public_url)
            .body_timeout(args.header_timeout)
            .upload_timeout(args.upload_timeout)
            .min_body_rate(args.min_body_rate)
            .image_dir(args.image_dir)
            .image_dir_max(args.image_dir_max),
    )
    .await
    .context("setting up the server")?;
    let options = ServeOptions::default()
        .max_connections(
            args.max_connections
                .unwrap_or_else(listen::default_max_connections),
        )
        .header_timeout(args.header_timeout)
        .idle_timeout(args.idle_timeout)
        .shutdown_grace(args.shutdown_grace);

    // Ctrl-C stops the server gracefully from before it first answers.
    let first_signal = listen::shutdown_signal();
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    let addr = listener.local_addr()?;
    let _ = writeln!(std::io::stdout(), "listening on http://{addr}");
    tracing::info!(%addr, model = model.id, max_connections = options.max_connections,
        "listening; fetching and loading the model in the background");

    // The server answers at once; the model arrives in the background.
    tokio::spawn(async move {
        match engine.prepare_until_ready(RetryPolicy::default()).await {
            Ok(()) => tracing::info!("the model is ready"),
            Err(e) => {
                tracing::error!(error = %e, "the model could not be prepared; /readyz reports it")
            }
        }
    });
    let grace = options.shutdown_grace;
    let signal = async move {
        first_signal.await;
        // A second signal means now.
        tokio::spawn(async move {
            listen::shutdown_signal().await;
            tracing::warn!("second signal: exiting without waiting");
            std::process::exit(130);
        });
        tracing::info!(?grace, "stopping: requests in flight may finish");
    };
    listen::serve(listener, app, options, signal)
        .await
        .context("serving")?;
    tracing::info!("stopped");
    Ok(())
}
