//! Configuring a client: defaults, the environment Python's
//! `huggingface_hub` reads, and the knobs.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::token::{Secret, TokenSource};
use crate::hub::event::EventSink;
use crate::hub::retry::Backoff;

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Connections a client starts with, and the most it grows to by default.
pub(super) const INITIAL_CONNECTIONS: usize = 16;
const MAX_CONNECTIONS: usize = 64;

/// Configures a [`HubClient`](crate::hub::HubClient). [`HubClientBuilder::from_env`] honours the same
/// variables as Python `huggingface_hub`.
#[derive(Clone)]
pub struct HubClientBuilder {
    pub(super) endpoint: String,
    pub(super) cache_dir: PathBuf,
    pub(super) token: TokenSource,
    pub(super) offline: bool,
    pub(super) max_connections: usize,
    pub(super) chunk_size: u64,
    pub(super) backoff: Backoff,
    pub(super) stall_timeout: Duration,
    pub(super) events: Option<EventSink>,
}

impl fmt::Debug for HubClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubClientBuilder")
            .field("endpoint", &self.endpoint)
            .field("cache_dir", &self.cache_dir)
            .field("token", &self.token)
            .field("offline", &self.offline)
            .field("max_connections", &self.max_connections)
            .field("chunk_size", &self.chunk_size)
            .finish_non_exhaustive()
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn env_flag(name: &str) -> bool {
    env(name).is_some_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// `$HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
fn hf_home() -> PathBuf {
    if let Some(home) = env("HF_HOME") {
        return PathBuf::from(home);
    }
    let cache = env("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| dirs::home_dir().map(|h| h.join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("huggingface")
}

impl HubClientBuilder {
    /// Defaults with the given cache folder; reads no environment.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            endpoint: DEFAULT_ENDPOINT.to_string(),
            cache_dir: cache_dir.into(),
            token: TokenSource::Given(None),
            offline: false,
            max_connections: MAX_CONNECTIONS,
            // A connection asks for its next range before the current one
            // ends, so a range's latency costs little; a file's ranges in
            // flight are what its sha256 waits for at its end. 4 MiB (2 to
            // 4, varied) measured best (BENCHMARKS.md).
            chunk_size: 4 << 20,
            backoff: Backoff::default(),
            stall_timeout: Duration::from_secs(60),
            events: None,
        }
    }

    /// `HF_ENDPOINT`, `HF_HOME`, `HF_HUB_CACHE` (or the older
    /// `HUGGINGFACE_HUB_CACHE`), `HF_TOKEN` (else `HF_TOKEN_PATH`, else
    /// `$HF_HOME/token`) and `HF_HUB_OFFLINE`.
    pub fn from_env() -> Self {
        let home = hf_home();
        let cache_dir = env("HF_HUB_CACHE")
            .or_else(|| env("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join("hub"));
        let mut builder = Self::new(cache_dir).offline(env_flag("HF_HUB_OFFLINE"));
        if let Some(endpoint) = env("HF_ENDPOINT") {
            builder = builder.endpoint(endpoint);
        }
        builder.token = match env("HF_TOKEN") {
            Some(token) => TokenSource::Given(Some(Secret(token.trim().to_string()))),
            None => TokenSource::File(
                env("HF_TOKEN_PATH")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| home.join("token")),
            ),
        };
        builder
    }

    /// The Hub (or mirror) to ask, e.g. `http://127.0.0.1:8090`.
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = endpoint.into().trim_end_matches('/').to_string();
        self
    }

    /// The Hugging Face cache folder to read and write.
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = dir.into();
        self
    }

    /// The Hub token to send (to the endpoint's own origin only); `None`
    /// sends none, and reads no token file.
    pub fn token(mut self, token: Option<String>) -> Self {
        self.token = TokenSource::Given(token.map(Secret));
        self
    }

    /// Cache only: no request at all, and an error listing every missing file.
    pub fn offline(mut self, offline: bool) -> Self {
        self.offline = offline;
        self
    }

    /// The most connections all downloads of this client share (default 64).
    /// They start at 16 (or `n`, if fewer) and grow while throughput still
    /// rises with them. Near the end of its range, each may also have the
    /// request for its next range open: up to twice as many sockets.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// The largest byte range one request asks for (default 4 MiB). A large
    /// file is split into ranges of half to all of this size, fetched in
    /// parallel; at its end, idle connections take over the end of ranges
    /// still in flight.
    pub fn chunk_size(mut self, bytes: u64) -> Self {
        self.chunk_size = bytes.max(1);
        self
    }

    /// Retries after transient failures, and the backoff between them.
    pub fn retries(mut self, max_retries: u32, base: Duration, max: Duration) -> Self {
        self.backoff = Backoff {
            base,
            max,
            max_retries,
        };
        self
    }

    /// A transfer that receives nothing for this long is abandoned and retried.
    pub fn stall_timeout(mut self, timeout: Duration) -> Self {
        self.stall_timeout = timeout;
        self
    }

    /// Where progress events go.
    pub fn on_event(mut self, sink: EventSink) -> Self {
        self.events = Some(sink);
        self
    }
}
