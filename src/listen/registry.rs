//! The open connections and their state: requests in flight, when each
//! went idle, and which one to evict when the cap is reached.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio::time::Instant;

/// Every open connection, so that the accept loop can close an idle one.
#[derive(Default)]
pub(super) struct Registry {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Conn>>>,
}

impl Registry {
    /// A new connection, idle since now.
    pub(super) fn add(&self) -> Arc<Conn> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            id,
            state: Mutex::new(ConnState {
                active: 0,
                idle_since: Instant::now(),
                head_since: None,
                evicted: false,
                write_blocked_since: None,
            }),
            changed: Notify::new(),
        });
        self.open
            .lock()
            .expect("not poisoned")
            .insert(id, conn.clone());
        conn
    }

    /// Forgets a closed connection.
    pub(super) fn remove(&self, id: u64) {
        self.open.lock().expect("not poisoned").remove(&id);
    }

    /// Marks for closing the connection with no request in flight that has
    /// been quiet longest (one that never started a request before one in
    /// the middle of sending its headers). Returns whether there was one.
    pub(super) fn evict_idlest(&self) -> bool {
        let open = self.open.lock().expect("not poisoned");
        let mut best: Option<(&Arc<Conn>, (bool, Instant))> = None;
        for conn in open.values() {
            let state = conn.state.lock().expect("not poisoned");
            if state.active > 0 || state.evicted {
                continue;
            }
            let rank = match state.head_since {
                None => (false, state.idle_since),
                Some(since) => (true, since),
            };
            if best.as_ref().is_none_or(|(_, r)| rank < *r) {
                best = Some((conn, rank));
            }
        }
        match best {
            Some((conn, _)) => {
                let mut state = conn.state.lock().expect("not poisoned");
                // It may have received a request since it was ranked.
                state.evicted = state.active == 0;
                drop(state);
                conn.changed.notify_one();
                true
            }
            None => false,
        }
    }
}

/// One open connection: its id in the registry and its state, shared by
/// its task, its watchdog and the registry.
pub(super) struct Conn {
    pub(super) id: u64,
    pub(super) state: Mutex<ConnState>,
    /// Wakes the watchdog when the state changes.
    pub(super) changed: Notify,
}

/// What the watchdog and eviction look at.
pub(super) struct ConnState {
    /// Requests in flight (received, response not yet fully sent).
    pub(super) active: usize,
    /// When the last response ended, or the connection opened.
    pub(super) idle_since: Instant,
    /// When the first byte of the next request arrived.
    pub(super) head_since: Option<Instant>,
    /// Asked to close to make room for another connection.
    pub(super) evicted: bool,
    /// Since when the socket has refused more of a response (the client is
    /// not reading); `None` while writes go through.
    pub(super) write_blocked_since: Option<Instant>,
}

impl Conn {
    /// Changes the state and wakes the watchdog.
    pub(super) fn update(&self, f: impl FnOnce(&mut ConnState)) {
        f(&mut self.state.lock().expect("not poisoned"));
        self.changed.notify_one();
    }
}

/// A request in flight; ends when dropped.
pub(super) struct Active(Arc<Conn>);

impl Active {
    /// Counts a request in flight on `conn` until dropped.
    pub(super) fn start(conn: Arc<Conn>) -> Self {
        conn.update(|s| {
            s.active += 1;
            s.head_since = None;
            // A request arrived: whatever asked it to make room was too late.
            s.evicted = false;
        });
        Self(conn)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.update(|s| {
            s.active -= 1;
            s.idle_since = Instant::now();
            s.head_since = None;
        });
    }
}
