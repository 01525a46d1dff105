//! Range requests: one `GET` with a `Range` per range (redirects followed,
//! the token only for the endpoint's own origin), its answer checked, and
//! its body streamed to where it belongs in the partial file and recorded in
//! the ledger. Near a range's end the connection asks for its next one, so
//! that the link does not idle while a request waits out its latency.

use std::io::{self, SeekFrom};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::{StatusCode, Url};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use super::ledger::Ledger;
use super::progress::Progress;
use super::schedule::{Active, Latency};
use crate::hub::error::HubError;
use crate::hub::file::HubFile;
use crate::hub::native::connections::Connections;
use crate::hub::native::remote::{self, Redirect};
use crate::hub::native::token::Secret;
use crate::hub::retry::Failure;

/// Body bytes gathered before each write: few writes, and each burst of
/// work on the runtime's thread stays small.
const WRITE_BUFFER: usize = 1 << 20;

/// Redirects a range request follows (the CDN's own, if any).
const MAX_REDIRECTS: usize = 5;

/// What every range of one attempt shares: where to ask, with what, and
/// where the bytes go.
pub(super) struct RangeClient<'a> {
    pub http: &'a reqwest::Client,
    pub connections: &'a Connections,
    pub token: Option<&'a Secret>,
    /// The endpoint as configured, for error messages.
    pub hub_endpoint: &'a str,
    /// The endpoint's URL: only its origin gets the token.
    pub endpoint: &'a Url,
    /// Where the bytes are.
    pub source: &'a Url,
    pub file: &'a HubFile,
    /// The partial file.
    pub path: &'a Path,
    pub size: u64,
    pub ledger: &'a Ledger<'a>,
    pub progress: &'a Progress,
    pub latency: &'a Latency,
}

impl<'a> RangeClient<'a> {
    fn protocol(&self, reason: String) -> Failure<HubError> {
        Failure::Fatal(HubError::Protocol {
            file: self.file.clone(),
            reason,
        })
    }

    /// Asks for one range and checks that the answer is that range.
    pub(super) async fn ask(&self, (start, end): (u64, u64)) -> Answer {
        let last = end - 1;
        let asked = Instant::now();
        let response = self.get_range(start, last).await?;
        self.latency.observe(asked.elapsed());
        let status = response.status();
        let whole = status == StatusCode::OK && start == 0 && end == self.size;
        let answered = response
            .headers()
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("bytes "))
            .and_then(|v| v.split(['-', '/']).next())
            .and_then(|v| v.parse::<u64>().ok());
        if !whole && (status != StatusCode::PARTIAL_CONTENT || answered != Some(start)) {
            return Err(self.protocol(format!(
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
    pub(super) async fn stream(
        &'a self,
        range: &Active,
        response: reqwest::Response,
        mut take: impl FnMut() -> Option<Arc<Active>>,
        ahead: &mut Ahead<'a>,
    ) -> Result<(), Failure<HubError>> {
        let (start, end) = range.bounds();
        let fail = write_failure(self.file, self.path, self.size);
        let mut out = tokio::fs::OpenOptions::new()
            .write(true)
            .open(self.path)
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
            self.ledger.add(*written, *written + buffer.len() as u64);
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
                return Err(self.protocol(format!(
                    "asked for {} bytes at {start}, got more",
                    end - start
                )));
            }
            let (keep, stop) = range.receive(piece.len() as u64);
            received += piece.len() as u64;
            // Split, and this connection's part is in: the rest of its
            // response is another connection's.
            let cut = stop < end && received >= stop;
            self.progress.advance(keep);
            self.connections.received(keep);
            buffer.extend_from_slice(&piece[..keep as usize]);
            if buffer.len() >= WRITE_BUFFER || cut {
                write(&mut buffer, &mut written).await.map_err(&fail)?;
            }
            if cut {
                break None;
            }
            if matches!(ahead, Ahead::Idle) && range.ends_within(self.latency.get()) {
                if let Some(next) = take() {
                    let asking = Box::pin(self.ask(next.bounds()));
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
        start: u64,
        end: u64,
    ) -> Result<reqwest::Response, Failure<HubError>> {
        let (file, endpoint) = (self.file, self.endpoint);
        let mut url = self.source.clone();
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
                self.hub_endpoint,
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

pub(super) type Answer = Result<reqwest::Response, Failure<HubError>>;

/// The range a connection asked for before its current one ended.
pub(super) enum Ahead<'a> {
    Idle,
    Asking(
        Arc<Active>,
        std::pin::Pin<Box<dyn std::future::Future<Output = Answer> + Send + 'a>>,
    ),
    Answered(Arc<Active>, Answer),
}

impl Ahead<'_> {
    pub(super) fn is_asking(&self) -> bool {
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

/// A failed write to the partial file: final, and a full disk says so.
pub(super) fn write_failure(
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
