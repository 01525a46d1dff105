//! Moving the bytes of one file: equal byte ranges fetched in parallel into
//! a resumable partial file, watched for stalls and reported as events.
//!
//! Each attempt first asks the Hub (one `HEAD`, with the token) where the
//! bytes are; the ranges then go there, with the token only when that is the
//! endpoint's own origin. The partial file keeps hf-hub 0.5's `.sync.part`
//! format: the content, then the length of its complete prefix, so a retry or
//! a new process continues where the last one stopped. All ranges of an
//! attempt run inside its future: when one fails, the others are dropped
//! with it, so no connection outlives the attempt.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::{StatusCode, Url};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::cache::HubCache;
use super::remote::{self, Redirect, RemoteFile};
use super::Secret;
use crate::hub::retry::Failure;
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
        let per_wave = (connections as u64).saturating_mul(max_chunk);
        let waves = size.div_ceil(per_wave).max(1);
        let chunk_size = size
            .div_ceil((connections as u64).saturating_mul(waves))
            .max(1);
        Plan {
            connections,
            chunk_size,
        }
    }
}

/// Body bytes gathered before each write: few writes, and each burst of
/// work on the runtime's thread stays small.
const WRITE_BUFFER: usize = 1 << 20;

/// Redirects a range request follows (the CDN's own, if any).
const MAX_REDIRECTS: usize = 5;

/// The partial file's trailer: the complete prefix's length, little-endian.
const TRAILER: u64 = 8;

pub(crate) struct Transfer<'a> {
    pub http: &'a reqwest::Client,
    pub cache: &'a HubCache,
    pub endpoint: &'a str,
    pub token: Option<&'a Secret>,
    pub events: Option<&'a EventSink>,
    pub stall_timeout: Duration,
}

impl Transfer<'_> {
    /// Downloads `file` (pinned to `remote.commit`) into its partial file and
    /// returns that file's path once it holds every byte (not yet verified).
    /// On a full disk the partial file is deleted, so that its space is free
    /// again, and the error names it.
    pub(crate) async fn run(
        &self,
        file: &HubFile,
        remote: &RemoteFile,
        plan: Plan,
    ) -> Result<PathBuf, Failure<HubError>> {
        let partial = self.cache.partial_path(&file.repo, &remote.etag);
        let progress = Progress::new(file.clone(), self.events.cloned());
        match self.fill(file, remote, plan, &partial, &progress).await {
            Ok(()) => Ok(partial),
            Err(Failure::Fatal(e @ HubError::DiskFull { .. })) => {
                if let Err(rm) = tokio::fs::remove_file(&partial).await {
                    tracing::warn!(path = %partial.display(), error = %rm, "cannot delete the partial download");
                }
                Err(Failure::Fatal(e))
            }
            Err(Failure::Transient {
                reason,
                retry_after,
                ..
            }) => Err(Failure::Transient {
                reason,
                retry_after,
                // Only bytes that reached the complete prefix count: a server
                // that always breaks off mid-range still runs out of retries.
                made_progress: progress.committed_more(),
            }),
            Err(fatal) => Err(fatal),
        }
    }

    async fn fill(
        &self,
        file: &HubFile,
        remote: &RemoteFile,
        plan: Plan,
        partial: &Path,
        progress: &Progress,
    ) -> Result<(), Failure<HubError>> {
        let size = remote.size;
        let committed = open_partial(partial, size)
            .await
            .map_err(write_failure(file, partial, size))?;
        progress.started(size, committed);
        if committed < size {
            let work = self.fetch_ranges(file, remote, plan, partial, committed, progress);
            tokio::pin!(work);
            let mut watchdog =
                tokio::time::interval((self.stall_timeout / 4).max(Duration::from_millis(50)));
            loop {
                tokio::select! {
                    result = &mut work => break result?,
                    _ = watchdog.tick() => {
                        if progress.idle_for() > self.stall_timeout {
                            return Err(Failure::transient(format!(
                                "no data for {:?}",
                                self.stall_timeout
                            )));
                        }
                    }
                }
            }
        }
        // Drop the trailer: the file is now exactly the content.
        let out = tokio::fs::OpenOptions::new()
            .write(true)
            .open(partial)
            .await
            .map_err(write_failure(file, partial, size))?;
        out.set_len(size)
            .await
            .map_err(write_failure(file, partial, size))?;
        Ok(())
    }

    /// Fetches `[committed, size)` in ranges, `plan.connections` at a time,
    /// advancing the partial file's trailer as the complete prefix grows.
    async fn fetch_ranges(
        &self,
        file: &HubFile,
        remote: &RemoteFile,
        plan: Plan,
        partial: &Path,
        mut committed: u64,
        progress: &Progress,
    ) -> Result<(), Failure<HubError>> {
        let size = remote.size;
        let endpoint = remote::endpoint_url(self.endpoint).map_err(Failure::Fatal)?;
        let pinned = file.clone().at_revision(&remote.commit);
        let head = remote::head(self.http, self.endpoint, self.token, &pinned).await?;
        if (head.remote.etag.as_str(), head.remote.size) != (remote.etag.as_str(), size) {
            return Err(Failure::Fatal(HubError::Protocol {
                file: file.clone(),
                reason: format!(
                    "commit {} answered ETag {} ({} bytes), then ETag {} ({} bytes)",
                    remote.commit, remote.etag, size, head.remote.etag, head.remote.size
                ),
            }));
        }
        progress.touch();

        let chunk = plan.chunk_size.max(1);
        let ranges: Vec<(u64, u64)> = (committed..size)
            .step_by(chunk as usize)
            .map(|start| (start, (start + chunk).min(size) - 1))
            .collect();
        let fail = write_failure(file, partial, size);
        let mut trailer = tokio::fs::OpenOptions::new()
            .write(true)
            .open(partial)
            .await
            .map_err(&fail)?;
        let mut finished = BinaryHeap::new();
        let mut fetches = futures::stream::iter(ranges)
            .map(|(start, end)| {
                self.fetch_range(
                    file,
                    &head.location,
                    &endpoint,
                    partial,
                    (start, end),
                    size,
                    progress,
                )
            })
            .buffer_unordered(plan.connections.max(1));
        while let Some(range) = fetches.next().await {
            finished.push(Reverse(range?));
            let before = committed;
            while let Some(&Reverse((start, end))) = finished.peek() {
                if start != committed {
                    break;
                }
                committed = end + 1;
                finished.pop();
            }
            if committed != before {
                trailer.seek(SeekFrom::Start(size)).await.map_err(&fail)?;
                trailer
                    .write_all(&committed.to_le_bytes())
                    .await
                    .map_err(&fail)?;
                trailer.flush().await.map_err(&fail)?;
                progress.commit(committed - before);
            }
        }
        Ok(())
    }

    /// One range, `start..=end`, streamed into the partial file.
    #[allow(clippy::too_many_arguments)]
    async fn fetch_range(
        &self,
        file: &HubFile,
        source: &Url,
        endpoint: &Url,
        partial: &Path,
        (start, end): (u64, u64),
        size: u64,
        progress: &Progress,
    ) -> Result<(u64, u64), Failure<HubError>> {
        let protocol = |reason: String| {
            Failure::Fatal(HubError::Protocol {
                file: file.clone(),
                reason,
            })
        };
        let response = self.get_range(file, source, endpoint, start, end).await?;
        let status = response.status();
        let whole = status == StatusCode::OK && start == 0 && end + 1 == size;
        let answered = response
            .headers()
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("bytes "))
            .and_then(|v| v.split(['-', '/']).next())
            .and_then(|v| v.parse::<u64>().ok());
        if !whole && (status != StatusCode::PARTIAL_CONTENT || answered != Some(start)) {
            return Err(protocol(format!(
                "asked for bytes {start}-{end}, got HTTP {status} without them: \
                 the server does not serve byte ranges"
            )));
        }

        let fail = write_failure(file, partial, size);
        let mut out = tokio::fs::OpenOptions::new()
            .write(true)
            .open(partial)
            .await
            .map_err(&fail)?;
        out.seek(SeekFrom::Start(start)).await.map_err(&fail)?;
        let want = end - start + 1;
        let mut got = 0u64;
        let mut buffer = Vec::with_capacity(WRITE_BUFFER.min(want as usize));
        let mut body = response.bytes_stream();
        while let Some(piece) = body.next().await {
            let piece = piece.map_err(|e| {
                Failure::transient(format!("the body broke off: {}", remote::describe(e)))
            })?;
            got += piece.len() as u64;
            if got > want {
                return Err(protocol(format!(
                    "asked for {want} bytes at {start}, got more"
                )));
            }
            progress.advance(piece.len() as u64);
            buffer.extend_from_slice(&piece);
            if buffer.len() >= WRITE_BUFFER {
                out.write_all(&buffer).await.map_err(&fail)?;
                buffer.clear();
            }
        }
        if got < want {
            return Err(Failure::transient(format!(
                "the connection closed after {got} of {want} bytes"
            )));
        }
        out.write_all(&buffer).await.map_err(&fail)?;
        out.flush().await.map_err(&fail)?;
        Ok((start, end))
    }

    /// `GET` with a `Range`, following redirects; the token goes only to the
    /// endpoint's origin.
    async fn get_range(
        &self,
        file: &HubFile,
        source: &Url,
        endpoint: &Url,
        start: u64,
        end: u64,
    ) -> Result<reqwest::Response, Failure<HubError>> {
        let mut url = source.clone();
        for _ in 0..=MAX_REDIRECTS {
            let request = self
                .http
                .get(url.clone())
                .header(RANGE, format!("bytes={start}-{end}"));
            let (request, token_sent) = remote::authorize(request, &url, endpoint, self.token);
            let response = request.send().await.map_err(|e| {
                Failure::transient(format!(
                    "GET {}: {}",
                    remote::strip_query(&url),
                    remote::describe(e)
                ))
            })?;
            let status = response.status();
            if status.is_redirection() {
                if let Some(Redirect::Relative(next) | Redirect::Absolute(next)) =
                    remote::redirect(&url, response.headers())
                {
                    url = next;
                    continue;
                }
            }
            if status.is_success() {
                return Ok(response);
            }
            if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
                && !remote::same_origin(&url, endpoint)
            {
                // A signed CDN link that expired: the next attempt asks the
                // Hub for a fresh one.
                return Err(Failure::transient(format!(
                    "HTTP {status} from {}: the download link may have expired",
                    url.origin().ascii_serialization()
                )));
            }
            return Err(remote::classify_status(
                file,
                self.endpoint,
                status,
                response.headers(),
                token_sent,
            ));
        }
        Err(Failure::Fatal(HubError::Protocol {
            file: file.clone(),
            reason: "too many redirects".into(),
        }))
    }
}

/// Opens the partial file and returns how much of it is complete; makes a
/// new one (sparse, `size` + trailer) when there is none or it does not fit.
async fn open_partial(path: &Path, size: u64) -> io::Result<u64> {
    tokio::fs::create_dir_all(path.parent().expect("partial paths have a parent")).await?;
    if let Ok(mut f) = tokio::fs::File::open(path).await {
        if f.metadata().await?.len() == size + TRAILER {
            f.seek(SeekFrom::Start(size)).await?;
            let mut trailer = [0u8; TRAILER as usize];
            f.read_exact(&mut trailer).await?;
            return Ok(u64::from_le_bytes(trailer).min(size));
        }
    }
    let f = tokio::fs::File::create(path).await?;
    f.set_len(size + TRAILER).await?;
    Ok(0)
}

/// A failed write to the partial file: final, and a full disk says so.
fn write_failure(
    file: &HubFile,
    partial: &Path,
    size: u64,
) -> impl Fn(io::Error) -> Failure<HubError> {
    let (file, partial) = (file.clone(), partial.to_path_buf());
    move |source| {
        Failure::Fatal(
            if matches!(
                source.kind(),
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
            ) {
                HubError::DiskFull {
                    file: file.clone(),
                    partial: partial.clone(),
                    size,
                }
            } else {
                HubError::Io {
                    file: file.clone(),
                    path: partial.clone(),
                    source,
                }
            },
        )
    }
}

/// Reports a transfer as [`HubEvent`]s and remembers when bytes last
/// arrived, for the stall watchdog.
struct Progress {
    file: HubFile,
    sink: Option<EventSink>,
    origin: Instant,
    last_activity_ms: AtomicU64,
    committed: AtomicU64,
}

impl Progress {
    fn new(file: HubFile, sink: Option<EventSink>) -> Self {
        Self {
            file,
            sink,
            origin: Instant::now(),
            last_activity_ms: AtomicU64::new(0),
            committed: AtomicU64::new(0),
        }
    }

    fn emit(&self, event: HubEvent) {
        if let Some(sink) = &self.sink {
            sink(event);
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

    fn started(&self, size: u64, resumed_from: u64) {
        self.touch();
        self.emit(HubEvent::Started {
            file: self.file.clone(),
            size,
            resumed_from,
        });
    }

    fn advance(&self, bytes: u64) {
        self.touch();
        self.emit(HubEvent::Advanced {
            file: self.file.clone(),
            bytes,
        });
    }

    /// `bytes` more joined the complete prefix.
    fn commit(&self, bytes: u64) {
        self.committed.fetch_add(bytes, Ordering::Relaxed);
    }

    fn committed_more(&self) -> bool {
        self.committed.load(Ordering::Relaxed) > 0
    }
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
