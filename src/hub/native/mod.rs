//! The native backend: tokio, hf-hub 0.5 and the standard Hugging Face cache.
//!
//! A batch of files goes in two steps. First every file is looked up in the
//! cache (zero requests on a hit) and the rest are asked about with one `HEAD`
//! each. Then the missing ones download at once, largest first, sharing one
//! budget of connections; each file is downloaded by at most one task of
//! this process and one process at a time, verified against its ETag, and
//! only then renamed into the cache.

mod cache;
mod remote;
mod retry;
mod transfer;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::future::join_all;
use tokio::sync::{OnceCell, Semaphore};

use self::cache::HubCache;
use self::remote::RemoteFile;
use self::retry::{Backoff, Failure};
use self::transfer::{Plan, Transfer};
use super::digest;
use crate::hub::{EventSink, HubError, HubEvent, HubFile};

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// A token that never shows itself in `Debug` output or logs.
#[derive(Clone)]
pub(crate) struct Secret(String);

impl Secret {
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Where the token comes from; a token file is read lazily, asynchronously.
#[derive(Clone, Debug)]
enum TokenSource {
    Given(Option<Secret>),
    File(PathBuf),
}

/// Configures a [`HubClient`]. [`HubClientBuilder::from_env`] honours the same
/// variables as Python `huggingface_hub`.
#[derive(Clone)]
pub struct HubClientBuilder {
    endpoint: String,
    cache_dir: PathBuf,
    token: TokenSource,
    offline: bool,
    max_connections: usize,
    chunk_size: u64,
    backoff: Backoff,
    stall_timeout: Duration,
    events: Option<EventSink>,
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
            max_connections: 8,
            // hf-hub writes each finished range from the runtime thread, and a
            // file's ranges finish together: 8 MiB keeps that burst well under
            // 50 ms on a current-thread runtime (BENCHMARKS.md has the trade-off).
            chunk_size: 8 << 20,
            backoff: Backoff {
                base: Duration::from_millis(500),
                max: Duration::from_secs(30),
                max_retries: 5,
            },
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

    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = dir.into();
        self
    }

    pub fn token(mut self, token: Option<String>) -> Self {
        self.token = TokenSource::Given(token.map(Secret));
        self
    }

    /// Cache only: no request at all, and an error listing every missing file.
    pub fn offline(mut self, offline: bool) -> Self {
        self.offline = offline;
        self
    }

    /// Connections shared by all downloads of this client (default 8).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// The largest byte range one connection asks for (default 8 MiB). A large
    /// file is split into ranges of at most this size, fetched in parallel.
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
                connections: Arc::new(Semaphore::new(self.max_connections)),
                busy: Mutex::default(),
                token,
                http,
                settings: self.clone(),
            }),
            events: self.events,
        })
    }
}

/// Fetches Hub files into the local cache. Cheap to clone; clones share the
/// connection budget and the in-flight de-duplication.
#[derive(Clone)]
pub struct HubClient {
    inner: Arc<Inner>,
    events: Option<EventSink>,
}

struct Inner {
    settings: HubClientBuilder,
    http: reqwest::Client,
    cache: HubCache,
    connections: Arc<Semaphore>,
    /// One async lock per file being fetched, so concurrent callers wait for
    /// the first instead of downloading again.
    busy: Mutex<HashMap<HubFile, Arc<tokio::sync::Mutex<()>>>>,
    token: OnceCell<Option<Secret>>,
}

impl fmt::Debug for HubClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubClient")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

/// A file present in the local cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchedFile {
    pub file: HubFile,
    path: PathBuf,
    size: u64,
    from_cache: bool,
}

impl FetchedFile {
    /// The snapshot path in the cache (a symlink to the blob on Unix).
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether it was already cached, with no request made.
    pub fn from_cache(&self) -> bool {
        self.from_cache
    }

    /// The file's contents.
    pub async fn bytes(&self) -> Result<bytes::Bytes, HubError> {
        tokio::fs::read(&self.path)
            .await
            .map(bytes::Bytes::from)
            .map_err(|source| HubError::Io {
                file: self.file.clone(),
                path: self.path.clone(),
                source,
            })
    }
}

/// What step one found out about a file.
enum Lookup {
    Cached(FetchedFile),
    Remote(RemoteFile),
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

    pub fn endpoint(&self) -> &str {
        &self.inner.settings.endpoint
    }

    pub fn cache_dir(&self) -> &Path {
        self.inner.cache.root()
    }

    pub fn is_offline(&self) -> bool {
        self.inner.settings.offline
    }

    /// One file: from the cache if present, else downloaded into it.
    pub async fn file(&self, file: &HubFile) -> Result<FetchedFile, HubError> {
        let mut files = self.files(std::slice::from_ref(file)).await?;
        Ok(files.remove(0))
    }

    /// The cached copy of a file, if any, without a network request.
    pub async fn cached(&self, file: &HubFile) -> Result<Option<FetchedFile>, HubError> {
        file.validate()?;
        Ok(self
            .inner
            .cache
            .lookup(file)
            .await
            .map(|(path, size)| FetchedFile {
                file: file.clone(),
                path,
                size,
                from_cache: true,
            }))
    }

    /// Many files at once, returned in the order asked. Every file is attempted
    /// even when another fails, so nothing fetched is lost; the error then names
    /// every file that failed.
    pub async fn files(&self, files: &[HubFile]) -> Result<Vec<FetchedFile>, HubError> {
        let errors: Vec<HubError> = files.iter().filter_map(|f| f.validate().err()).collect();
        if let Some(e) = HubError::from_many(errors) {
            return Err(e);
        }
        let mut unique: Vec<HubFile> = files.to_vec();
        unique.sort();
        unique.dedup();

        let lookups = join_all(unique.iter().map(|f| self.lookup(f))).await;
        let mut pending: Vec<(HubFile, Result<Lookup, HubError>)> =
            unique.into_iter().zip(lookups).collect();
        if self.is_offline() {
            let missing: Vec<HubFile> = pending
                .iter()
                .filter(|(_, l)| !matches!(l, Ok(Lookup::Cached(_))))
                .map(|(f, _)| f.clone())
                .collect();
            if !missing.is_empty() {
                return Err(HubError::Offline {
                    missing,
                    cache: self.cache_dir().to_path_buf(),
                });
            }
        }

        // Largest first: the connection budget is handed out in order, so the
        // long transfers start at once and the small ones fill in at the end.
        pending.sort_by_key(|(_, lookup)| {
            std::cmp::Reverse(match lookup {
                Ok(Lookup::Remote(remote)) => remote.size,
                _ => 0,
            })
        });
        let results = join_all(pending.into_iter().map(|(file, lookup)| async move {
            match lookup? {
                Lookup::Cached(hit) => Ok(hit),
                Lookup::Remote(remote) => self.download(&file, remote).await,
            }
        }))
        .await;

        let mut errors = Vec::new();
        let mut by_file = HashMap::new();
        for result in results {
            match result {
                Ok(fetched) => {
                    by_file.insert(fetched.file.clone(), fetched);
                }
                Err(e) => errors.push(e),
            }
        }
        if let Some(e) = HubError::from_many(errors) {
            return Err(e);
        }
        Ok(files.iter().map(|f| by_file[f].clone()).collect())
    }

    fn emit(&self, event: HubEvent) {
        if let Some(sink) = &self.events {
            sink(event);
        }
    }

    async fn token(&self) -> Option<&Secret> {
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

    /// Step one: the cache, or one `HEAD` (with retries).
    async fn lookup(&self, file: &HubFile) -> Result<Lookup, HubError> {
        if let Some(hit) = self.cached(file).await? {
            self.emit(HubEvent::Cached {
                file: file.clone(),
                size: hit.size,
            });
            return Ok(Lookup::Cached(hit));
        }
        if self.is_offline() {
            // Reported for the whole batch by the caller.
            return Err(HubError::Offline {
                missing: vec![file.clone()],
                cache: self.cache_dir().to_path_buf(),
            });
        }
        let token = self.token().await;
        let remote = self
            .with_retries(file, || async {
                let _permit = self
                    .inner
                    .connections
                    .acquire()
                    .await
                    .expect("never closed");
                remote::head(&self.inner.http, self.endpoint(), token, file).await
            })
            .await?;
        self.emit(HubEvent::Queued {
            file: file.clone(),
            size: remote.size,
        });
        Ok(Lookup::Remote(remote))
    }

    /// Step two: download, verify and link one file, unless another task or
    /// process does it first.
    async fn download(&self, file: &HubFile, remote: RemoteFile) -> Result<FetchedFile, HubError> {
        let _busy = self.claim(file).await;
        // Another task of this process may have finished it while we waited.
        if let Some(hit) = self.cached(file).await? {
            self.emit(HubEvent::Cached {
                file: file.clone(),
                size: hit.size,
            });
            return Ok(hit);
        }
        let cache = &self.inner.cache;
        let blob = cache.blob_path(&file.repo, &remote.etag);
        let lock_path = cache.lock_path(&file.repo, &remote.etag);
        let _lock = cache
            .lock(&file.repo, &remote.etag)
            .await
            .map_err(io_err(file, &lock_path))?;

        // The blob may be here already: another revision, another process, or
        // a run that stopped before linking it.
        if cache.blob_len(&file.repo, &remote.etag).await != Some(remote.size) {
            self.fetch_blob(file, &remote, &blob).await?;
        }
        let path = cache
            .link(file, &remote.commit, &remote.etag)
            .await
            .map_err(io_err(file, &cache.snapshot_path(file, &remote.commit)))?;
        self.emit(HubEvent::Finished {
            file: file.clone(),
            size: remote.size,
        });
        Ok(FetchedFile {
            file: file.clone(),
            path,
            size: remote.size,
            from_cache: false,
        })
    }

    /// Transfers, verifies and renames the blob into place. A content mismatch
    /// discards the download and tries once more from scratch.
    async fn fetch_blob(
        &self,
        file: &HubFile,
        remote: &RemoteFile,
        blob: &Path,
    ) -> Result<(), HubError> {
        let parent = blob.parent().expect("blob paths have a parent");
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(io_err(file, parent))?;
        let mut integrity_retries = 1;
        loop {
            let staged = if remote.size == 0 {
                let empty = blob.with_extension("empty.part");
                tokio::fs::write(&empty, b"")
                    .await
                    .map_err(io_err(file, &empty))?;
                empty
            } else {
                self.transfer(file, remote).await?
            };
            let (check_path, etag) = (staged.clone(), remote.etag.clone());
            let verdict = tokio::task::spawn_blocking(move || digest::mismatch(&check_path, &etag))
                .await
                .map_err(|e| io_err(file, &staged)(std::io::Error::other(e)))?
                .map_err(io_err(file, &staged))?;
            match verdict {
                None => {
                    return tokio::fs::rename(&staged, blob)
                        .await
                        .map_err(io_err(file, blob));
                }
                Some(actual) => {
                    let _ = tokio::fs::remove_file(&staged).await;
                    tracing::warn!(%file, expected = %remote.etag, %actual, "checksum mismatch; download discarded");
                    if integrity_retries == 0 {
                        return Err(HubError::Integrity {
                            file: file.clone(),
                            expected: remote.etag.clone(),
                            actual,
                        });
                    }
                    integrity_retries -= 1;
                    self.emit(HubEvent::Retrying {
                        file: file.clone(),
                        attempt: 1,
                        delay_ms: 0,
                        reason: "checksum mismatch".into(),
                    });
                }
            }
        }
    }

    /// The hf-hub transfer with our retries, holding this file's share of the
    /// connection budget while it runs.
    async fn transfer(&self, file: &HubFile, remote: &RemoteFile) -> Result<PathBuf, HubError> {
        let s = &self.inner.settings;
        let plan = Plan::for_size(remote.size, s.max_connections, s.chunk_size);
        let token = self.token().await;
        let transfer = Transfer {
            cache: &self.inner.cache,
            endpoint: &s.endpoint,
            token,
            events: self.events.as_ref(),
            stall_timeout: s.stall_timeout,
        };
        self.with_retries(file, || async {
            let _permits = self
                .inner
                .connections
                .acquire_many(plan.connections as u32)
                .await
                .expect("never closed");
            transfer.run(file, remote, plan).await
        })
        .await
    }

    /// Runs `attempt` until it succeeds, fails for good, or has failed
    /// transiently `max_retries + 1` times in a row without progress.
    async fn with_retries<T, F, Fut>(&self, file: &HubFile, mut attempt: F) -> Result<T, HubError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure<HubError>>>,
    {
        let backoff = self.inner.settings.backoff;
        let mut failures = 0u32;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            match attempt().await {
                Ok(value) => return Ok(value),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Transient {
                    reason,
                    retry_after,
                    made_progress,
                }) => {
                    failures = if made_progress { 1 } else { failures + 1 };
                    if failures > backoff.max_retries {
                        return Err(HubError::Transfer {
                            file: file.clone(),
                            attempts,
                            reason,
                        });
                    }
                    let delay = backoff.delay(failures, retry_after);
                    tracing::info!(%file, %reason, ?delay, "retrying");
                    self.emit(HubEvent::Retrying {
                        file: file.clone(),
                        attempt: attempts,
                        delay_ms: delay.as_millis() as u64,
                        reason,
                    });
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Waits until no other task of this client fetches `file`.
    async fn claim(&self, file: &HubFile) -> Claim {
        let lock = {
            let mut busy = self.inner.busy.lock().expect("not poisoned");
            busy.entry(file.clone()).or_default().clone()
        };
        Claim {
            guard: Some(lock.lock_owned().await),
            inner: self.inner.clone(),
            file: file.clone(),
        }
    }
}

/// Names the file and the cache path in an I/O error.
fn io_err(file: &HubFile, path: &Path) -> impl FnOnce(std::io::Error) -> HubError {
    let (file, path) = (file.clone(), path.to_path_buf());
    move |source| HubError::Io { file, path, source }
}

/// Holds a file's in-process lock; the last holder removes the map entry.
struct Claim {
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    inner: Arc<Inner>,
    file: HubFile,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut busy = self.inner.busy.lock().expect("not poisoned");
        drop(self.guard.take());
        if busy
            .get(&self.file)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            busy.remove(&self.file);
        }
    }
}

/// The process-wide client, configured from the environment on first use.
pub fn default_client() -> Result<HubClient, HubError> {
    static CLIENT: OnceLock<Result<HubClient, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| HubClient::from_env().map_err(|e| e.to_string()))
        .clone()
        .map_err(HubError::Config)
}

/// One Hub file through the process-wide client.
pub async fn huggingface_file(file: &HubFile) -> Result<FetchedFile, HubError> {
    default_client()?.file(file).await
}

/// Many Hub files at once through the process-wide client, in the order asked.
pub async fn huggingface_files(files: &[HubFile]) -> Result<Vec<FetchedFile>, HubError> {
    default_client()?.files(files).await
}
