//! `schnell serve`: listen at once, fetch and load in the background.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use schnell::flux::{FluxSchnell, ModelDescription, RetryPolicy};
use schnell::server::{self, ServerConfig};

use super::{EngineArgs, HubArgs};

#[derive(Args)]
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
    /// Require `Authorization: Bearer KEY` on /v1.
    #[arg(long, env = "SCHNELL_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Allow browser calls from this origin (repeat; `*` for any).
    #[arg(long = "cors-origin")]
    cors_origins: Vec<String>,
    /// The Trunk-built web UI.
    #[arg(long, default_value = "dist")]
    dist: PathBuf,
    /// Base of image URLs (default: from the request's Host header).
    #[arg(long)]
    public_url: Option<String>,
    #[command(flatten)]
    hub: HubArgs,
}

pub async fn run(args: ServeArgs) -> Result<()> {
    let model = ModelDescription::find(&args.model)
        .with_context(|| format!("unknown model {:?}: try flux-schnell", args.model))?;
    let hub = args.hub.builder().build()?;
    let hub_cache = hub.cache_dir().to_path_buf();
    let engine = FluxSchnell::for_model(model, hub, args.engine.options()?);
    let app = server::router(
        engine.clone(),
        model,
        ServerConfig {
            max_queue: args.max_queue.max(1),
            api_key: args.api_key,
            cors_origins: args.cors_origins,
            dist: args.dist,
            hub_cache,
            public_url: args.public_url,
            ..Default::default()
        },
    )
    .await
    .context("setting up the server")?;

    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    let addr = listener.local_addr()?;
    let _ = writeln!(std::io::stdout(), "listening on http://{addr}");
    tracing::info!(%addr, model = model.id, "listening; fetching and loading the model in the background");

    // The server answers at once; the model arrives in the background.
    tokio::spawn(async move {
        match engine.prepare_until_ready(RetryPolicy::default()).await {
            Ok(()) => tracing::info!("the model is ready"),
            Err(e) => {
                tracing::error!(error = %e, "the model could not be prepared; /readyz reports it")
            }
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving")
}
