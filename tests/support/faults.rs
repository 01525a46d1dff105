//! The faults a test asks the test Hub for: failures, drops, corruption, throttling, a shared link and a gate.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

/// Holds content requests until `want` different files are waiting at once.
/// Reaching it proves those downloads overlapped, whatever the timing.
pub struct Gate {
    pub(super) want: usize,
    pub(super) waiting: Mutex<HashSet<String>>,
    pub(super) reached: watch::Sender<bool>,
    pub(super) timeout: Duration,
}

impl Gate {
    pub fn reached(&self) -> bool {
        *self.reached.borrow()
    }
}

pub struct BreakPlan {
    pub(super) skip: usize,
    pub(super) bytes: u64,
    pub(super) times: usize,
}

#[derive(Default)]
pub struct Faults {
    /// The next N requests answer 503.
    pub fail_next: AtomicUsize,
    pub retry_after: Mutex<Option<String>>,
    /// Per file: the next N requests answer 503, with this `Retry-After`.
    pub fail_file: Mutex<HashMap<String, (usize, Option<String>)>>,
    /// LFS files answer with a redirect to this other server (a CDN), as the
    /// Hub does: the Hub's metadata headers, and `Location` on another origin.
    pub redirect_lfs_to: Mutex<Option<String>>,
    /// Emulates a gated repo: 401 GatedRepo without a token, 403 with another.
    pub require_token: Mutex<Option<String>>,
    /// Per file: break connections mid-body.
    pub drops: Mutex<HashMap<String, BreakPlan>>,
    /// Per file: flip a byte in this many responses.
    pub corrupt: Mutex<HashMap<String, usize>>,
    /// Per-response bandwidth cap in bytes/s, and latency before each answer.
    pub throttle: Mutex<Option<(f64, Duration)>>,
    /// A bandwidth cap shared by every response: the link.
    pub link: Mutex<Option<Arc<Link>>>,
    pub gate: Mutex<Option<Arc<Gate>>>,
}

impl Faults {
    pub fn fail_next(&self, n: usize, retry_after: Option<&str>) {
        *self.retry_after.lock().unwrap() = retry_after.map(str::to_string);
        self.fail_next.store(n, Ordering::SeqCst);
    }
    /// The next `n` requests for `file` answer 503 (0 clears it).
    pub fn fail_file(&self, file: &str, n: usize, retry_after: Option<&str>) {
        self.fail_file
            .lock()
            .unwrap()
            .insert(file.to_string(), (n, retry_after.map(str::to_string)));
    }
    /// Redirects LFS files to `cdn`, another origin serving the same files.
    pub fn redirect_lfs_to(&self, cdn: &str) {
        *self.redirect_lfs_to.lock().unwrap() = Some(cdn.trim_end_matches('/').to_string());
    }
    /// Breaks the next `times` content responses for `file` after `bytes` bytes.
    pub fn drop_after(&self, file: &str, bytes: u64, times: usize) {
        self.drop_nth(file, 0, bytes, times);
    }
    /// Lets `skip` content responses for `file` through whole, then breaks
    /// `times` of them after `bytes` bytes.
    pub fn drop_nth(&self, file: &str, skip: usize, bytes: u64, times: usize) {
        self.drops
            .lock()
            .unwrap()
            .insert(file.to_string(), BreakPlan { skip, bytes, times });
    }
    pub fn corrupt(&self, file: &str, times: usize) {
        self.corrupt.lock().unwrap().insert(file.to_string(), times);
    }
    pub fn throttle(&self, bytes_per_sec: f64, latency: Duration) {
        *self.throttle.lock().unwrap() = Some((bytes_per_sec, latency));
    }
    /// Caps all responses together at `bytes_per_sec`, as one link would.
    pub fn link(&self, bytes_per_sec: f64) {
        *self.link.lock().unwrap() = Some(Arc::new(Link {
            rate: bytes_per_sec,
            free_at: Mutex::new(tokio::time::Instant::now()),
        }));
    }
    pub fn gate(&self, want: usize, timeout: Duration) -> Arc<Gate> {
        let gate = Arc::new(Gate {
            want,
            waiting: Mutex::default(),
            reached: watch::channel(false).0,
            timeout,
        });
        *self.gate.lock().unwrap() = Some(gate.clone());
        gate
    }

    pub(super) fn take(map: &Mutex<HashMap<String, usize>>, file: &str) -> bool {
        let mut map = map.lock().unwrap();
        match map.get_mut(file) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }
}

/// A bandwidth cap shared by all responses: each piece reserves its time on
/// the link, first come first served, and is sent when that time has passed.
pub struct Link {
    pub(super) rate: f64,
    pub(super) free_at: Mutex<tokio::time::Instant>,
}

impl Link {
    pub(super) fn reserve(&self, bytes: usize) -> tokio::time::Instant {
        let mut free_at = self.free_at.lock().unwrap();
        let start = (*free_at).max(tokio::time::Instant::now());
        *free_at = start + Duration::from_secs_f64(bytes as f64 / self.rate);
        *free_at
    }
}
