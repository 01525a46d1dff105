//! The client itself: its shared state (settings, HTTP client, cache,
//! connection budget, in-flight files, token) and the small services every
//! step uses. The steps add their own methods: `batch` (looking
//! files up), `download`, `claim` and `verify`.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OnceCell;

use super::builder::{HubClientBuilder, INITIAL_CONNECTIONS};
use super::cache::HubCache;
use super::connections::Connections;
use super::remote;
use super::token::{Secret, TokenSource};
use crate::hub::error::HubError;
use crate::hub::event::{EventSink, HubEvent};
use crate::hub::file::HubFile;
use crate::hub::retry::{self, Failure};

/// Fetches Hub files into the local cache. Cheap to clone; clones share the
/// connection budget and the in-flight de-duplication.
#[derive(Clone)]
pub struct HubClient {
    pub(super) inner: Arc<Inner>,
    pub(super) events: Option<EventSink>,
}

/// What clones of a client share.
pub(super) struct Inner {
    pub(super) settings: HubClientBuilder,
    pub(super) http: reqwest::Client,
    pub(super) cache: HubCache,
    pub(super) connections: Connections,
    /// One async lock per file being fetched, so concurrent callers wait for
    /// the first instead of downloading again.
    pub(super) busy: Mutex<HashMap<HubFile, Arc<tokio::sync::Mutex<()>>>>,
    pub(super) token: OnceCell<Option<Secret>>,
}

impl fmt::Debug for HubClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubClient")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl HubClientBuilder {
    /// A client with these settings. Here rather than beside the settings,
    /// so that the builder need not know the client's insides.
    pub fn build(self) -> Result<HubClient, HubError> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(20))
            .read_timeout(Duration::from_secs(60))
            .user_agent(concat!("schnell/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| HubError::Config(format!("HTTP client: {e}")))?;
        let token = match &self.token {
            TokenSource::Given(token) => OnceCell::new_with(Some(token.clone())),
            TokenSource::File(_) => OnceCell::new(),
        };
        Ok(HubClient {
            inner: Arc::new(Inner {
                cache: HubCache::new(self.cache_dir.clone()),
                connections: Connections::new(
                    INITIAL_CONNECTIONS.min(self.max_connections),
                    self.max_connections,
                ),
                busy: Mutex::default(),
                token,
                http,
                settings: self.clone(),
            }),
            events: self.events,
        })
    }
}

impl HubClient {
    /// A client configured from the environment, as [`HubClientBuilder::from_env`].
    pub fn from_env() -> Result<Self, HubError> {
        HubClientBuilder::from_env().build()
    }

    /// The same client (same budget, same cache) reporting to `sink`.
    pub fn with_events(&self, sink: EventSink) -> Self {
        Self {
            inner: self.inner.clone(),
            events: Some(sink),
        }
    }

    /// The Hub (or mirror) this client asks.
    pub fn endpoint(&self) -> &str {
        &self.inner.settings.endpoint
    }

    /// The Hugging Face cache folder this client fills.
    pub fn cache_dir(&self) -> &Path {
        self.inner.cache.root()
    }

    /// Whether this client only reads the cache (`HF_HUB_OFFLINE`).
    pub fn is_offline(&self) -> bool {
        self.inner.settings.offline
    }

    pub(super) fn emit(&self, event: HubEvent) {
        if let Some(sink) = &self.events {
            sink(event);
        }
    }

    pub(super) async fn token(&self) -> Option<&Secret> {
        self.inner
            .token
            .get_or_init(|| async {
                let TokenSource::File(path) = &self.inner.settings.token else {
                    return None;
                };
                let text = tokio::fs::read_to_string(path).await.ok()?;
                let token = text.trim();
                (!token.is_empty()).then(|| Secret(token.to_string()))
            })
            .await
            .as_ref()
    }

    /// One `HEAD` for `at`, within the connection budget.
    pub(super) async fn head(
        &self,
        token: Option<&Secret>,
        at: &HubFile,
    ) -> Result<remote::Head, Failure<HubError>> {
        let _turn = self.inner.connections.acquire(0).await;
        remote::head(&self.inner.http, self.endpoint(), token, at).await
    }

    /// [`retry::with_retries`] with this client's backoff and events.
    pub(super) async fn with_retries<T, F, Fut>(
        &self,
        file: &HubFile,
        attempt: F,
    ) -> Result<T, HubError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure<HubError>>>,
    {
        retry::with_retries(
            &self.inner.settings.backoff,
            file,
            self.events.as_ref(),
            attempt,
        )
        .await
    }
}
