//! How the server behaves ([`ServerConfig`]), and the checks of the
//! settings that could turn authentication off or make bad image URLs.

use std::path::PathBuf;
use std::time::Duration;

#[cfg(doc)]
use super::limits::MAX_EDIT_BODY;
use super::setup_error::ServerError;
#[cfg(doc)]
use crate::listen::ServeOptions;

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

/// How the server behaves. Build it from [`ServerConfig::default`] and its
/// setters: more settings may come.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Requests admitted at once (running and waiting); more get 429.
    pub max_queue: usize,
    /// When set, `/v1` wants `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Origins allowed to call the API from a browser; `*` for any. Empty:
    /// same-origin only (and `public_url`'s). Requests from other pages are
    /// refused with 403, key or no key.
    pub cors_origins: Vec<String>,
    /// Host names the server answers to besides `localhost`, IP literals
    /// and `public_url`'s host; `*` for any. Other names get 421, so that a
    /// DNS-rebinding page cannot reach the server.
    pub allowed_hosts: Vec<String>,
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
    /// A body must bring this many bytes a second over every window of
    /// `min_body_rate_grace` (the first included), or it is cut with 408
    /// (0: no minimum).
    pub min_body_rate: u64,
    /// The window `min_body_rate` is averaged over.
    pub min_body_rate_grace: Duration,
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
            allowed_hosts: Vec::new(),
            dist: PathBuf::from("dist"),
            hub_cache: PathBuf::from("."),
            public_url: None,
            image_ttl: Duration::from_secs(3600),
            body_timeout: Duration::from_secs(30),
            upload_timeout: Duration::from_secs(120),
            min_body_rate: 16 << 10,
            min_body_rate_grace: Duration::from_secs(5),
            image_dir: None,
            image_dir_max: 1_000_000_000,
        }
    }
}

impl ServerConfig {
    /// Sets [`ServerConfig::max_queue`].
    pub fn max_queue(mut self, max_queue: usize) -> Self {
        self.max_queue = max_queue;
        self
    }

    /// Sets [`ServerConfig::api_key`].
    pub fn api_key(mut self, api_key: Option<String>) -> Self {
        self.api_key = api_key;
        self
    }

    /// Sets [`ServerConfig::cors_origins`].
    pub fn cors_origins(mut self, cors_origins: Vec<String>) -> Self {
        self.cors_origins = cors_origins;
        self
    }

    /// Sets [`ServerConfig::allowed_hosts`].
    pub fn allowed_hosts(mut self, allowed_hosts: Vec<String>) -> Self {
        self.allowed_hosts = allowed_hosts;
        self
    }

    /// Sets [`ServerConfig::min_body_rate`].
    pub fn min_body_rate(mut self, min_body_rate: u64) -> Self {
        self.min_body_rate = min_body_rate;
        self
    }

    /// Sets [`ServerConfig::min_body_rate_grace`].
    pub fn min_body_rate_grace(mut self, min_body_rate_grace: Duration) -> Self {
        self.min_body_rate_grace = min_body_rate_grace;
        self
    }

    /// Sets [`ServerConfig::dist`].
    pub fn dist(mut self, dist: PathBuf) -> Self {
        self.dist = dist;
        self
    }

    /// Sets [`ServerConfig::hub_cache`].
    pub fn hub_cache(mut self, hub_cache: PathBuf) -> Self {
        self.hub_cache = hub_cache;
        self
    }

    /// Sets [`ServerConfig::public_url`].
    pub fn public_url(mut self, public_url: Option<String>) -> Self {
        self.public_url = public_url;
        self
    }

    /// Sets [`ServerConfig::image_ttl`].
    pub fn image_ttl(mut self, image_ttl: Duration) -> Self {
        self.image_ttl = image_ttl;
        self
    }

    /// Sets [`ServerConfig::body_timeout`].
    pub fn body_timeout(mut self, body_timeout: Duration) -> Self {
        self.body_timeout = body_timeout;
        self
    }

    /// Sets [`ServerConfig::upload_timeout`].
    pub fn upload_timeout(mut self, upload_timeout: Duration) -> Self {
        self.upload_timeout = upload_timeout;
        self
    }

    /// Sets [`ServerConfig::image_dir`].
    pub fn image_dir(mut self, image_dir: Option<PathBuf>) -> Self {
        self.image_dir = image_dir;
        self
    }

    /// Sets [`ServerConfig::image_dir_max`].
    pub fn image_dir_max(mut self, image_dir_max: u64) -> Self {
        self.image_dir_max = image_dir_max;
        self
    }
}
