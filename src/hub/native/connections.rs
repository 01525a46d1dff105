//! The connections all downloads of one client share, sized to what the link
//! gives.
//!
//! A range pays the link's latency before its first byte. With only as many
//! connections as the link's bandwidth needs, that latency leaves the link
//! idle; with more, the others fill it. How many more depends on the link, so
//! the count is measured rather than fixed: it starts at `initial`, and while
//! every connection is busy it grows by half for as long as each step still
//! raises the throughput by [`GAIN`]. A step that lowered it by as much is
//! given back.
//! It never passes `cap`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// How long throughput is measured at one connection count.
const WINDOW: Duration = Duration::from_millis(500);

/// The least gain for which a step counts as worth it.
const GAIN: f64 = 1.05;

pub(crate) struct Connections {
    cap: usize,
    turns: Mutex<Turns>,
    /// Body bytes received by all transfers.
    received: AtomicU64,
    probe: Mutex<Probe>,
}

/// Free connections, and who waits for one: the smallest priority first,
/// then the earliest. A semaphore that serves in arrival order would make a
/// small file wait behind every range of the large ones.
#[derive(Default)]
struct Turns {
    free: usize,
    /// Connections to drop as they come back, after a step that did not pay.
    retire: usize,
    waiting: BinaryHeap<Reverse<(u64, u64)>>,
    wakers: std::collections::HashMap<u64, oneshot::Sender<()>>,
    next: u64,
}

#[derive(Debug)]
struct Probe {
    granted: usize,
    /// When the current window began, and the bytes received by then.
    window: Option<(Instant, u64)>,
    /// The throughput before the last step, and that step's size.
    last: Option<(f64, usize)>,
    settled: bool,
}

/// One connection's turn; dropping it hands the turn on.
pub(crate) struct Permit<'a> {
    connections: &'a Connections,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.connections.release();
    }
}

/// A wait for a turn. Dropped before the turn was taken (the download was
/// cancelled), it hands on a turn that was already given to it.
struct Wait<'a> {
    connections: &'a Connections,
    id: u64,
    turn: oneshot::Receiver<()>,
    done: bool,
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.turn.close();
        if self.turn.try_recv().is_ok() {
            self.connections.release();
        } else {
            self.connections.turns().wakers.remove(&self.id);
        }
    }
}

impl Connections {
    pub(crate) fn new(initial: usize, cap: usize) -> Self {
        let cap = cap.max(1);
        let initial = initial.clamp(1, cap);
        Self {
            cap,
            turns: Mutex::new(Turns {
                free: initial,
                ..Turns::default()
            }),
            received: AtomicU64::new(0),
            probe: Mutex::new(Probe {
                granted: initial,
                window: None,
                last: None,
                settled: initial == cap,
            }),
        }
    }

    fn turns(&self) -> std::sync::MutexGuard<'_, Turns> {
        self.turns.lock().expect("not poisoned")
    }

    /// Waits for a connection's turn. Of those waiting, the smallest
    /// `priority` goes first, then the earliest.
    pub(crate) async fn acquire(&self, priority: u64) -> Permit<'_> {
        let mut wait = {
            let mut turns = self.turns();
            if turns.free > 0 && turns.waiting.is_empty() {
                turns.free -= 1;
                return Permit { connections: self };
            }
            let id = turns.next;
            turns.next += 1;
            let (wake, turn) = oneshot::channel();
            turns.waiting.push(Reverse((priority, id)));
            turns.wakers.insert(id, wake);
            Wait {
                connections: self,
                id,
                turn,
                done: false,
            }
        };
        // The sender is only dropped after it sent, or with `wait` closed.
        let _ = (&mut wait.turn).await;
        wait.done = true;
        Permit { connections: self }
    }

    /// A turn is over: the best waiter gets it, else it is free again.
    fn release(&self) {
        let mut turns = self.turns();
        if turns.retire > 0 {
            turns.retire -= 1;
            return;
        }
        while let Some(Reverse((_, id))) = turns.waiting.pop() {
            if let Some(wake) = turns.wakers.remove(&id) {
                if wake.send(()).is_ok() {
                    return;
                }
            }
        }
        turns.free += 1;
    }

    fn add(&self, n: usize) {
        for _ in 0..n {
            self.release();
        }
    }

    fn retire(&self, n: usize) {
        let mut turns = self.turns();
        let now = n.min(turns.free);
        turns.free -= now;
        turns.retire += n - now;
    }

    fn all_busy(&self) -> bool {
        self.turns().free == 0
    }

    /// The most connections there will ever be.
    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    /// How many connections may run now.
    #[cfg(test)]
    fn granted(&self) -> usize {
        self.probe.lock().expect("not poisoned").granted
    }

    /// `bytes` more arrived; now and then this judges the last window.
    pub(crate) fn received(&self, bytes: u64) {
        let total = self.received.fetch_add(bytes, Ordering::Relaxed) + bytes;
        // Never wait for the lock: another transfer is judging the window.
        if let Ok(mut probe) = self.probe.try_lock() {
            self.judge(&mut probe, Instant::now(), total);
        }
    }

    fn judge(&self, probe: &mut Probe, now: Instant, total: u64) {
        if probe.settled {
            return;
        }
        // Only a window in which every connection was busy says anything
        // about the link; one with idle connections says the work ran short.
        let busy = self.all_busy();
        let Some((start, at_start)) = probe.window else {
            if busy {
                probe.window = Some((now, total));
            }
            return;
        };
        let elapsed = now.duration_since(start);
        if elapsed < WINDOW {
            return;
        }
        probe.window = busy.then_some((now, total));
        if !busy {
            return;
        }
        let rate = (total - at_start) as f64 / elapsed.as_secs_f64();
        if let Some((before, step)) = probe.last {
            if rate < before * GAIN {
                probe.settled = true;
                if rate * GAIN < before {
                    // The step cost throughput: give it back.
                    probe.granted -= step;
                    self.retire(step);
                }
                tracing::debug!(
                    connections = probe.granted,
                    rate,
                    "connection count settled"
                );
                return;
            }
        }
        let step = (probe.granted / 2).max(1).min(self.cap - probe.granted);
        probe.granted += step;
        probe.last = Some((rate, step));
        probe.settled = probe.granted == self.cap;
        self.add(step);
        tracing::debug!(connections = probe.granted, rate, "more connections");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives the probe with a made-up link: `rate(n)` bytes per second at
    /// `n` connections, every connection busy.
    fn settle(initial: usize, cap: usize, rate: impl Fn(usize) -> f64) -> usize {
        let c = Connections::new(initial, cap);
        let start = Instant::now();
        let mut now = start;
        let mut total = 0u64;
        let mut held = Vec::new();
        for _ in 0..200 {
            // Keep every connection in use.
            while c.turns().free > 0 {
                c.turns().free -= 1;
                held.push(());
            }
            let n = c.granted();
            now += Duration::from_millis(50);
            total += (rate(n) * 0.05) as u64;
            let mut probe = c.probe.lock().unwrap();
            c.judge(&mut probe, now, total);
        }
        let granted = c.granted();
        let turns = c.turns();
        assert_eq!(
            turns.free + held.len() - turns.retire,
            granted,
            "connections and the granted count agree"
        );
        granted
    }

    #[tokio::test]
    async fn turns_go_to_the_smallest_priority_and_survive_cancellation() {
        let c = Connections::new(1, 1);
        let first = c.acquire(5).await;
        let order = Mutex::new(Vec::new());
        let waiter = |p: u64| {
            let (c, order) = (&c, &order);
            async move {
                let _turn = c.acquire(p).await;
                order.lock().unwrap().push(p);
            }
        };
        // A waiter that gives up is skipped.
        let mut cancelled = Box::pin(c.acquire(0));
        assert!(futures::poll!(cancelled.as_mut()).is_pending());
        let waiters = futures::future::join3(waiter(9), waiter(1), waiter(4));
        let release = async {
            tokio::task::yield_now().await;
            drop(cancelled);
            drop(first);
        };
        tokio::join!(waiters, release);
        assert_eq!(*order.lock().unwrap(), vec![1, 4, 9]);
        assert_eq!(c.turns().free, 1, "no turn was lost");
        assert!(c.turns().wakers.is_empty());
    }

    #[test]
    fn grows_while_throughput_rises_and_stops_at_the_link() {
        // 25 MB/s per connection, a 200 MB/s link: 8 already fill it.
        let link = |cap: f64| move |n: usize| (n as f64 * 25e6).min(cap);
        assert_eq!(settle(2, 64, link(200e6)), 13);
        assert_eq!(settle(8, 64, link(200e6)), 12);
        // A fast link: all the way to the cap.
        assert_eq!(settle(8, 32, link(10e9)), 32);
        // A link that gets worse with more connections: the step is undone.
        assert_eq!(settle(8, 64, |n| if n > 8 { 150e6 } else { 200e6 }), 8);
        // Within the noise: kept.
        assert_eq!(settle(8, 64, |n| if n > 8 { 198e6 } else { 200e6 }), 12);
    }
}
