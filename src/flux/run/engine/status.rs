//! What the engine reports: its phase, downloads, weights, memory and counters.

use crate::flux::plan::choice::QuantPlan;
use crate::flux::plan::memory::Sizing;
use crate::hub::{HubEvent, HubFile};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

/// Where loading stands, for readiness reports (`/readyz` sends it as it is).
pub use crate::protocol::Phase;

/// Bytes of one file so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct FileProgress {
    /// Bytes on disk so far.
    pub done: u64,
    /// The file's size in bytes (0 until known).
    pub total: u64,
}

/// A snapshot of the engine's state.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct EngineStatus {
    /// Where loading stands.
    pub phase: Phase,
    /// Keyed `repo/path`.
    pub files: BTreeMap<String, FileProgress>,
    /// Why the last start failed, if it did.
    pub error: Option<String>,
    /// The weights chosen, and why; once the plan is made.
    pub weights: Option<QuantPlan>,
    /// The memory requests are checked against; once the plan is made.
    pub memory: Option<MemoryReport>,
    /// After a failed start that a later attempt may mend (the Hub
    /// unreachable, say): which attempt failed last, and when the next begins.
    pub retry: Option<NextAttempt>,
}

/// When a failed start is tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct NextAttempt {
    /// Attempts made so far.
    pub failed: u32,
    /// When the next attempt starts.
    pub at: SystemTime,
}
/// What `/readyz` says of memory: the limit, where it came from, and the
/// largest square image that fits under it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct MemoryReport {
    /// The memory the plan may use, in bytes.
    pub limit_bytes: u64,
    /// Where that figure came from (free RAM, free GPU memory, `--memory-budget`).
    pub source: String,
    /// The estimate for a 1024×1024 image.
    pub need_1024_bytes: u64,
    /// The largest square image side that fits; `None` if none does.
    pub largest_square: Option<u32>,
}

impl MemoryReport {
    pub(super) fn of(sizing: &Sizing) -> Self {
        Self {
            limit_bytes: sizing.limit(),
            source: sizing.budget.source.clone(),
            need_1024_bytes: sizing.need(1024, 1024, false, false, 1),
            largest_square: sizing.largest_square(),
        }
    }
}

/// The engine's counters at one moment, for tests and metrics
/// ([`FluxSchnell::stats`](super::FluxSchnell::stats)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EngineStats {
    /// Times the models were loaded.
    pub loads: u64,
    /// Transformer passes run.
    pub steps: u64,
    /// Images finished.
    pub images: u64,
    /// Requests stopped because their client went away.
    pub cancelled: u64,
    /// Bytes of text encoder outputs kept for recent prompts (after the
    /// last job), within the prompt cache's budget.
    pub prompt_cache_bytes: u64,
}

/// The live counters behind [`EngineStats`]: the worker adds, anyone reads.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) loads: AtomicU64,
    pub(super) steps: AtomicU64,
    pub(super) images: AtomicU64,
    pub(super) cancelled: AtomicU64,
    pub(super) prompt_cache_bytes: AtomicU64,
}

impl Counters {
    pub(super) fn snapshot(&self) -> EngineStats {
        let read = |n: &AtomicU64| n.load(Ordering::Relaxed);
        EngineStats {
            loads: read(&self.loads),
            steps: read(&self.steps),
            images: read(&self.images),
            cancelled: read(&self.cancelled),
            prompt_cache_bytes: read(&self.prompt_cache_bytes),
        }
    }
}

/// What the worker and the async side both see.
pub(super) struct Shared {
    pub(super) status: Mutex<EngineStatus>,
    pub(super) stats: Counters,
}

impl Shared {
    pub(super) fn set_phase(&self, phase: Phase, error: Option<String>) {
        let mut status = self.status.lock().expect("not poisoned");
        status.phase = phase;
        status.error = error;
    }

    pub(super) fn on_download(&self, event: &HubEvent) {
        let mut status = self.status.lock().expect("not poisoned");
        let key = |f: &HubFile| format!("{}/{}", f.repo, f.path);
        let entry = status.files.entry(key(event.file())).or_default();
        match event {
            HubEvent::Queued { size, .. } => entry.total = *size,
            HubEvent::Started {
                size, resumed_from, ..
            } => {
                *entry = FileProgress {
                    done: *resumed_from,
                    total: *size,
                }
            }
            HubEvent::Advanced { bytes, .. } => entry.done += bytes,
            HubEvent::Finished { size, .. } | HubEvent::Cached { size, .. } => {
                *entry = FileProgress {
                    done: *size,
                    total: *size,
                }
            }
            HubEvent::Retrying { .. } => {}
        }
    }
}
