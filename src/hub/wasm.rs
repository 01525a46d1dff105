//! The browser backend: `fetch` and the Cache API.
//!
//! Files are fetched from `{endpoint}/{repo}/resolve/{revision}/{path}` (by
//! default the serving origin's `/hub`, which `schnell serve` provides) and
//! kept in the Cache API under `schnell-hub-v1`, keyed by that URL. A hit makes
//! no request; a miss streams the body with progress events, checks it against
//! its ETag, and is stored (the `put` awaited) before it is returned. Two
//! concurrent calls for one file share one fetch. Network errors, bodies that
//! break off, 408, 429 and 5xx are retried with the native backend's policy
//! (exponential backoff with jitter, `Retry-After` honoured, 5 retries in a
//! row at most); 401, 403 and 404 are final.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::{join_all, FutureExt, LocalBoxFuture, Shared};
use js_sys::{Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{Cache, CacheStorage, Headers, ReadableStreamDefaultReader, Response, ResponseInit};

use super::digest::bytes_mismatch;
use super::retry::{self, is_transient_status, parse_retry_after, Backoff, Failure};
use super::{EventSink, HubError, HubEvent, HubFile};

/// The Cache API cache that holds Hub files.
pub const CACHE_NAME: &str = "schnell-hub-v1";

/// Configures a browser [`HubClient`].
#[derive(Clone, Default)]
pub struct HubClientBuilder {
    endpoint: Option<String>,
    cache_name: Option<String>,
    events: Option<EventSink>,
    backoff: Backoff,
}

impl HubClientBuilder {
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
    pub file: HubFile,
    bytes: Bytes,
    from_cache: bool,
}

impl FetchedFile {
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

fn emit(events: &Option<EventSink>, event: HubEvent) {
    if let Some(sink) = events {
        sink(event);
    }
}

async fn download(
    cache_name: String,
    backoff: Backoff,
    url: String,
    file: HubFile,
    events: Option<EventSink>,
) -> Result<(Bytes, bool), HubError> {
    let cache = open_cache(&cache_name).await?;
    let hit = JsFuture::from(cache.match_with_str(&url))
        .await
        .map_err(|e| config(&e))?;
    if let Ok(response) = hit.dyn_into::<Response>() {
        let bytes =
            read_body(&file, &response, None)
                .await
                .map_err(|reason| HubError::Transfer {
                    file: file.clone(),
                    attempts: 1,
                    reason: format!("reading the browser's cache: {reason}"),
                })?;
        emit(
            &events,
            HubEvent::Cached {
                file: file.clone(),
                size: bytes.len() as u64,
            },
        );
        return Ok((bytes, true));
    }

    let (bytes, headers) = retry::with_retries(&backoff, &file, events.as_ref(), || {
        fetch_once(&url, &file, &events)
    })
    .await?;
    let header = |name: &str| headers.get(name).ok().flatten();
    let etag = header("x-linked-etag")
        .or_else(|| header("etag"))
        .map(|e| e.trim_start_matches("W/").trim_matches('"').to_string());
    if let Some(actual) = etag.as_deref().and_then(|e| bytes_mismatch(&bytes, e)) {
        return Err(HubError::Integrity {
            file,
            expected: etag.unwrap_or_default(),
            actual,
        });
    }
    store(&cache, &url, &file, &bytes, &headers).await?;
    emit(
        &events,
        HubEvent::Finished {
            file,
            size: bytes.len() as u64,
        },
    );
    Ok((bytes, false))
}

/// One attempt: the request and the whole body.
async fn fetch_once(
    url: &str,
    file: &HubFile,
    events: &Option<EventSink>,
) -> Result<(Bytes, Headers), Failure<HubError>> {
    let response: Response = JsFuture::from(fetch(url).map_err(Failure::Fatal)?)
        .await
        .map_err(|e| {
            Failure::transient(format!(
                "network error (offline, or the server cannot be reached): {}",
                js_message(&e)
            ))
        })?
        .unchecked_into();
    let headers = response.headers();
    let header = |name: &str| headers.get(name).ok().flatten();
    if !response.ok() {
        let status = response.status();
        if is_transient_status(status) {
            return Err(Failure::Transient {
                reason: format!("HTTP {status}"),
                retry_after: header("retry-after")
                    .and_then(|v| parse_retry_after(&v, retry::now())),
                made_progress: false,
            });
        }
        let code = header("x-error-code");
        return Err(Failure::Fatal(HubError::from_status(
            file,
            url,
            status,
            code.as_deref(),
            false,
        )));
    }
    let size = header("x-linked-size")
        .or_else(|| header("content-length"))
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0);
    // Each attempt starts from zero: this also resets progress after a retry.
    emit(
        events,
        HubEvent::Started {
            file: file.clone(),
            size,
            resumed_from: 0,
        },
    );
    let bytes = read_body(file, &response, Some(events))
        .await
        .map_err(|reason| Failure::transient(format!("the body broke off: {reason}")))?;
    Ok((bytes, headers))
}

/// Reads a body as it streams in, reporting each chunk when asked to. The
/// error is the browser's message.
async fn read_body(
    file: &HubFile,
    response: &Response,
    events: Option<&Option<EventSink>>,
) -> Result<Bytes, String> {
    let mut bytes = Vec::new();
    read_stream(response, |chunk| {
        if let Some(events) = events {
            emit(
                events,
                HubEvent::Advanced {
                    file: file.clone(),
                    bytes: chunk.len() as u64,
                },
            );
        }
        bytes.extend_from_slice(chunk);
        true
    })
    .await
    .map_err(|e| js_message(&e))?;
    Ok(Bytes::from(bytes))
}

/// Hands each chunk of a response body to `each` as it arrives, until the end
/// or until `each` returns false (the rest is then cancelled). The error is
/// the stream's: an abort, or a connection that broke.
pub(crate) async fn read_stream(
    response: &Response,
    mut each: impl FnMut(&[u8]) -> bool,
) -> Result<(), JsValue> {
    let Some(body) = response.body() else {
        return Ok(());
    };
    let reader: ReadableStreamDefaultReader = body.get_reader().unchecked_into();
    let mut buffer = Vec::new();
    loop {
        let chunk = JsFuture::from(reader.read()).await?;
        if Reflect::get(&chunk, &"done".into())?
            .as_bool()
            .unwrap_or(true)
        {
            return Ok(());
        }
        let value: Uint8Array = Reflect::get(&chunk, &"value".into())?.unchecked_into();
        buffer.resize(value.length() as usize, 0);
        value.copy_to(&mut buffer);
        if !each(&buffer) {
            // Awaited, so that a refusal to cancel is handled, not left unhandled.
            let _ = JsFuture::from(reader.cancel()).await;
            return Ok(());
        }
    }
}

/// Puts a copy in the cache, with the headers a later reader needs, and waits
/// for the browser to confirm it.
async fn store(
    cache: &Cache,
    url: &str,
    file: &HubFile,
    bytes: &[u8],
    from: &Headers,
) -> Result<(), HubError> {
    let headers = Headers::new().map_err(|e| config(&e))?;
    for name in ["content-type", "etag", "x-linked-etag", "x-repo-commit"] {
        if let Ok(Some(value)) = from.get(name) {
            let _ = headers.set(name, &value);
        }
    }
    cache_put(cache, url, bytes, &headers).await.map_err(|e| {
        if is_quota_exceeded(&e) {
            HubError::StorageFull {
                file: file.clone(),
                reason: js_message(&e),
            }
        } else {
            HubError::Transfer {
                file: file.clone(),
                attempts: 1,
                reason: format!(
                    "could not store it in the browser's cache: {}",
                    js_message(&e)
                ),
            }
        }
    })
}

/// Puts `bytes` in `cache` under `url`, as a 200 response with `headers`, and
/// waits for the browser to confirm it. The error is the browser's.
pub(crate) async fn cache_put(
    cache: &Cache,
    url: &str,
    bytes: &[u8],
    headers: &Headers,
) -> Result<(), JsValue> {
    let _ = headers.set("content-length", &bytes.len().to_string());
    let init = ResponseInit::new();
    init.set_status(200);
    init.set_headers(headers);
    let mut copy = bytes.to_vec();
    let response = Response::new_with_opt_u8_array_and_init(Some(&mut copy), &init)?;
    JsFuture::from(cache.put_with_str(url, &response)).await?;
    Ok(())
}

/// The browser's storage for this origin is full.
pub(crate) fn is_quota_exceeded(e: &JsValue) -> bool {
    js_name(e).as_deref() == Some("QuotaExceededError")
}

/// A Cache API cache by name, made if missing.
pub(crate) async fn open_cache(name: &str) -> Result<Cache, HubError> {
    let cache = JsFuture::from(caches()?.open(name))
        .await
        .map_err(|e| config(&e))?;
    Ok(cache.unchecked_into())
}

/// Deletes a Cache API cache; whether there was one.
pub(crate) async fn delete_cache(name: &str) -> Result<bool, HubError> {
    let deleted = JsFuture::from(caches()?.delete(name))
        .await
        .map_err(|e| config(&e))?;
    Ok(deleted.as_bool().unwrap_or(false))
}

/// The window's, or a worker's, `caches`.
fn caches() -> Result<CacheStorage, HubError> {
    let storage = match web_sys::window() {
        Some(window) => window.caches(),
        None => js_sys::global()
            .unchecked_into::<web_sys::WorkerGlobalScope>()
            .caches(),
    };
    storage.map_err(|e| {
        HubError::Config(format!(
            "the Cache API is not available (it needs a secure context): {}",
            js_message(&e)
        ))
    })
}

fn fetch(url: &str) -> Result<js_sys::Promise, HubError> {
    Ok(match web_sys::window() {
        Some(window) => window.fetch_with_str(url),
        None => js_sys::global()
            .unchecked_into::<web_sys::WorkerGlobalScope>()
            .fetch_with_str(url),
    })
}

fn origin() -> Result<String, HubError> {
    let location = Reflect::get(&js_sys::global(), &"location".into()).map_err(|e| config(&e))?;
    Reflect::get(&location, &"origin".into())
        .ok()
        .and_then(|o| o.as_string())
        .ok_or_else(|| {
            HubError::Config("no location.origin to derive the /hub endpoint from".into())
        })
}

fn config(e: &JsValue) -> HubError {
    HubError::Config(js_message(e))
}

fn js_name(e: &JsValue) -> Option<String> {
    Reflect::get(e, &"name".into()).ok()?.as_string()
}

/// A JavaScript error as `Name: message`.
pub(crate) fn js_message(e: &JsValue) -> String {
    let name = js_name(e).unwrap_or_default();
    let message = Reflect::get(e, &"message".into())
        .ok()
        .and_then(|m| m.as_string())
        .or_else(|| e.as_string())
        .unwrap_or_else(|| format!("{e:?}"));
    if name.is_empty() {
        message
    } else {
        format!("{name}: {message}")
    }
}

thread_local! {
    static DEFAULT: RefCell<Option<HubClient>> = const { RefCell::new(None) };
}

fn default_client() -> Result<HubClient, HubError> {
    DEFAULT.with(|slot| {
        if let Some(client) = slot.borrow().as_ref() {
            return Ok(client.clone());
        }
        let client = HubClientBuilder::new().build()?;
        *slot.borrow_mut() = Some(client.clone());
        Ok(client)
    })
}

/// One Hub file through the page's default client (this origin's `/hub`).
pub async fn huggingface_file(file: &HubFile) -> Result<FetchedFile, HubError> {
    default_client()?.file(file).await
}

/// Many Hub files at once, in the order asked.
pub async fn huggingface_files(files: &[HubFile]) -> Result<Vec<FetchedFile>, HubError> {
    default_client()?.files(files).await
}
