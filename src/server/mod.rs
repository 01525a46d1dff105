//! `schnell serve`: an OpenAI-compatible images API with live progress, a
//! bounded queue in front of the one engine, honest readiness, the browser's
//! hub and the web UI; [`serve`] (from `crate::listen`) runs it with a
//! connection cap, timeouts and a bounded graceful shutdown.
//!
//! This file only declares the parts, builds the router and re-exports;
//! the parts import each other directly.

mod answer;
mod api;
mod api_error;
mod auth;
mod body;
mod config;
mod events;
mod fields;
mod form;
mod health;
mod limits;
mod metrics;
mod metrics_routes;
mod openapi;
mod output;
mod redact;
mod request;
mod setup_error;
mod site;
mod state;
mod store;
mod ui;
mod uploads;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue, Method};
use axum::routing::{any, get, post};
use axum::{middleware, Router};
use tokio::sync::Semaphore;
use tower_http::cors::{AllowOrigin, CorsLayer};

use self::body::BodyLimits;
pub use self::config::{check_api_key, check_public_url, ServerConfig};
pub use self::limits::{
    MAX_BODY, MAX_EDIT_BODY, MAX_UPLOADS, MAX_UPLOADS_PER_CLIENT, MEMORY_IMAGES,
    MEMORY_IMAGES_BYTES, PUBLIC_HUB_JSON_MAX,
};
use self::redact::Redactor;
pub use self::setup_error::ServerError;
use self::site::Site;
pub use self::state::AppState;
use self::store::ImageStore;
use crate::flux::{FluxSchnell, ModelDescription};
pub use crate::listen::{default_max_connections, serve, shutdown_signal, ServeOptions};
use crate::mirror::{Layout, Mirror};
pub use crate::protocol::MAX_IMAGES;

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
        None => ImageStore::in_memory(config.image_ttl, MEMORY_IMAGES, MEMORY_IMAGES_BYTES),
    };
    if let Some(home) = dirs::home_dir() {
        redact.add(&home, "~").await;
    }
    let site = Arc::new(Site::new(
        &config.allowed_hosts,
        &config.cors_origins,
        public_url.as_deref(),
    ));
    let state = Arc::new(AppState {
        model,
        queue: Arc::new(Semaphore::new(config.max_queue)),
        max_queue: config.max_queue,
        api_key: config.api_key.clone(),
        images,
        public_url,
        redact,
        body: BodyLimits {
            max: MAX_BODY,
            timeout: config.body_timeout,
            min_rate: config.min_body_rate,
            grace: config.min_body_rate_grace,
        },
        upload: BodyLimits {
            max: MAX_EDIT_BODY,
            timeout: config.upload_timeout,
            min_rate: config.min_body_rate,
            grace: config.min_body_rate_grace,
        },
        uploads: Arc::default(),
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
        .route("/metrics", get(metrics_routes::metrics))
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
        // Before anything else is looked at (the key included), but counted.
        .layer(middleware::from_fn_with_state(site, site::guard))
        .layer(middleware::from_fn_with_state(
            state,
            metrics_routes::count_requests,
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
