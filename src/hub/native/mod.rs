//! The native backend: tokio, reqwest and the standard Hugging Face cache.
//!
//! A batch of files goes in two steps. First every file is looked up in the
//! cache (zero requests on a hit whose size is known to be right) and the
//! rest are asked about with one `HEAD` each. Then the missing ones download
//! at once, largest first, sharing one budget of connections; each file is
//! downloaded by at most one task of this process and one process at a time,
//! verified against its ETag, and only then renamed into the cache.

mod cache;
mod connections;
mod partial;
mod prefix_hash;
mod remote;
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
use self::connections::Connections;
use self::transfer::{Transfer, Transferred};
use super::digest::{self, EtagKind};
use super::retry::{self, Backoff, Failure};
use crate::hub::{EventSink, HubError, HubEvent, HubFile};

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Connections a client starts with, and the most it grows to by default.
const INITIAL_CONNECTIONS: usize = 16;
const MAX_CONNECTIONS: usize = 64;

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
            max_connections: MAX_CONNECTIONS,
            // Each range costs one request and its latency, and a file's
            // ranges in flight are what its sha256 waits for at the end:
            // 8 MiB (4 to 8, varied) balances the two (BENCHMARKS.md).
            chunk_size: 8 << 20,
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

    /// The most connections all downloads of this client share (default 64).
    /// They start at 16 (or `n`, if fewer) and grow while throughput still
    /// rises with them.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// The largest byte range one request asks for (default 8 MiB). A large
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
    connections: Connections,
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
    /// To download, from where the `HEAD` that found it said.
    Remote(remote::Head),
}

/// What the cache holds for a file, as far as it can tell without a request.
enum CacheCheck {
    /// Present, and its size is what its blob's record (or its git sha1) says.
    Intact(FetchedFile),
    /// Present, but nothing here says how large it must be: a blob named by
    /// sha256 that Python, or an older schnell, wrote.
    Unchecked {
        hit: FetchedFile,
        commit: String,
        etag: Option<String>,
    },
    /// Present but damaged; fetched again at the same commit.
    Damaged {
        commit: String,
        etag: String,
        reason: String,
    },
    Absent,
}

/// The largest blob named by its git sha1 that a cache lookup hashes when no
/// size is recorded for it. Such blobs are the Hub's small, non-LFS files.
const HASH_ON_LOOKUP_MAX: u64 = 16 << 20;

/// What [`HubClient::verify`] found for one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verification {
    /// Not in the cache: nothing to check (a download is always checked).
    NotCached,
    /// Its content hashes to the name of its blob.
    Intact,
    /// Its blob's name is no content hash, but its size is as recorded.
    SizeOnly,
    /// Nothing to check it against: neither a hash nor a recorded size.
    Unchecked,
    /// It was damaged (`reason`) and has been downloaded again.
    Repaired { reason: String },
    /// It is damaged (`reason`), and offline it could not be downloaded again.
    Damaged { reason: String },
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

    /// The cached copy of a file, if any, without a network request. A copy
    /// whose size is not what was recorded when it was downloaded (or whose
    /// git sha1 is wrong, for a small file) is damaged, and not returned.
    pub async fn cached(&self, file: &HubFile) -> Result<Option<FetchedFile>, HubError> {
        file.validate()?;
        Ok(match self.check_cached(file).await? {
            CacheCheck::Intact(hit) | CacheCheck::Unchecked { hit, .. } => Some(hit),
            CacheCheck::Damaged { .. } | CacheCheck::Absent => None,
        })
    }

    /// Looks a file up in the cache and checks what can be checked there.
    async fn check_cached(&self, file: &HubFile) -> Result<CacheCheck, HubError> {
        let cache = &self.inner.cache;
        let Some(found) = cache.lookup(file).await else {
            return Ok(CacheCheck::Absent);
        };
        let hit = FetchedFile {
            file: file.clone(),
            path: found.path.clone(),
            size: found.size,
            from_cache: true,
        };
        let Some(etag) = found.etag else {
            return Ok(CacheCheck::Unchecked {
                hit,
                commit: found.commit,
                etag: None,
            });
        };
        let damaged = |reason: String| CacheCheck::Damaged {
            commit: found.commit.clone(),
            etag: etag.clone(),
            reason,
        };
        let blob = cache.blob_path(&file.repo, &etag);
        match cache.recorded_size(&file.repo, &etag).await {
            Some(expected) if expected == found.size => Ok(CacheCheck::Intact(hit)),
            Some(expected) => Ok(damaged(format!(
                "its blob {} holds {} bytes, {expected} were downloaded",
                blob.display(),
                found.size
            ))),
            None if EtagKind::of(&etag) == EtagKind::GitSha1
                && found.size <= HASH_ON_LOOKUP_MAX =>
            {
                match hash_check(file, &blob, &etag).await? {
                    None => {
                        cache.record_size(&file.repo, &etag, found.size).await;
                        Ok(CacheCheck::Intact(hit))
                    }
                    Some(reason) => Ok(damaged(reason)),
                }
            }
            None => Ok(CacheCheck::Unchecked {
                hit,
                commit: found.commit,
                etag: Some(etag),
            }),
        }
    }

    /// Hashes each cached file against the name of its blob (sha256 for LFS
    /// files, git blob sha1 for the others), as `hf cache verify` does, and
    /// downloads again, at the same commit, every file that does not match
    /// (offline, it only reports them). Hashing runs on the blocking pool, a
    /// few files at a time. Every file
    /// is checked even when another fails; the error then names each failure.
    pub async fn verify(&self, files: &[HubFile]) -> Result<Vec<Verification>, HubError> {
        let errors: Vec<HubError> = files.iter().filter_map(|f| f.validate().err()).collect();
        if let Some(e) = HubError::from_many(errors) {
            return Err(e);
        }
        let hashers = Semaphore::new(
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
        );
        let results = join_all(files.iter().map(|f| self.verify_one(f, &hashers))).await;
        let mut verified = Vec::with_capacity(results.len());
        let mut errors = Vec::new();
        for result in results {
            match result {
                Ok(v) => verified.push(v),
                Err(e) => errors.push(e),
            }
        }
        match HubError::from_many(errors) {
            Some(e) => Err(e),
            None => Ok(verified),
        }
    }

    async fn verify_one(
        &self,
        file: &HubFile,
        hashers: &Semaphore,
    ) -> Result<Verification, HubError> {
        let cache = &self.inner.cache;
        let Some(found) = cache.lookup(file).await else {
            return Ok(Verification::NotCached);
        };
        let Some(etag) = found.etag else {
            return Ok(Verification::Unchecked);
        };
        let recorded = cache.recorded_size(&file.repo, &etag).await;
        let blob = cache.blob_path(&file.repo, &etag);
        let reason = match recorded {
            Some(expected) if expected != found.size => Some(format!(
                "its blob {} holds {} bytes, {expected} were downloaded",
                blob.display(),
                found.size
            )),
            _ if EtagKind::of(&etag) == EtagKind::Opaque => {
                return Ok(if recorded.is_some() {
                    Verification::SizeOnly
                } else {
                    Verification::Unchecked
                });
            }
            _ => {
                let _permit = hashers.acquire().await.expect("never closed");
                hash_check(file, &blob, &etag).await?
            }
        };
        let Some(reason) = reason else {
            if recorded.is_none() {
                cache.record_size(&file.repo, &etag, found.size).await;
            }
            return Ok(Verification::Intact);
        };
        if self.is_offline() {
            return Ok(Verification::Damaged { reason });
        }
        tracing::warn!(%file, %reason, "damaged in the cache; downloading it again");
        self.discard_blob(file, &etag, Damage::Content).await?;
        self.files(&[file.clone().at_revision(&found.commit)])
            .await?;
        Ok(Verification::Repaired { reason })
    }

    /// Deletes a damaged blob, holding its lock, so that it is fetched again;
    /// unless, checked again under the lock as `damage` found it, another
    /// task or process has repaired it meanwhile.
    async fn discard_blob(
        &self,
        file: &HubFile,
        etag: &str,
        damage: Damage,
    ) -> Result<(), HubError> {
        let cache = &self.inner.cache;
        let lock_path = cache.lock_path(&file.repo, etag);
        let _lock = cache
            .lock(&file.repo, etag)
            .await
            .map_err(io_err(file, &lock_path))?;
        let blob = cache.blob_path(&file.repo, etag);
        let repaired = match damage {
            Damage::Size => {
                let size = tokio::fs::metadata(&blob).await.ok().map(|m| m.len());
                size.is_some() && size == cache.recorded_size(&file.repo, etag).await
            }
            Damage::Content => {
                tokio::fs::metadata(&blob).await.is_ok()
                    && hash_check(file, &blob, etag).await?.is_none()
            }
        };
        if repaired {
            return Ok(());
        }
        cache
            .remove_blob(&file.repo, etag)
            .await
            .map_err(io_err(file, &blob))
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
                Ok(Lookup::Remote(head)) => head.remote.size,
                _ => 0,
            })
        });
        let results = join_all(pending.into_iter().map(|(file, lookup)| async move {
            match lookup? {
                Lookup::Cached(hit) => Ok(hit),
                Lookup::Remote(head) => self.download(&file, head).await,
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
        let mut at = file.clone();
        match self.check_cached(file).await? {
            CacheCheck::Intact(hit) => return Ok(self.cache_hit(hit)),
            CacheCheck::Unchecked { hit, commit, etag } => {
                if self.is_offline() {
                    return Ok(self.cache_hit(hit));
                }
                return self.check_size_online(file, hit, &commit, etag).await;
            }
            CacheCheck::Damaged {
                commit,
                etag,
                reason,
            } => {
                tracing::warn!(%file, %reason, "damaged in the cache; fetching it again");
                if !self.is_offline() {
                    self.discard_blob(file, &etag, Damage::Size).await?;
                }
                // The same content again, whatever the revision points to now.
                at = file.clone().at_revision(commit);
            }
            CacheCheck::Absent => {}
        }
        if self.is_offline() {
            // Reported for the whole batch by the caller.
            return Err(HubError::Offline {
                missing: vec![file.clone()],
                cache: self.cache_dir().to_path_buf(),
            });
        }
        let token = self.token().await;
        let head = self.with_retries(file, || self.head(token, &at)).await?;
        self.emit(HubEvent::Queued {
            file: file.clone(),
            size: head.remote.size,
        });
        Ok(Lookup::Remote(head))
    }

    /// One `HEAD` for `at`, within the connection budget.
    async fn head(
        &self,
        token: Option<&Secret>,
        at: &HubFile,
    ) -> Result<remote::Head, Failure<HubError>> {
        let _turn = self.inner.connections.acquire(0).await;
        remote::head(&self.inner.http, self.endpoint(), token, at).await
    }

    fn cache_hit(&self, hit: FetchedFile) -> Lookup {
        self.emit(HubEvent::Cached {
            file: hit.file.clone(),
            size: hit.size,
        });
        Lookup::Cached(hit)
    }

    /// A cached file of unknown size: one `HEAD` at its commit says what it
    /// must hold, and is recorded so that the next lookup needs none. If the
    /// Hub cannot be asked, the cached file is used as it is, as Python does.
    async fn check_size_online(
        &self,
        file: &HubFile,
        hit: FetchedFile,
        commit: &str,
        etag: Option<String>,
    ) -> Result<Lookup, HubError> {
        let token = self.token().await;
        let at = file.clone().at_revision(commit);
        let head = self.head(token, &at).await;
        match head {
            Ok(head)
                if head.remote.size == hit.size
                    && etag.as_ref().is_none_or(|e| *e == head.remote.etag) =>
            {
                let cache = &self.inner.cache;
                cache
                    .record_size(&file.repo, &head.remote.etag, hit.size)
                    .await;
                Ok(self.cache_hit(hit))
            }
            Ok(head) => {
                tracing::warn!(
                    %file,
                    path = %hit.path.display(),
                    cached = hit.size,
                    expected = head.remote.size,
                    "the cached file has the wrong size; fetching it again"
                );
                self.emit(HubEvent::Queued {
                    file: file.clone(),
                    size: head.remote.size,
                });
                Ok(Lookup::Remote(head))
            }
            Err(failure) => {
                let reason = match failure {
                    Failure::Fatal(e) => e.to_string(),
                    Failure::Transient { reason, .. } => reason,
                };
                tracing::info!(%file, %reason, "cannot ask the Hub what the cached file must hold; using it as it is");
                Ok(self.cache_hit(hit))
            }
        }
    }

    /// Step two: download, verify and link one file, unless another task or
    /// process does it first.
    async fn download(&self, file: &HubFile, found: remote::Head) -> Result<FetchedFile, HubError> {
        let remote = &found.remote;
        let _busy = self.claim(file).await;
        // Another task of this process may have finished it while we waited.
        if let CacheCheck::Intact(hit) = self.check_cached(file).await? {
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
            self.fetch_blob(file, &found, &blob).await?;
        }
        cache
            .record_size(&file.repo, &remote.etag, remote.size)
            .await;
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
        found: &remote::Head,
        blob: &Path,
    ) -> Result<(), HubError> {
        let remote = &found.remote;
        let parent = blob.parent().expect("blob paths have a parent");
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(io_err(file, parent))?;
        let mut integrity_retries = 1;
        loop {
            let (staged, hashed) = if remote.size == 0 {
                let empty = blob.with_extension("empty.part");
                tokio::fs::write(&empty, b"")
                    .await
                    .map_err(io_err(file, &empty))?;
                (empty, None)
            } else {
                let Transferred { path, sha256 } = self.transfer(file, found).await?;
                (path, sha256)
            };
            let verdict = match hashed {
                // Hashed while it downloaded.
                Some(actual) => (!actual.eq_ignore_ascii_case(&remote.etag)).then_some(actual),
                None => {
                    let (check_path, etag) = (staged.clone(), remote.etag.clone());
                    tokio::task::spawn_blocking(move || digest::mismatch(&check_path, &etag))
                        .await
                        .map_err(|e| io_err(file, &staged)(std::io::Error::other(e)))?
                        .map_err(io_err(file, &staged))?
                }
            };
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

    /// The transfer with our retries; its ranges share the client's
    /// connections with every other download.
    async fn transfer(&self, file: &HubFile, found: &remote::Head) -> Result<Transferred, HubError> {
        let s = &self.inner.settings;
        let token = self.token().await;
        let transfer = Transfer {
            http: &self.inner.http,
            cache: &self.inner.cache,
            connections: &self.inner.connections,
            endpoint: &s.endpoint,
            token,
            events: self.events.as_ref(),
            stall_timeout: s.stall_timeout,
            max_chunk: s.chunk_size,
        };
        // The first attempt goes where the lookup was sent; a retry asks
        // again, since a signed link may have expired.
        let location = Mutex::new(Some(found.location.clone()));
        self.with_retries(file, || {
            let location = location.lock().expect("not poisoned").take();
            transfer.run(file, &found.remote, location)
        })
        .await
    }

    /// [`retry::with_retries`] with this client's backoff and events.
    async fn with_retries<T, F, Fut>(&self, file: &HubFile, attempt: F) -> Result<T, HubError>
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

/// Hashes a blob on the blocking pool against the ETag it is named by:
/// `Some(reason)` when it does not match.
/// How a blob was found damaged, so that it can be checked again the same way.
#[derive(Clone, Copy)]
enum Damage {
    /// Its size is not the recorded one (or, unrecorded, its hash failed:
    /// a repair records the size).
    Size,
    /// Its content does not hash to its name (`verify`).
    Content,
}

async fn hash_check(file: &HubFile, blob: &Path, etag: &str) -> Result<Option<String>, HubError> {
    let (path, name) = (blob.to_path_buf(), etag.to_string());
    let actual = tokio::task::spawn_blocking(move || digest::mismatch(&path, &name))
        .await
        .map_err(|e| io_err(file, blob)(std::io::Error::other(e)))?
        .map_err(io_err(file, blob))?;
    Ok(actual.map(|actual| {
        let kind = match EtagKind::of(etag) {
            EtagKind::Sha256 => "sha256",
            _ => "git blob sha1",
        };
        format!(
            "the {kind} of its blob {} is {actual}, not the {etag} it is named by",
            blob.display()
        )
    }))
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
