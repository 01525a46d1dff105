//! `schnell serve`: an OpenAI-compatible images API with live progress, a
//! bounded queue in front of the one engine, honest readiness, the browser's
//! hub and the web UI; [`serve`] runs it with a connection cap, timeouts and
//! a bounded graceful shutdown.

mod api;
mod auth;
mod errors;
mod form;
mod health;
mod listen;
mod metrics;
mod openapi;
mod redact;
mod store;
mod ui;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue, Method};
use axum::routing::{any, get, post};
use axum::{middleware, Router};
use tokio::sync::Semaphore;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use self::api::MAX_IMAGES;
pub use self::listen::{default_max_connections, serve, shutdown_signal, ServeOptions};
use self::redact::Redactor;
use self::store::ImageStore;
use crate::flux::{FluxSchnell, ModelDescription};
use crate::mirror::{Layout, Mirror};

/// Request bodies above this are refused with 413.
pub const MAX_BODY: usize = 64 * 1024;

/// An edit's body (its image and mask) above this is refused with 413:
/// OpenAI's limit for an image.
pub const MAX_EDIT_BODY: usize = 50 << 20;

/// Edits whose bodies are read and decoded at once; more get 429. Apart
/// from the queue, so that slow uploads never hold its places, and few, so
/// that their bodies and decoded images stay within a few hundred MB.
pub const MAX_UPLOADS: usize = 4;

/// Without the API key, `/hub` serves only `*.json` files up to this size
/// (tokenizers and configs, what the web page reads); the rest needs the key.
pub const PUBLIC_HUB_JSON_MAX: u64 = 16 << 20;

/// Why the server could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("the API key is empty: give a non-empty --api-key (or SCHNELL_API_KEY), or leave both unset to serve without a key")]
    EmptyApiKey,
    #[error("the API key starts or ends with whitespace, which no client can send in a header: remove it")]
    ApiKeyWhitespace,
    #[error("--public-url {url:?} {reason}")]
    PublicUrl { url: String, reason: &'static str },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

impl ServerError {
    fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Self + 'a {
        move |source| Self::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Refuses a key that would turn authentication off or could never match.
pub fn check_api_key(key: &str) -> Result<(), ServerError> {
    if key.trim().is_empty() {
        Err(ServerError::EmptyApiKey)
    } else if key.trim() != key {
        Err(ServerError::ApiKeyWhitespace)
    } else {
        Ok(())
    }
}

/// `--public-url`: an `http` or `https` URL, maybe with a path prefix; no
/// query or fragment. Returned without a trailing `/`.
pub fn check_public_url(url: &str) -> Result<String, ServerError> {
    let bad = |reason| ServerError::PublicUrl {
        url: url.to_string(),
        reason,
    };
    let parsed = reqwest::Url::parse(url)
        .map_err(|_| bad("is not a URL: use e.g. https://images.example.com"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("must start with http:// or https://"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad("must not have a query or a fragment"));
    }
    Ok(url.trim_end_matches('/').to_string())
}

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
    /// Base of image URLs, such as `https://images.example.com`; without it
    /// image URLs are relative (`/v1/images/ID.png`).
    pub public_url: Option<String>,
    /// How long `response_format: "url"` images stay.
    pub image_ttl: Duration,
    /// A request body must arrive within this (see
    /// [`ServeOptions::header_timeout`]).
    pub body_timeout: Duration,
    /// An edit's body (up to [`MAX_EDIT_BODY`]) must arrive within this.
    pub upload_timeout: Duration,
    /// Keep `response_format: "url"` images in this folder (which replicas
    /// may share) instead of in memory.
    pub image_dir: Option<PathBuf>,
    /// The folder's cap in bytes; the oldest images go first.
    pub image_dir_max: u64,
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
            body_timeout: Duration::from_secs(30),
            upload_timeout: Duration::from_secs(120),
            image_dir: None,
            image_dir_max: 1_000_000_000,
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
    /// Takes local paths out of what clients see.
    redact: Redactor,
    body_timeout: Duration,
    upload_timeout: Duration,
    /// [`MAX_UPLOADS`] places for edits' bodies.
    uploads: Arc<Semaphore>,
    started: u64,
    metrics: metrics::Metrics,
}

impl AppState {
    /// What a failed generation tells the client, without local paths.
    fn flux_error(&self, e: &crate::flux::FluxError) -> errors::ApiError {
        let mut error = errors::ApiError::from_flux(e);
        error.message = self.redact.apply(&error.message);
        error
    }
}

/// The whole application. The engine should be preparing already (see
/// [`FluxSchnell::prepare`]); until it is ready, `/readyz` says how far it is.
/// Refuses an empty API key (which would turn authentication off) and a
/// malformed public URL.
pub async fn router(
    engine: FluxSchnell,
    model: &'static ModelDescription,
    config: ServerConfig,
) -> Result<Router, ServerError> {
    if let Some(key) = &config.api_key {
        check_api_key(key)?;
    }
    let public_url = config
        .public_url
        .as_deref()
        .map(check_public_url)
        .transpose()?;
    tokio::fs::create_dir_all(&config.hub_cache)
        .await
        .map_err(ServerError::io(
            "cannot create the cache",
            &config.hub_cache,
        ))?;
    let mut redact = Redactor::default();
    redact.add(&config.hub_cache, "$HF_HUB_CACHE").await;
    let images = match &config.image_dir {
        Some(dir) => {
            let store = ImageStore::in_dir(dir, config.image_dir_max, config.image_ttl)
                .await
                .map_err(ServerError::io("cannot use --image-dir", dir))?;
            redact.add(dir, "$IMAGE_DIR").await;
            store
        }
        None => ImageStore::in_memory(config.image_ttl, 256),
    };
    if let Some(home) = dirs::home_dir() {
        redact.add(&home, "~").await;
    }
    let state = Arc::new(AppState {
        model,
        queue: Arc::new(Semaphore::new(config.max_queue)),
        max_queue: config.max_queue,
        api_key: config.api_key.clone(),
        images,
        public_url,
        redact,
        body_timeout: config.body_timeout,
        upload_timeout: config.upload_timeout,
        uploads: Arc::new(Semaphore::new(MAX_UPLOADS)),
        started: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        engine: engine.clone(),
        metrics: metrics::Metrics::default(),
    });

    let guarded = Router::new()
        .route("/v1/images/generations", post(api::generations))
        .route("/v1/images/edits", post(api::edits))
        .route("/v1/models", get(api::models))
        .route("/metrics", get(metrics::metrics))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_key,
        ));
    // Image URLs carry 128 random bits: the URL is the capability, so an
    // <img src> works without the key.
    let api = Router::new()
        .merge(guarded)
        .route("/v1/images/{file}", get(api::image))
        // Not the web page: an unknown API path is a JSON 404.
        .route("/v1", any(api::unknown))
        .route("/v1/", any(api::unknown))
        .route("/v1/{*rest}", any(api::unknown))
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(cors(&config.cors_origins));

    // The browser's hub: this server's own cache, read-only, this model's
    // repos only. With a key, only the small JSON files the page reads
    // (tokenizers, configs) are public: the weights need the key.
    let mut hub = Mirror::open_as(&config.hub_cache, Layout::HfCache)
        .await
        .map_err(ServerError::io("cannot serve the cache", &config.hub_cache))?
        .only_repos(engine.repos());
    if let Some(key) = config.api_key.clone() {
        hub = hub.require_key(
            move |headers| auth::bearer_matches(headers, &key),
            PUBLIC_HUB_JSON_MAX,
        );
    }

    Ok(Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/openapi.json", get(openapi::openapi))
        .merge(api)
        .with_state(state.clone())
        .nest("/hub", Arc::new(hub).router())
        .merge(ui::router(&config.dist).await)
        .layer(middleware::from_fn_with_state(
            state,
            metrics::count_requests,
        ))
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
