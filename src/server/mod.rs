//! `schnell serve`: an OpenAI-compatible images API with live progress, a
//! bounded queue in front of the one engine, honest readiness, the browser's
//! hub and the web UI.

mod api;
mod auth;
mod errors;
mod health;
mod store;
mod ui;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue, Method};
use axum::routing::{get, post};
use axum::{middleware, Router};
use tokio::sync::Semaphore;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use self::api::MAX_IMAGES;
use self::store::ImageStore;
use crate::flux::{FluxSchnell, ModelDescription};
use crate::mirror::{Layout, Mirror};

/// Request bodies above this are refused with 413.
pub const MAX_BODY: usize = 64 * 1024;

/// How the server behaves.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Requests admitted at once (running and waiting); more get 429.
    pub max_queue: usize,
    /// When set, `/v1` wants `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Origins allowed to call the API from a browser; `*` for any. Empty:
    /// same-origin only.
    pub cors_origins: Vec<String>,
    /// The Trunk-built UI.
    pub dist: PathBuf,
    /// The Hugging Face cache served read-only at `/hub`.
    pub hub_cache: PathBuf,
    /// Base of image URLs; default: from the request's `Host`.
    pub public_url: Option<String>,
    /// How long `response_format: "url"` images stay.
    pub image_ttl: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_queue: 16,
            api_key: None,
            cors_origins: Vec::new(),
            dist: PathBuf::from("dist"),
            hub_cache: PathBuf::from("."),
            public_url: None,
            image_ttl: Duration::from_secs(3600),
        }
    }
}

/// What every handler sees.
pub struct AppState {
    engine: FluxSchnell,
    model: &'static ModelDescription,
    queue: Arc<Semaphore>,
    max_queue: usize,
    api_key: Option<String>,
    images: ImageStore,
    public_url: Option<String>,
    started: u64,
}

/// The whole application. The engine should be preparing already (see
/// [`FluxSchnell::prepare`]); until it is ready, `/readyz` says how far it is.
pub async fn router(
    engine: FluxSchnell,
    model: &'static ModelDescription,
    config: ServerConfig,
) -> io::Result<Router> {
    let state = Arc::new(AppState {
        model,
        queue: Arc::new(Semaphore::new(config.max_queue)),
        max_queue: config.max_queue,
        api_key: config.api_key.clone().filter(|k| !k.is_empty()),
        images: ImageStore::new(config.image_ttl, 256),
        public_url: config.public_url.clone(),
        started: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        engine: engine.clone(),
    });

    let guarded = Router::new()
        .route("/v1/images/generations", post(api::generations))
        .route("/v1/models", get(api::models))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_key,
        ));
    // Image URLs carry 128 random bits: the URL is the capability, so an
    // <img src> works without the key.
    let api = Router::new()
        .merge(guarded)
        .route("/v1/images/{file}", get(api::image))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(cors(&config.cors_origins));

    // The browser's hub: this server's own cache, read-only, this model's repos only.
    tokio::fs::create_dir_all(&config.hub_cache).await?;
    let hub = Mirror::open_as(&config.hub_cache, Layout::HfCache)
        .await?
        .only_repos(engine.repos());

    Ok(Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .merge(api)
        .with_state(state)
        .nest("/hub", Arc::new(hub).router())
        .merge(ui::router(&config.dist))
        // Method, path, status and latency at debug level; never headers, so
        // no key or token reaches the log.
        .layer(tower_http::trace::TraceLayer::new_for_http()))
}

fn cors(origins: &[String]) -> CorsLayer {
    let base = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]);
    if origins.iter().any(|o| o == "*") {
        base.allow_origin(tower_http::cors::Any)
    } else {
        let list: Vec<HeaderValue> = origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        base.allow_origin(AllowOrigin::list(list))
    }
}
