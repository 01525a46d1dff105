#[cfg(not(target_arch = "wasm32"))]
use std::sync::Arc;

use serde::Serialize;

use super::file::HubFile;

/// What happens to a file while it is fetched. A CLI progress bar, the server's
/// readiness report and the tests all consume the same events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum HubEvent {
    /// The Hub said how large the file is; it will be downloaded.
    Queued {
        /// The file.
        file: HubFile,
        /// Its size in bytes.
        size: u64,
    },
    /// A transfer attempt began. `resumed_from` bytes were already on disk, so the
    /// file's progress is now `resumed_from` of `size` (this also resets progress
    /// when a retry starts over).
    Started {
        /// The file.
        file: HubFile,
        /// Its size in bytes.
        size: u64,
        /// Bytes already on disk when the attempt began.
        resumed_from: u64,
    },
    /// `bytes` more bytes arrived.
    Advanced {
        /// The file.
        file: HubFile,
        /// Bytes that arrived since the last event.
        bytes: u64,
    },
    /// The file is complete, verified and in the cache.
    Finished {
        /// The file.
        file: HubFile,
        /// Its size in bytes.
        size: u64,
    },
    /// The file was already cached: no request was made.
    Cached {
        /// The file.
        file: HubFile,
        /// Its size in bytes.
        size: u64,
    },
    /// A transient failure; the next attempt starts after `delay_ms`.
    Retrying {
        /// The file.
        file: HubFile,
        /// The attempt that failed (1 for the first).
        attempt: u32,
        /// How long until the next attempt, in milliseconds.
        delay_ms: u64,
        /// Why the attempt failed.
        reason: String,
    },
}

impl HubEvent {
    /// The file the event is about.
    pub fn file(&self) -> &HubFile {
        match self {
            HubEvent::Queued { file, .. }
            | HubEvent::Started { file, .. }
            | HubEvent::Advanced { file, .. }
            | HubEvent::Finished { file, .. }
            | HubEvent::Cached { file, .. }
            | HubEvent::Retrying { file, .. } => file,
        }
    }
}

cfg_if::cfg_if! {
    if #[cfg(target_arch = "wasm32")] {
        /// Receives events; called as bytes arrive, so it must be quick. The
        /// browser is single-threaded: no `Send` needed.
        pub type EventSink = std::rc::Rc<dyn Fn(HubEvent)>;
    } else {
        /// Receives events; called from download tasks, so it must be quick.
        pub type EventSink = Arc<dyn Fn(HubEvent) + Send + Sync>;
    }
}
