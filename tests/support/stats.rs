//! What the test Hub saw: each request, the bytes sent, the requests in flight.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::Method;
use tokio::sync::watch;

/// What the server saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub file: String,
    pub range: Option<String>,
    /// The `Authorization` header, as received.
    pub authorization: Option<String>,
}

impl Seen {
    /// A request for content, not a HEAD (nor hf-hub's one-byte metadata probe,
    /// which the benchmark's old way makes).
    pub fn is_body(&self) -> bool {
        self.method == Method::GET && self.range.as_deref() != Some("bytes=0-0")
    }
}

pub struct Stats {
    pub seen: Mutex<Vec<Seen>>,
    /// Body bytes actually sent, per file.
    pub sent: Mutex<HashMap<String, u64>>,
    /// Requests whose response has not finished (or been dropped) yet.
    pub(super) in_flight: watch::Sender<usize>,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            seen: Mutex::default(),
            sent: Mutex::default(),
            in_flight: watch::channel(0).0,
        }
    }
}

/// Counts a request as in flight until dropped.
pub(super) struct InFlight(pub(super) Arc<Stats>);

impl InFlight {
    pub(super) fn new(stats: Arc<Stats>) -> Self {
        stats.in_flight.send_modify(|n| *n += 1);
        Self(stats)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.send_modify(|n| *n -= 1);
    }
}

impl Stats {
    /// Waits until every response the server started has ended (one whose
    /// client went away may still be winding down), so that a test does not
    /// count it in its next phase.
    pub async fn quiescent(&self) {
        let mut rx = self.in_flight.subscribe();
        rx.wait_for(|n| *n == 0).await.unwrap();
    }

    pub fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
    pub fn body_requests(&self, file: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.file == file && s.is_body())
            .count()
    }
    /// The byte ranges `[start, end)` that content requests asked for (one
    /// without a `Range` asked for everything).
    pub fn body_ranges(&self) -> Vec<(u64, u64)> {
        let parse = |r: &str| {
            let (a, b) = r.strip_prefix("bytes=")?.split_once('-')?;
            Some((a.parse().ok()?, b.parse::<u64>().ok()? + 1))
        };
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.is_body())
            .map(|s| s.range.as_deref().and_then(parse).unwrap_or((0, u64::MAX)))
            .collect()
    }
    pub fn sent(&self, file: &str) -> u64 {
        self.sent.lock().unwrap().get(file).copied().unwrap_or(0)
    }
    pub fn reset(&self) {
        self.seen.lock().unwrap().clear();
        self.sent.lock().unwrap().clear();
    }
}
