//! Moving the bytes of one file with hf-hub 0.5's tokio API: parallel byte
//! ranges (`with_max_files` / `with_chunk_size`) and its resumable
//! `.sync.part` files, wrapped in a stall watchdog and mapped to our events.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hf_hub::api::tokio::{ApiBuilder, ApiError, Progress};
use hf_hub::{Cache, Repo, RepoType};

use super::remote::RemoteFile;
use super::retry::Failure;
use super::{cache::HubCache, Secret};
use crate::hub::{EventSink, HubError, HubEvent, HubFile};

/// Ranges smaller than this are not worth a connection of their own.
const MIN_CHUNK: u64 = 1 << 20;

/// How one file is split: `connections` ranges in flight, of `chunk_size` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    pub connections: usize,
    pub chunk_size: u64,
}

impl Plan {
    /// Equal-sized chunks in whole waves, so all of a file's connections finish
    /// together instead of leaving a tail on one of them.
    pub(crate) fn for_size(size: u64, max_connections: usize, max_chunk: u64) -> Self {
        let max_chunk = max_chunk.max(1);
        let min_chunk = MIN_CHUNK.min(max_chunk);
        let connections = (size.div_ceil(min_chunk) as usize).clamp(1, max_connections.max(1));
        let per_wave = connections as u64 * max_chunk;
        let waves = size.div_ceil(per_wave).max(1);
        let chunk_size = size.div_ceil(connections as u64 * waves).max(1);
        Plan {
            connections,
            chunk_size,
        }
    }
}

pub(crate) struct Transfer<'a> {
    pub cache: &'a HubCache,
    pub endpoint: &'a str,
    pub token: Option<&'a Secret>,
    pub events: Option<&'a EventSink>,
    pub stall_timeout: Duration,
}

impl Transfer<'_> {
    /// Downloads `file` (pinned to `remote.commit`) into the partial area and
    /// returns the path of the complete, not yet verified, blob there.
    pub(crate) async fn run(
        &self,
        file: &HubFile,
        remote: &RemoteFile,
        plan: Plan,
    ) -> Result<std::path::PathBuf, Failure<HubError>> {
        let partial_root = self.cache.partial_root(&file.repo);
        let repo = Repo::with_revision(file.repo.clone(), RepoType::Model, remote.commit.clone());
        let partial_cache = Cache::new(partial_root.clone());
        let staged_pointer = partial_cache
            .repo(repo.clone())
            .pointer_path(&remote.commit);
        let staged_pointer = staged_pointer.join(&file.path);
        // hf-hub will not replace a dangling pointer left by a crash.
        let _ = tokio::fs::remove_file(&staged_pointer).await;

        let builder = ApiBuilder::from_cache(partial_cache)
            .with_endpoint(self.endpoint.to_string())
            .with_token(self.token.map(|t| t.expose().to_string()))
            .with_max_files(plan.connections)
            .with_chunk_size(Some(plan.chunk_size as usize))
            .with_progress(false)
            .with_user_agent("schnell", env!("CARGO_PKG_VERSION"));
        // Building reads a token file and TLS roots: keep that off the runtime.
        let api = tokio::task::spawn_blocking(move || builder.build())
            .await
            .map_err(|e| Failure::transient(e.to_string()))?
            .map_err(|e| classify(file, self.endpoint, e, false))?;

        let progress = EventProgress::new(file.clone(), self.events.cloned());
        let api_repo = api.repo(repo);
        let download = api_repo.download_with_progress(&file.path, progress.clone());
        tokio::pin!(download);
        let mut watchdog =
            tokio::time::interval((self.stall_timeout / 4).max(Duration::from_millis(50)));
        let pointer = loop {
            tokio::select! {
                result = &mut download => break result
                    .map_err(|e| classify(file, self.endpoint, e, progress.advanced() > 0))?,
                _ = watchdog.tick() => {
                    if progress.idle_for() > self.stall_timeout {
                        return Err(Failure::Transient {
                            reason: format!("no data for {:?}", self.stall_timeout),
                            retry_after: None,
                            made_progress: progress.advanced() > 0,
                        });
                    }
                }
            }
        };
        let blob = tokio::fs::canonicalize(&pointer)
            .await
            .map_err(|e| Failure::transient(format!("staged file vanished: {e}")))?;
        // What hf-hub leaves beside the staged blob; we hold the blob's lock.
        let _ = tokio::fs::remove_file(&pointer).await;
        let _ = tokio::fs::remove_file(blob.with_extension("lock")).await;
        Ok(blob)
    }
}

/// Maps hf-hub's error to retry-or-not. hf-hub discards the response, so
/// `Retry-After` is not available here (our own HEAD honours it).
fn classify(file: &HubFile, endpoint: &str, e: ApiError, made_progress: bool) -> Failure<HubError> {
    let transient = |reason: String| Failure::Transient {
        reason,
        retry_after: None,
        made_progress,
    };
    match e {
        ApiError::TooManyRetries(inner) => classify(file, endpoint, *inner, made_progress),
        ApiError::RequestError(e) => match e.status() {
            Some(status) => match super::remote::classify_status(
                file,
                endpoint,
                status,
                &Default::default(),
                false,
            ) {
                Failure::Transient { reason, .. } => transient(reason),
                fatal => fatal,
            },
            None => transient(super::remote::describe(e)),
        },
        ApiError::IoError(source) => Failure::Fatal(HubError::Io {
            file: file.clone(),
            path: std::path::PathBuf::from(file.path.clone()),
            source,
        }),
        ApiError::LockAcquisition(_)
        | ApiError::Join(_)
        | ApiError::AcquireError(_)
        | ApiError::TryAcquireError(_) => transient(e.to_string()),
        other => Failure::Fatal(HubError::Protocol {
            file: file.clone(),
            reason: other.to_string(),
        }),
    }
}

/// Turns hf-hub's progress calls into [`HubEvent`]s and remembers when bytes
/// last arrived, for the stall watchdog. Clones share state: hf-hub hands one
/// clone to every range task.
#[derive(Clone)]
struct EventProgress {
    file: HubFile,
    sink: Option<EventSink>,
    size: Arc<AtomicU64>,
    started: Arc<AtomicBool>,
    advanced: Arc<AtomicU64>,
    origin: Instant,
    last_activity_ms: Arc<AtomicU64>,
}

impl EventProgress {
    fn new(file: HubFile, sink: Option<EventSink>) -> Self {
        Self {
            file,
            sink,
            size: Arc::default(),
            started: Arc::default(),
            advanced: Arc::default(),
            origin: Instant::now(),
            last_activity_ms: Arc::default(),
        }
    }

    fn touch(&self) {
        self.last_activity_ms
            .store(self.origin.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed));
        self.origin.elapsed().saturating_sub(last)
    }

    fn advanced(&self) -> u64 {
        self.advanced.load(Ordering::Relaxed)
    }

    fn emit(&self, event: HubEvent) {
        if let Some(sink) = &self.sink {
            sink(event);
        }
    }
}

impl Progress for EventProgress {
    async fn init(&mut self, size: usize, _filename: &str) {
        self.size.store(size as u64, Ordering::Relaxed);
        self.touch();
    }

    async fn update(&mut self, size: usize) {
        self.touch();
        // hf-hub 0.5 (pinned) reports the bytes already on disk with one update
        // right after `init`, before any range is requested.
        if !self.started.swap(true, Ordering::SeqCst) {
            self.emit(HubEvent::Started {
                file: self.file.clone(),
                size: self.size.load(Ordering::Relaxed),
                resumed_from: size as u64,
            });
        } else {
            self.advanced.fetch_add(size as u64, Ordering::Relaxed);
            self.emit(HubEvent::Advanced {
                file: self.file.clone(),
                bytes: size as u64,
            });
        }
    }

    async fn finish(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_equal_chunks_in_whole_waves() {
        let mib = 1u64 << 20;
        // Small files take one connection.
        assert_eq!(Plan::for_size(5_000, 8, 16 * mib).connections, 1);
        // A mid-size file spreads over all connections in one wave.
        let p = Plan::for_size(12 * mib, 8, 16 * mib);
        assert_eq!((p.connections, p.chunk_size), (8, 12 * mib / 8));
        // A large file: chunk count is a multiple of the connections.
        let size = 316 * mib + 12345;
        let p = Plan::for_size(size, 8, 16 * mib);
        let chunks = size.div_ceil(p.chunk_size);
        assert_eq!(p.connections, 8);
        assert!(p.chunk_size <= 16 * mib);
        assert_eq!(chunks % 8, 0, "{chunks} chunks");
        // One connection, serial chunks of the requested size.
        assert_eq!(
            Plan::for_size(4 * mib, 1, mib),
            Plan {
                connections: 1,
                chunk_size: mib
            }
        );
    }
}
