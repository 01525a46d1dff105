//! One attempt at one file: what the partial file lacks fetched over the
//! client's shared connections (each connection a worker taking ranges from
//! the schedule), the ledger saved as it goes, and a stalled attempt
//! abandoned.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use reqwest::Url;
use tokio::sync::Notify;

use super::ledger::Ledger;
use super::progress::Progress;
use super::range_request::{write_failure, Ahead, RangeClient};
use super::schedule::{Latency, Left, Work, RECHECK};
use crate::hub::digest::EtagKind;
use crate::hub::error::HubError;
use crate::hub::event::EventSink;
use crate::hub::file::HubFile;
use crate::hub::native::cache::HubCache;
use crate::hub::native::connections::Connections;
use crate::hub::native::partial::Partial;
use crate::hub::native::prefix_hash::PrefixHasher;
use crate::hub::native::remote::{self, RemoteFile};
use crate::hub::native::token::Secret;
use crate::hub::retry::Failure;

/// Ranges smaller than this are not worth a request of their own, and an
/// attempt that recorded less than this made no progress.
const MIN_CHUNK: u64 = 1 << 20;

/// How often the written ranges are saved.
const SAVE_EVERY: Duration = Duration::from_millis(200);

/// What one file's transfer needs of its client; one per file, used for
/// every attempt.
pub(crate) struct Transfer<'a> {
    pub http: &'a reqwest::Client,
    /// Where the partial file lives.
    pub cache: &'a HubCache,
    /// The budget every download of the client shares.
    pub connections: &'a Connections,
    /// The Hub (or mirror) as configured.
    pub endpoint: &'a str,
    pub token: Option<&'a Secret>,
    pub events: Option<&'a EventSink>,
    /// An attempt that receives nothing for this long is abandoned.
    pub stall_timeout: Duration,
    /// The largest range one request asks for.
    pub max_chunk: u64,
}

/// A partial file that holds every byte (not yet renamed into place).
pub(crate) struct Transferred {
    /// The partial file.
    pub path: PathBuf,
    /// Its sha256, hashed while it downloaded, when its ETag is one.
    pub sha256: Option<String>,
}

impl Transfer<'_> {
    /// Downloads `file` (pinned to `remote.commit`) into its partial file.
    /// On a full disk the partial file is deleted, so that its space is free
    /// again, and the error names it.
    /// `location` is where the bytes are, if a `HEAD` just said so.
    pub(crate) async fn run(
        &self,
        file: &HubFile,
        remote: &RemoteFile,
        location: Option<Url>,
    ) -> Result<Transferred, Failure<HubError>> {
        let partial = Partial::new(
            self.cache.partial_path(&file.repo, &remote.etag),
            remote.size,
        );
        let progress = Progress::new(file.clone(), self.events.cloned());
        match self.fill(file, remote, location, &partial, &progress).await {
            Ok(sha256) => Ok(Transferred {
                path: partial.path().to_path_buf(),
                sha256,
            }),
            Err(Failure::Fatal(e @ HubError::DiskFull { .. })) => {
                if let Err(rm) = partial.remove().await {
                    tracing::warn!(path = %partial.path().display(), error = %rm, "cannot delete the partial download");
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
                // A server that always breaks off after a few bytes still
                // runs out of retries.
                made_progress: progress.recorded_gain() >= MIN_CHUNK,
            }),
            Err(fatal) => Err(fatal),
        }
    }

    /// Fetches what the partial file lacks; returns the sha256 if hashed.
    async fn fill(
        &self,
        file: &HubFile,
        remote: &RemoteFile,
        location: Option<Url>,
        partial: &Partial,
        progress: &Progress,
    ) -> Result<Option<String>, Failure<HubError>> {
        let size = remote.size;
        let fail = write_failure(file, partial.path(), size);
        let have = partial.open().await.map_err(&fail)?;
        progress.started(size, have.total());
        let hasher = (EtagKind::of(&remote.etag) == EtagKind::Sha256)
            .then(|| PrefixHasher::start(partial.path().to_path_buf(), size));
        let ledger = Ledger::new(have, hasher.as_ref());
        if ledger.missing(size) {
            let result = {
                let work =
                    self.fetch_missing(file, remote, location, partial.path(), &ledger, progress);
                tokio::pin!(work);
                let mut tick = tokio::time::interval(
                    SAVE_EVERY
                        .min(self.stall_timeout / 4)
                        .max(Duration::from_millis(10)),
                );
                loop {
                    tokio::select! {
                        result = &mut work => break result,
                        _ = tick.tick() => {
                            // Waiting for a connection is not a stall.
                            if progress.turns_held() == 0 {
                                progress.touch();
                            } else if progress.idle_for() > self.stall_timeout {
                                break Err(Failure::transient(format!(
                                    "no data for {:?}",
                                    self.stall_timeout
                                )));
                            }
                            save(partial, &ledger, progress)
                                .await
                                .map_err(&fail)?;
                        }
                    }
                }
            };
            // The ranges' connections are closed; keep what they wrote, for
            // the next attempt or process.
            save(partial, &ledger, progress).await.map_err(&fail)?;
            result?;
            if ledger.missing(size) {
                return Err(Failure::transient("the ranges ended with bytes missing"));
            }
        }
        partial.complete().await.map_err(&fail)?;
        match hasher {
            Some(hasher) => {
                hasher.advance(size);
                hasher.finish().await.map_err(&fail)
            }
            None => Ok(None),
        }
    }

    /// Fetches every gap in `ledger`, over as many connections as the
    /// client grants, recording each write.
    async fn fetch_missing(
        &self,
        file: &HubFile,
        remote: &RemoteFile,
        location: Option<Url>,
        path: &Path,
        ledger: &Ledger<'_>,
        progress: &Progress,
    ) -> Result<(), Failure<HubError>> {
        let size = remote.size;
        let endpoint = remote::endpoint_url(self.endpoint).map_err(Failure::Fatal)?;
        let location = match location {
            Some(location) => location,
            None => self.locate(file, remote).await?,
        };
        progress.touch();

        let work = Mutex::new(Work::new(ledger.gaps(size), self.max_chunk));
        // Rings when a range ends: what is left may now be worth splitting,
        // or nothing may be left.
        let range_ended = Notify::new();
        let latency = Latency::default();
        let ranges = RangeClient {
            http: self.http,
            connections: self.connections,
            token: self.token,
            hub_endpoint: self.endpoint,
            endpoint: &endpoint,
            source: &location,
            file,
            path,
            size,
            ledger,
            progress,
            latency: &latency,
        };
        let worker = || async {
            loop {
                // The file with the least left goes first: files complete one
                // after another (each is hashed as it arrives), and small
                // ones do not wait behind the ranges of large ones.
                let ended = range_ended.notified();
                tokio::pin!(ended);
                ended.as_mut().enable();
                let left = work.lock().expect("not poisoned").left(&latency);
                let left = match left {
                    Left::Nothing => return Ok(()),
                    Left::InFlight => {
                        // Only ranges in flight, none worth splitting yet:
                        // look again when one ends, or may be worth it.
                        tokio::select! {
                            _ = ended => {}
                            _ = tokio::time::sleep((latency.get() / 2).max(RECHECK)) => {}
                        }
                        continue;
                    }
                    Left::Bytes(left) => left,
                };
                let _turn = self.connections.acquire(left).await;
                let _held = progress.hold_turn();
                let next = work.lock().expect("not poisoned").next(&latency, None);
                let Some(mut range) = next else {
                    continue;
                };
                let mut answer = ranges.ask(range.bounds()).await;
                // While this turn's connection has ranges to fetch, it asks
                // for the next one before the current one ends, so that
                // the next response's latency passes while bytes still flow.
                loop {
                    let mut ahead = Ahead::Idle;
                    // Never its own range: splitting that gains nothing.
                    let take = || {
                        work.lock()
                            .expect("not poisoned")
                            .next(&latency, Some(&range))
                    };
                    let streamed = match answer {
                        Ok(response) => ranges.stream(&range, response, take, &mut ahead).await,
                        Err(e) => Err(e),
                    };
                    work.lock().expect("not poisoned").finished(&range);
                    range_ended.notify_waiters();
                    streamed?;
                    (range, answer) = match ahead {
                        Ahead::Idle => break,
                        Ahead::Asking(next, asking) => (next, asking.await),
                        Ahead::Answered(next, answered) => (next, answered),
                    };
                }
            }
        };
        let mut workers: FuturesUnordered<_> =
            (0..self.connections.cap()).map(|_| worker()).collect();
        while let Some(done) = workers.next().await {
            done?;
        }
        Ok(())
    }

    /// Asks the Hub again where the bytes of `remote.commit` are, and checks
    /// that they are still the same bytes.
    async fn locate(&self, file: &HubFile, remote: &RemoteFile) -> Result<Url, Failure<HubError>> {
        let pinned = file.clone().at_revision(&remote.commit);
        let head = {
            // Asking costs no bandwidth: it goes before any range.
            let _turn = self.connections.acquire(0).await;
            remote::head(self.http, self.endpoint, self.token, &pinned).await?
        };
        if (head.remote.etag.as_str(), head.remote.size) != (remote.etag.as_str(), remote.size) {
            return Err(Failure::Fatal(HubError::Protocol {
                file: file.clone(),
                reason: format!(
                    "commit {} answered ETag {} ({} bytes), then ETag {} ({} bytes)",
                    remote.commit, remote.etag, remote.size, head.remote.etag, head.remote.size
                ),
            }));
        }
        Ok(head.location)
    }
}

/// Saves the ledger if it changed.
async fn save(partial: &Partial, ledger: &Ledger<'_>, progress: &Progress) -> io::Result<()> {
    let Some(have) = ledger.take_changes() else {
        return Ok(());
    };
    partial.save(&have).await?;
    progress.recorded(have.total());
    Ok(())
}
