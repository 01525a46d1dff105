//! The browser client: its settings, the downloads under way (shared by
//! concurrent callers) and what a fetch returns.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::{join_all, FutureExt, LocalBoxFuture, Shared};
use js_sys::Reflect;
use wasm_bindgen_futures::JsFuture;

use super::cache_store::{delete_cache, open_cache, CACHE_NAME};
use super::fetch::download;
use super::js::{config, origin};
use crate::hub::error::HubError;
use crate::hub::event::EventSink;
use crate::hub::file::HubFile;
use crate::hub::retry::Backoff;

/// Configures a browser [`HubClient`].
#[derive(Clone, Default)]
pub struct HubClientBuilder {
    endpoint: Option<String>,
    cache_name: Option<String>,
    events: Option<EventSink>,
    backoff: Backoff,
}

impl HubClientBuilder {
    /// Defaults: this origin's `/hub`, the `schnell-hub-v1` cache, 5 retries.
    pub fn new() -> Self {
        Self::default()
    }

    /// The Hub or mirror (`https://huggingface.co`); default: this origin's `/hub`.
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into().trim_end_matches('/').to_string());
        self
    }

    /// Another Cache API cache (tests use their own).
    pub fn cache_name(mut self, name: impl Into<String>) -> Self {
        self.cache_name = Some(name.into());
        self
    }

    /// Where progress events go.
    pub fn on_event(mut self, sink: EventSink) -> Self {
        self.events = Some(sink);
        self
    }

    /// Retries after transient failures, and the backoff between them
    /// (default: 5 retries, from 0.5 s doubling up to 30 s).
    pub fn retries(mut self, max_retries: u32, base: Duration, max: Duration) -> Self {
        self.backoff = Backoff {
            base,
            max,
            max_retries,
        };
        self
    }

    /// The client; fails without an endpoint and no `location.origin`.
    pub fn build(self) -> Result<HubClient, HubError> {
        let endpoint = match self.endpoint {
            Some(e) => e,
            None => format!("{}/hub", origin()?),
        };
        Ok(HubClient {
            inner: Rc::new(Inner {
                endpoint,
                cache_name: self.cache_name.unwrap_or_else(|| CACHE_NAME.to_string()),
                backoff: self.backoff,
                in_flight: RefCell::default(),
            }),
            events: self.events,
        })
    }
}

type Download = Shared<LocalBoxFuture<'static, Result<(Bytes, bool), HubError>>>;

/// Fetches Hub files into the browser's Cache API. Cheap to clone.
#[derive(Clone)]
pub struct HubClient {
    inner: Rc<Inner>,
    events: Option<EventSink>,
}

struct Inner {
    endpoint: String,
    cache_name: String,
    backoff: Backoff,
    /// Downloads under way, by URL, so that a second caller joins the first.
    in_flight: RefCell<HashMap<String, Download>>,
}

/// A file's contents, from the cache or the network.
#[derive(Clone, Debug)]
pub struct FetchedFile {
    /// The file asked for.
    pub file: HubFile,
    bytes: Bytes,
    from_cache: bool,
}

impl FetchedFile {
    /// Its size in bytes.
    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Whether it came from the Cache API, with no request made.
    pub fn from_cache(&self) -> bool {
        self.from_cache
    }

    /// The file's contents.
    pub async fn bytes(&self) -> Result<Bytes, HubError> {
        Ok(self.bytes.clone())
    }
}

impl HubClient {
    /// The Hub (or mirror) this client asks.
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// The same client reporting to `sink`.
    pub fn with_events(&self, sink: EventSink) -> Self {
        Self {
            inner: self.inner.clone(),
            events: Some(sink),
        }
    }

    /// One file: from the Cache API if present, else fetched and stored.
    pub async fn file(&self, file: &HubFile) -> Result<FetchedFile, HubError> {
        file.validate()?;
        let url = file.resolve_url(&self.inner.endpoint);
        let shared = {
            let mut in_flight = self.inner.in_flight.borrow_mut();
            in_flight
                .entry(url.clone())
                .or_insert_with(|| {
                    download(
                        self.inner.cache_name.clone(),
                        self.inner.backoff,
                        url.clone(),
                        file.clone(),
                        self.events.clone(),
                    )
                    .boxed_local()
                    .shared()
                })
                .clone()
        };
        let result = shared.await;
        self.inner.in_flight.borrow_mut().remove(&url);
        let (bytes, from_cache) = result?;
        Ok(FetchedFile {
            file: file.clone(),
            bytes,
            from_cache,
        })
    }

    /// Many files at once, in the order asked; every file is attempted.
    pub async fn files(&self, files: &[HubFile]) -> Result<Vec<FetchedFile>, HubError> {
        let results = join_all(files.iter().map(|f| self.file(f))).await;
        let mut fetched = Vec::with_capacity(results.len());
        let mut errors = Vec::new();
        for r in results {
            match r {
                Ok(f) => fetched.push(f),
                Err(e) => errors.push(e),
            }
        }
        match HubError::from_many(errors) {
            Some(e) => Err(e),
            None => Ok(fetched),
        }
    }

    /// The URLs of every cached file.
    pub async fn cached_urls(&self) -> Result<Vec<String>, HubError> {
        let cache = open_cache(&self.inner.cache_name).await?;
        let keys = JsFuture::from(cache.keys()).await.map_err(|e| config(&e))?;
        Ok(js_sys::Array::from(&keys)
            .iter()
            .filter_map(|request| Reflect::get(&request, &"url".into()).ok()?.as_string())
            .collect())
    }

    /// Forgets every cached file. Returns whether there was a cache to delete.
    pub async fn clear_cache(&self) -> Result<bool, HubError> {
        delete_cache(&self.inner.cache_name).await
    }
}
