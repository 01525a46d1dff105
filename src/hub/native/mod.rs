//! The native backend: tokio, reqwest and the standard Hugging Face cache.
//!
//! A batch of files goes in two steps. First every file is looked up in the
//! cache (zero requests on a hit whose size is known to be right) and the
//! rest are asked about with one `HEAD` each. Then the missing ones download
//! at once ([`download`]), their byte ranges sharing one budget of
//! connections sized to the link ([`connections`], [`transfer`]); each file
//! is downloaded by at most one task of this process ([`claim`]) and one
//! process at a time, verified against its ETag, and only then renamed into
//! the cache. [`verify`] re-checks what the cache holds.

mod builder;
mod cache;
mod claim;
mod connections;
mod download;
mod partial;
mod prefix_hash;
mod remote;
mod transfer;
mod verify;

pub use self::builder::HubClientBuilder;
pub use self::verify::Verification;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use futures::future::join_all;
use tokio::sync::OnceCell;

use self::builder::{Secret, TokenSource};
use self::cache::HubCache;
use self::connections::Connections;
use self::verify::{hash_check, Damage};
use super::digest::EtagKind;
use super::retry::{self, Failure};
use crate::hub::{EventSink, HubError, HubEvent, HubFile};

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
        let pending: Vec<(HubFile, Result<Lookup, HubError>)> =
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

        // All at once: the connections go to whichever file has the least
        // left (see `transfer`).
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
}

/// Names the file and the cache path in an I/O error.
fn io_err(file: &HubFile, path: &Path) -> impl FnOnce(std::io::Error) -> HubError {
    let (file, path) = (file.clone(), path.to_path_buf());
    move |source| HubError::Io { file, path, source }
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
