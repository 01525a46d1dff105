//! Reading a request body whole, within a size, a time limit and a
//! minimum rate.

use std::collections::VecDeque;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap};
use bytes::BytesMut;
use futures::StreamExt;
use tokio::time::{sleep_until, Instant};

use super::api_error::ApiError;

/// What a body must keep to.
#[derive(Clone, Copy, Debug)]
pub(super) struct BodyLimits {
    /// The most bytes.
    pub(super) max: usize,
    /// The whole body arrives within this.
    pub(super) timeout: Duration,
    /// Bytes a second over every window of `grace`, the first included (0:
    /// none), so that a client trickling or stalling its body cannot hold an
    /// upload place for the whole `timeout`.
    pub(super) min_rate: u64,
    pub(super) grace: Duration,
}

/// 413 at once for a body that says it is too long (`Content-Length`), so
/// that a client waiting on `Expect: 100-continue` is told before it sends.
pub(super) fn declared_length_fits(headers: &HeaderMap, max: usize) -> Result<(), ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(length) if length > max as u64 => Err(ApiError::too_large(max)),
        _ => Ok(()),
    }
}

/// The whole body, within `limits`: a client trickling its body cannot hold
/// a connection, an upload place or a shutdown.
pub(super) async fn read_body(body: Body, limits: BodyLimits) -> Result<Bytes, ApiError> {
    let start = Instant::now();
    let deadline = start + limits.timeout;
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::new();
    let mut pace = Pace::new(start, limits.min_rate, limits.grace);
    loop {
        let too_slow_at = pace.too_slow_at(buf.len());
        let wake = too_slow_at.map_or(deadline, |at| at.min(deadline));
        tokio::select! {
            // What has arrived is read first, even at the deadline.
            biased;
            chunk = stream.next() => match chunk {
                None => return Ok(buf.freeze()),
                Some(Err(e)) => {
                    return Err(ApiError::invalid(
                        None,
                        format!("the request body could not be read: {e}"),
                    ))
                }
                Some(Ok(chunk)) => {
                    if buf.len() + chunk.len() > limits.max {
                        return Err(ApiError::too_large(limits.max));
                    }
                    buf.extend_from_slice(&chunk);
                    pace.arrived(Instant::now(), buf.len());
                }
            },
            () = sleep_until(wake) => {
                return Err(if too_slow_at.is_some_and(|at| at < deadline) {
                    ApiError::body_too_slow(buf.len(), start.elapsed(), limits.min_rate, limits.grace)
                } else {
                    ApiError::body_timeout(limits.timeout)
                });
            }
        }
    }
}

/// The minimum rate over a sliding window of `grace`: from `grace` after
/// the start, every `grace` must bring `min_rate × grace` bytes, so that a
/// burst at the start buys no time to stall in.
struct Pace {
    start: Instant,
    window: Duration,
    /// Bytes each window must bring (0: no minimum).
    need: usize,
    /// When the body's total reached each value, for the totals that can
    /// still matter (above the total so far minus `need`); oldest first.
    marks: VecDeque<(Instant, usize)>,
}

impl Pace {
    fn new(start: Instant, min_rate: u64, window: Duration) -> Self {
        Self {
            start,
            window,
            need: (min_rate as f64 * window.as_secs_f64()) as usize,
            marks: VecDeque::new(),
        }
    }

    fn arrived(&mut self, at: Instant, total: usize) {
        if self.need == 0 {
            return;
        }
        self.marks.push_back((at, total));
        let floor = total.saturating_sub(self.need);
        while self.marks.front().is_some_and(|&(_, t)| t <= floor) {
            self.marks.pop_front();
        }
    }

    /// When, if nothing more arrives, the last window will have brought
    /// too little: the window that starts as the oldest mark that still
    /// matters is passed (or the first one, if the body has not yet brought
    /// `need` in all).
    fn too_slow_at(&self, total: usize) -> Option<Instant> {
        if self.need == 0 {
            return None;
        }
        let since = match self.marks.front() {
            Some(&(at, _)) if total >= self.need => at,
            _ => self.start,
        };
        Some(since + self.window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body that sends `chunks`, each after `every`.
    fn paced(chunks: usize, size: usize, every: Duration) -> Body {
        let stream = futures::stream::iter(0..chunks).then(move |_| async move {
            tokio::time::sleep(every).await;
            Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; size]))
        });
        Body::from_stream(stream)
    }

    fn limits(min_rate: u64) -> BodyLimits {
        BodyLimits {
            max: 4 << 20,
            timeout: Duration::from_secs(60),
            min_rate,
            grace: Duration::from_secs(5),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_under_the_minimum_rate_is_cut_after_the_grace() {
        // 1 KiB a second against a 16 KiB/s minimum: cut at 5 s.
        let started = Instant::now();
        let e = read_body(paced(60, 1024, Duration::from_secs(1)), limits(16 << 10))
            .await
            .unwrap_err();
        assert_eq!(e.status.as_u16(), 408);
        assert!(e.message.contains("too slowly"), "{}", e.message);
        assert_eq!(started.elapsed().as_secs(), 5);
        // Without a minimum, the same body arrives whole (within the timeout).
        let body = read_body(paced(30, 1024, Duration::from_secs(1)), limits(0))
            .await
            .unwrap();
        assert_eq!(body.len(), 30 * 1024);
        // Fast enough, however long: 32 KiB a second for 40 s.
        let body = read_body(
            paced(40, 32 << 10, Duration::from_secs(1)),
            limits(16 << 10),
        )
        .await
        .unwrap();
        assert_eq!(body.len(), 40 * (32 << 10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_buys_no_time_to_stall_in() {
        // 2 MiB at once, then a byte every 4 s: what came first does not
        // carry the body past a window that brings too little.
        let burst = futures::stream::once(async {
            Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 2 << 20]))
        });
        let trickle = futures::stream::iter(0..30).then(|_| async {
            tokio::time::sleep(Duration::from_secs(4)).await;
            Ok::<_, std::io::Error>(Bytes::from_static(b"x"))
        });
        let started = Instant::now();
        let e = read_body(Body::from_stream(burst.chain(trickle)), limits(16 << 10))
            .await
            .unwrap_err();
        assert_eq!(e.status.as_u16(), 408);
        assert!(e.message.contains("too slowly"), "{}", e.message);
        // The window after the burst ends 5 s on, however large the burst.
        assert_eq!(started.elapsed().as_secs(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn the_timeout_and_the_size_still_hold() {
        let mut l = limits(0);
        l.timeout = Duration::from_secs(10);
        let e = read_body(paced(60, 1, Duration::from_secs(1)), l)
            .await
            .unwrap_err();
        assert_eq!(e.status.as_u16(), 408);
        assert!(e.message.contains("within 10 s"), "{}", e.message);
        let e = read_body(paced(5, 1 << 20, Duration::ZERO), limits(0))
            .await
            .unwrap_err();
        assert_eq!(e.status.as_u16(), 413);
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, (2u64 << 20).into());
        assert_eq!(
            declared_length_fits(&headers, 1 << 20)
                .unwrap_err()
                .status
                .as_u16(),
            413
        );
        assert!(declared_length_fits(&headers, 4 << 20).is_ok());
    }
}
