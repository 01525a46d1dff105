//! Progress reporting for one attempt: [`HubEvent`]s as bytes arrive, and
//! when bytes last arrived, for the stall watchdog.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::hub::event::{EventSink, HubEvent};
use crate::hub::file::HubFile;

/// Reports a transfer as [`HubEvent`]s and remembers when bytes last
/// arrived, for the stall watchdog.
pub(super) struct Progress {
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
pub(super) struct HeldTurn<'a>(&'a AtomicUsize);

impl Drop for HeldTurn<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Progress {
    pub(super) fn new(file: HubFile, sink: Option<EventSink>) -> Self {
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

    pub(super) fn touch(&self) {
        self.last_activity_ms
            .store(self.origin.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub(super) fn hold_turn(&self) -> HeldTurn<'_> {
        self.turns.fetch_add(1, Ordering::AcqRel);
        HeldTurn(&self.turns)
    }

    pub(super) fn turns_held(&self) -> usize {
        self.turns.load(Ordering::Acquire)
    }

    pub(super) fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed));
        self.origin.elapsed().saturating_sub(last)
    }

    pub(super) fn started(&self, size: u64, resumed_from: u64) {
        self.touch();
        self.at_start.store(resumed_from, Ordering::Relaxed);
        self.recorded.store(resumed_from, Ordering::Relaxed);
        self.emit(HubEvent::Started {
            file: self.file.clone(),
            size,
            resumed_from,
        });
    }

    pub(super) fn advance(&self, bytes: u64) {
        self.touch();
        self.emit(HubEvent::Advanced {
            file: self.file.clone(),
            bytes,
        });
    }

    /// `total` bytes are now recorded on disk.
    pub(super) fn recorded(&self, total: u64) {
        self.recorded.store(total, Ordering::Relaxed);
    }

    /// Bytes recorded during this attempt.
    pub(super) fn recorded_gain(&self) -> u64 {
        self.recorded
            .load(Ordering::Relaxed)
            .saturating_sub(self.at_start.load(Ordering::Relaxed))
    }
}
