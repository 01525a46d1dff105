//! Moving the bytes of one file: its missing byte ranges fetched in parallel
//! over the client's shared connections, each written where it belongs in a
//! resumable partial file, watched for stalls and reported as events.
//!
//! Each attempt goes where the lookup's `HEAD` said the bytes are (a retry
//! asks the Hub again), with the token only when that is the endpoint's own
//! origin. A connection takes ranges of the missing bytes one after another
//! ([`Work`]), and asks for the next one before the current one ends, so the
//! link does not idle while a request waits out its latency; at a file's
//! end, idle connections take over the end of ranges still in flight, so
//! that its last connections finish together. Every write is recorded
//! ([`Partial`]), so a retry or a new process asks only for what is missing.
//! All ranges of an attempt run inside its future: when one fails, the
//! others are dropped with it, so no connection outlives the attempt.

use std::collections::VecDeque;
use std::io::{self, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::{StatusCode, Url};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::Notify;

use super::cache::HubCache;
use super::connections::Connections;
use super::partial::{Intervals, Partial};
use super::prefix_hash::PrefixHasher;
use super::remote::{self, Redirect, RemoteFile};
use super::Secret;
use crate::hub::digest::EtagKind;
use crate::hub::retry::Failure;
use crate::hub::{EventSink, HubError, HubEvent, HubFile};

/// Ranges smaller than this are not worth a request of their own, and an
/// attempt that recorded less than this made no progress.
const MIN_CHUNK: u64 = 1 << 20;

/// Body bytes gathered before each write: few writes, and each burst of
/// work on the runtime's thread stays small.
const WRITE_BUFFER: usize = 1 << 20;

/// Redirects a range request follows (the CDN's own, if any).
const MAX_REDIRECTS: usize = 5;

/// How often the written ranges are saved.
const SAVE_EVERY: Duration = Duration::from_millis(200);

pub(crate) struct Transfer<'a> {
    pub http: &'a reqwest::Client,
    pub cache: &'a HubCache,
    pub connections: &'a Connections,
    pub endpoint: &'a str,
    pub token: Option<&'a Secret>,
    pub events: Option<&'a EventSink>,
    pub stall_timeout: Duration,
    /// The largest range one request asks for.
    pub max_chunk: u64,
}

/// A partial file that holds every byte (not yet renamed into place).
pub(crate) struct Transferred {
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
        let ctx = RangeContext {
            file,
            source: &location,
            endpoint: &endpoint,
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
                let mut answer = self.ask(&ctx, range.bounds()).await;
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
                        Ok(response) => self.stream(&ctx, &range, response, take, &mut ahead).await,
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

    /// Asks for one range and checks that the answer is that range.
    async fn ask(&self, ctx: &RangeContext<'_>, (start, end): (u64, u64)) -> Answer {
        let last = end - 1;
        let asked = Instant::now();
        let response = self
            .get_range(ctx.file, ctx.source, ctx.endpoint, start, last)
            .await?;
        ctx.latency.observe(asked.elapsed());
        let status = response.status();
        let whole = status == StatusCode::OK && start == 0 && end == ctx.size;
        let answered = response
            .headers()
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("bytes "))
            .and_then(|v| v.split(['-', '/']).next())
            .and_then(|v| v.parse::<u64>().ok());
        if !whole && (status != StatusCode::PARTIAL_CONTENT || answered != Some(start)) {
            return Err(ctx.protocol(format!(
                "asked for bytes {start}-{last}, got HTTP {status} without them: \
                 the server does not serve byte ranges"
            )));
        }
        Ok(response)
    }

    /// Streams one range's response into the partial file until the range
    /// ends where it stops now (an idle connection may have taken over its
    /// end). What arrived is written and recorded even when the connection
    /// breaks off. Once what is left would arrive within two of a
    /// request's latencies, it asks for the range `take` gives, into `ahead`.
    async fn stream<'s>(
        &'s self,
        ctx: &'s RangeContext<'s>,
        range: &Active,
        response: reqwest::Response,
        mut take: impl FnMut() -> Option<Arc<Active>>,
        ahead: &mut Ahead<'s>,
    ) -> Result<(), Failure<HubError>> {
        let (start, end) = range.bounds();
        let fail = write_failure(ctx.file, ctx.path, ctx.size);
        let mut out = tokio::fs::OpenOptions::new()
            .write(true)
            .open(ctx.path)
            .await
            .map_err(&fail)?;
        out.seek(SeekFrom::Start(start)).await.map_err(&fail)?;
        let mut written = start;
        let mut buffer = Vec::with_capacity(WRITE_BUFFER.min((end - start) as usize));
        // Flushed before it is recorded: the record never claims bytes that
        // the file does not hold, even if the process is killed (a machine
        // that crashes may lose both: nothing is fsynced, and the checksum
        // then sends the file back to be fetched again).
        let mut write = async |buffer: &mut Vec<u8>, written: &mut u64| {
            out.write_all(buffer).await?;
            out.flush().await?;
            ctx.ledger.add(*written, *written + buffer.len() as u64);
            *written += buffer.len() as u64;
            buffer.clear();
            io::Result::Ok(())
        };
        range.started();
        let mut received = start;
        let mut body = response.bytes_stream();
        let broke = loop {
            let next = tokio::select! {
                next = body.next() => next,
                answered = ahead.asked(), if ahead.is_asking() => {
                    ahead.answered(answered);
                    continue;
                }
            };
            let piece = match next {
                None => break None,
                Some(Err(e)) => {
                    break Some(format!("the body broke off: {}", remote::describe(e)));
                }
                Some(Ok(piece)) => piece,
            };
            if received + piece.len() as u64 > end {
                return Err(ctx.protocol(format!(
                    "asked for {} bytes at {start}, got more",
                    end - start
                )));
            }
            let (keep, stop) = range.receive(piece.len() as u64);
            received += piece.len() as u64;
            // Split, and this connection's part is in: the rest of its
            // response is another connection's.
            let cut = stop < end && received >= stop;
            ctx.progress.advance(keep);
            self.connections.received(keep);
            buffer.extend_from_slice(&piece[..keep as usize]);
            if buffer.len() >= WRITE_BUFFER || cut {
                write(&mut buffer, &mut written).await.map_err(&fail)?;
            }
            if cut {
                break None;
            }
            if matches!(ahead, Ahead::Idle) && range.ends_within(ctx.latency.get()) {
                if let Some(next) = take() {
                    let asking = Box::pin(self.ask(ctx, next.bounds()));
                    *ahead = Ahead::Asking(next, asking);
                }
            }
        };
        if !buffer.is_empty() {
            write(&mut buffer, &mut written).await.map_err(&fail)?;
        }
        let (_, stop) = range.bounds();
        match broke {
            Some(reason) => Err(Failure::transient(reason)),
            None if written < stop => Err(Failure::transient(format!(
                "the connection closed after {} of {} bytes",
                written - start,
                stop - start
            ))),
            None => Ok(()),
        }
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

/// What every range of one attempt shares.
struct RangeContext<'a> {
    file: &'a HubFile,
    source: &'a Url,
    endpoint: &'a Url,
    path: &'a Path,
    size: u64,
    ledger: &'a Ledger<'a>,
    progress: &'a Progress,
    latency: &'a Latency,
}

impl RangeContext<'_> {
    fn protocol(&self, reason: String) -> Failure<HubError> {
        Failure::Fatal(HubError::Protocol {
            file: self.file.clone(),
            reason,
        })
    }
}

type Answer = Result<reqwest::Response, Failure<HubError>>;

/// The range a connection asked for before its current one ended.
enum Ahead<'a> {
    Idle,
    Asking(
        Arc<Active>,
        std::pin::Pin<Box<dyn std::future::Future<Output = Answer> + Send + 'a>>,
    ),
    Answered(Arc<Active>, Answer),
}

impl Ahead<'_> {
    fn is_asking(&self) -> bool {
        matches!(self, Ahead::Asking(..))
    }

    /// The answer being waited for; only while asking.
    async fn asked(&mut self) -> Answer {
        match self {
            Ahead::Asking(_, asking) => asking.await,
            _ => std::future::pending().await,
        }
    }

    fn answered(&mut self, answer: Answer) {
        if let Ahead::Asking(range, _) = std::mem::replace(self, Ahead::Idle) {
            *self = Ahead::Answered(range, answer);
        }
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

/// What this attempt found and wrote.
/// The hasher hears of each step of the complete prefix at once, so that
/// it keeps up.
struct Ledger<'a> {
    have: Mutex<Intervals>,
    changed: AtomicBool,
    hasher: Option<&'a PrefixHasher>,
}

impl<'a> Ledger<'a> {
    fn new(have: Intervals, hasher: Option<&'a PrefixHasher>) -> Self {
        if let Some(hasher) = hasher {
            hasher.advance(have.prefix());
        }
        Self {
            have: Mutex::new(have),
            changed: AtomicBool::new(false),
            hasher,
        }
    }

    fn add(&self, start: u64, end: u64) {
        let prefix = {
            let mut have = self.have.lock().expect("not poisoned");
            have.insert(start, end);
            have.prefix()
        };
        self.changed.store(true, Ordering::Release);
        if let Some(hasher) = self.hasher {
            hasher.advance(prefix);
        }
    }

    fn missing(&self, size: u64) -> bool {
        self.have.lock().expect("not poisoned").total() < size
    }

    fn gaps(&self, size: u64) -> Vec<(u64, u64)> {
        self.have.lock().expect("not poisoned").gaps(size)
    }

    /// A copy of what is written, if anything was added since the last one.
    fn take_changes(&self) -> Option<Intervals> {
        self.changed
            .swap(false, Ordering::AcqRel)
            .then(|| self.have.lock().expect("not poisoned").clone())
    }
}

/// The missing bytes of one file: gaps not yet asked for, handed out as
/// ranges of at most `max_chunk`, and the ranges in flight. When nothing is
/// left to hand out, an idle connection takes over the end of the range
/// with the most left, if that pays ([`Work::splittable`]): so a file's last
/// connections finish together, without cutting its end into small ranges.
struct Work {
    gaps: VecDeque<(u64, u64)>,
    max_chunk: u64,
    active: Vec<Arc<Active>>,
}

impl Work {
    fn new(gaps: Vec<(u64, u64)>, max_chunk: u64) -> Self {
        Self {
            gaps: gaps.into(),
            max_chunk: max_chunk.max(1),
            active: Vec::new(),
        }
    }

    /// What a connection could still take.
    fn left(&self, latency: &Latency) -> Left {
        let in_flight: u64 = self.active.iter().map(|a| a.remaining()).sum();
        let unassigned: u64 = self.gaps.iter().map(|(s, e)| e - s).sum();
        if unassigned > 0 || self.splittable(latency, None).is_some() {
            Left::Bytes(unassigned + in_flight)
        } else if in_flight > 0 {
            Left::InFlight
        } else {
            Left::Nothing
        }
    }

    /// The next range: the next piece of the first gap (a gap's last piece
    /// is never cut into a sliver), else the end of a range in flight other
    /// than `own`.
    fn next(&mut self, latency: &Latency, own: Option<&Arc<Active>>) -> Option<Arc<Active>> {
        let range = match self.gaps.pop_front() {
            Some((start, end)) => {
                let want = jittered(self.max_chunk, start);
                let take = if end - start <= want + want / 2 {
                    end - start
                } else {
                    want
                };
                if start + take < end {
                    self.gaps.push_front((start + take, end));
                }
                Active::new(start, start + take)
            }
            None => {
                let (victim, share) = self.splittable(latency, own)?;
                let (from, end) = victim.split(share)?;
                Active::new(from, end)
            }
        };
        let range = Arc::new(range);
        self.active.push(range.clone());
        Some(range)
    }

    fn finished(&mut self, range: &Arc<Active>) {
        self.active.retain(|a| !Arc::ptr_eq(a, range));
    }

    /// The range in flight with the most left, and the share of its end to
    /// take so that both connections finish together: the new one first
    /// waits a request's latency `l`, so at rate `r` it takes
    /// `(remaining - r·l) / 2`. `None` when that share is too small.
    fn splittable(
        &self,
        latency: &Latency,
        own: Option<&Arc<Active>>,
    ) -> Option<(&Arc<Active>, u64)> {
        let (victim, rate) = self
            .active
            .iter()
            .filter(|a| own.is_none_or(|own| !Arc::ptr_eq(a, own)))
            .filter_map(|a| Some((a, a.rate()?)))
            .max_by_key(|(a, _)| a.remaining())?;
        let waited = rate * latency.get().as_secs_f64();
        let share = ((victim.remaining() as f64 - waited) / 2.0).max(0.0) as u64;
        (share >= MIN_SPLIT).then_some((victim, share))
    }
}

/// Between half and all of `max_chunk`, varied by `start`. Connections that
/// share a link receive at the same rate: with ranges of one size they would
/// all finish at once, and all wait out the next request's latency together,
/// leaving the link idle. Sizes that differ spread those waits out.
fn jittered(max_chunk: u64, start: u64) -> u64 {
    // splitmix64: a fixed, well-spread function of the offset.
    let mut z = start.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let half = (max_chunk / 2).max(1);
    half + z % (max_chunk - half + 1)
}

/// What is left of a file for another connection.
#[derive(Debug, PartialEq, Eq)]
enum Left {
    /// Bytes to take (all that is left of the file, in flight or not).
    Bytes(u64),
    /// Only ranges in flight, none worth splitting now.
    InFlight,
    Nothing,
}

/// How often an idle connection looks again for a range worth splitting.
const RECHECK: Duration = Duration::from_millis(20);

/// Shares of a range smaller than this are not split off.
const MIN_SPLIT: u64 = 256 << 10;

/// A range in flight: the next byte to arrive and where it stops, which a
/// split moves; and how fast it arrives.
struct Active {
    bounds: Mutex<(u64, u64)>,
    arriving: Mutex<Option<(Instant, u64)>>,
}

impl Active {
    fn new(start: u64, end: u64) -> Self {
        Self {
            bounds: Mutex::new((start, end)),
            arriving: Mutex::new(None),
        }
    }

    fn bounds(&self) -> (u64, u64) {
        *self.bounds.lock().expect("not poisoned")
    }

    fn remaining(&self) -> u64 {
        let (next, end) = self.bounds();
        end - next
    }

    /// The response's first byte is on its way.
    fn started(&self) {
        *self.arriving.lock().expect("not poisoned") = Some((Instant::now(), 0));
    }

    /// Bytes per second since the response began, once it has for a while.
    fn rate(&self) -> Option<f64> {
        let (since, bytes) = (*self.arriving.lock().expect("not poisoned"))?;
        let elapsed = since.elapsed().as_secs_f64();
        (elapsed > 0.01 && bytes > 0).then(|| bytes as f64 / elapsed)
    }

    /// `n` bytes arrived: how many of them are still this range's, and
    /// where it stops now.
    fn receive(&self, n: u64) -> (u64, u64) {
        let mut bounds = self.bounds.lock().expect("not poisoned");
        let keep = n.min(bounds.1 - bounds.0);
        bounds.0 += keep;
        if let Some((_, bytes)) = self.arriving.lock().expect("not poisoned").as_mut() {
            *bytes += keep;
        }
        (keep, bounds.1)
    }

    /// Whether what is left would arrive within twice `wait` at the rate
    /// so far (or is the last 64 kB). Twice: the rate is an average since
    /// the range began, and a connection speeds up when others end.
    fn ends_within(&self, wait: Duration) -> bool {
        let lead = self
            .rate()
            .map_or(0.0, |rate| rate * wait.as_secs_f64() * 2.0);
        self.remaining() <= (lead as u64).max(64 << 10)
    }

    /// Gives away the last `share` bytes of what is left: `[end - share, end)`.
    fn split(&self, share: u64) -> Option<(u64, u64)> {
        let mut bounds = self.bounds.lock().expect("not poisoned");
        let (next, end) = *bounds;
        // Bytes may have arrived since the share was worked out.
        (share > 0 && end - next > share).then(|| {
            bounds.1 = end - share;
            (end - share, end)
        })
    }
}

/// The time from asking for a range to its response, as last measured.
#[derive(Default)]
struct Latency(AtomicU64);

impl Latency {
    fn observe(&self, took: Duration) {
        self.0.store(took.as_micros() as u64, Ordering::Relaxed);
    }

    fn get(&self) -> Duration {
        Duration::from_micros(self.0.load(Ordering::Relaxed))
    }
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
    /// Bytes on disk when the attempt started, and recorded since.
    at_start: AtomicU64,
    recorded: AtomicU64,
    /// Connections this file holds now.
    turns: AtomicUsize,
}

/// A turn counted in [`Progress::turns_held`] while it lives.
struct HeldTurn<'a>(&'a AtomicUsize);

impl Drop for HeldTurn<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Progress {
    fn new(file: HubFile, sink: Option<EventSink>) -> Self {
        Self {
            file,
            sink,
            origin: Instant::now(),
            last_activity_ms: AtomicU64::new(0),
            at_start: AtomicU64::new(0),
            recorded: AtomicU64::new(0),
            turns: AtomicUsize::new(0),
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

    fn hold_turn(&self) -> HeldTurn<'_> {
        self.turns.fetch_add(1, Ordering::AcqRel);
        HeldTurn(&self.turns)
    }

    fn turns_held(&self) -> usize {
        self.turns.load(Ordering::Acquire)
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed));
        self.origin.elapsed().saturating_sub(last)
    }

    fn started(&self, size: u64, resumed_from: u64) {
        self.touch();
        self.at_start.store(resumed_from, Ordering::Relaxed);
        self.recorded.store(resumed_from, Ordering::Relaxed);
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

    /// `total` bytes are now recorded on disk.
    fn recorded(&self, total: u64) {
        self.recorded.store(total, Ordering::Relaxed);
    }

    /// Bytes recorded during this attempt.
    fn recorded_gain(&self) -> u64 {
        self.recorded
            .load(Ordering::Relaxed)
            .saturating_sub(self.at_start.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// Every range `Work` hands out while none is in flight.
    fn cut(gaps: Vec<(u64, u64)>, max_chunk: u64) -> Vec<(u64, u64)> {
        let mut w = Work::new(gaps, max_chunk);
        let latency = Latency::default();
        std::iter::from_fn(|| {
            let r = w.next(&latency, None)?;
            w.finished(&r);
            Some(r.bounds())
        })
        .collect()
    }

    #[test]
    fn ranges_vary_in_size_cover_every_byte_once_and_leave_no_slivers() {
        // Small files are one range.
        assert_eq!(cut(vec![(0, 5_000)], 16 * MIB), vec![(0, 5_000)]);
        // A large file: ranges of half to all of the largest size (the last
        // may take what would have been a sliver), in order, every byte once.
        let size = 500 * MIB + 12345;
        let ranges = cut(vec![(0, size)], 16 * MIB);
        assert_eq!(ranges[0].0, 0);
        assert_eq!(ranges.last().unwrap().1, size);
        assert!(ranges.windows(2).all(|w| w[0].1 == w[1].0));
        let lens: Vec<u64> = ranges.iter().map(|(s, e)| e - s).collect();
        let (last, most) = lens.split_last().unwrap();
        assert!(
            most.iter().all(|l| (8 * MIB..=16 * MIB).contains(l)),
            "{lens:?}"
        );
        assert!((4 * MIB..=24 * MIB).contains(last), "{lens:?}");
        // Not all of one size, so that connections do not finish in step.
        let mut distinct = most.to_vec();
        distinct.sort();
        distinct.dedup();
        assert!(distinct.len() > most.len() / 2, "{lens:?}");
        // Only the gaps are asked for.
        assert_eq!(
            cut(vec![(0, MIB), (5 * MIB, 6 * MIB + 10)], 16 * MIB),
            vec![(0, MIB), (5 * MIB, 6 * MIB + 10)]
        );
    }

    #[test]
    fn the_next_range_is_asked_for_two_latencies_before_the_current_ends() {
        let range = Active::new(0, 8 * MIB);
        // Nothing is known of its speed: only the last 64 kB count as the end.
        assert!(!range.ends_within(Duration::from_secs(1)));
        range.started();
        range.receive(MIB);
        std::thread::sleep(Duration::from_millis(20));
        let rate = range.rate().unwrap();
        // What is left (7 MiB) takes 7 MiB / rate: a wait of over half that
        // starts the next request now, a shorter one not.
        let rest = 7.0 * MIB as f64 / rate;
        assert!(range.ends_within(Duration::from_secs_f64(rest * 0.6)));
        assert!(!range.ends_within(Duration::from_secs_f64(rest * 0.4)));
    }

    #[test]
    fn an_idle_connection_takes_half_of_a_slow_range_only_when_it_pays() {
        let mut w = Work::new(vec![(0, 8 * MIB)], 16 * MIB);
        let latency = Latency::default();
        let first = w.next(&latency, None).unwrap();
        // Nothing is known of its speed yet: no split.
        assert_eq!(w.left(&latency), Left::InFlight);
        first.started();
        first.receive(MIB);
        std::thread::sleep(Duration::from_millis(20));
        // A request that waits no time: the new connection takes half.
        assert_eq!(w.left(&latency), Left::Bytes(7 * MIB));
        let second = w.next(&latency, None).unwrap();
        assert_eq!(second.bounds(), (MIB + 7 * MIB / 2, 8 * MIB));
        assert_eq!(first.bounds(), (MIB, MIB + 7 * MIB / 2));
        // Bytes past the new end are not the first range's any more.
        assert_eq!(first.receive(4 * MIB), (7 * MIB / 2, MIB + 7 * MIB / 2));
        w.finished(&first);
        // With a wait, the new connection takes less than half: what the
        // old one receives meanwhile is its head start.
        second.started();
        second.receive(MIB / 2);
        std::thread::sleep(Duration::from_millis(20));
        let rate = second.rate().unwrap();
        latency.observe(Duration::from_secs_f64(MIB as f64 / rate));
        let (_, share) = w.splittable(&latency, None).unwrap();
        let left = 3 * MIB;
        let expected = (left as f64 - rate * latency.get().as_secs_f64()) / 2.0;
        assert!(
            (share as f64 - expected).abs() < 1e4 && share < left / 2 - MIB / 4,
            "{share}"
        );
        // A wait as long as the rest takes: not worth a request.
        latency.observe(Duration::from_secs(3600));
        assert_eq!(w.left(&latency), Left::InFlight);
        assert!(w.next(&latency, None).is_none());
        w.finished(&second);
        assert_eq!(w.left(&latency), Left::Nothing);
    }
}
