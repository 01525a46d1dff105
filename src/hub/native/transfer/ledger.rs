//! The ledger of one attempt: which bytes of the partial file are written
//! (and so which are missing), shared by every connection of the attempt.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::hub::native::partial::Intervals;
use crate::hub::native::prefix_hash::PrefixHasher;

/// What this attempt found and wrote.
/// The hasher hears of each step of the complete prefix at once, so that
/// it keeps up.
pub(super) struct Ledger<'a> {
    have: Mutex<Intervals>,
    changed: AtomicBool,
    hasher: Option<&'a PrefixHasher>,
}

impl<'a> Ledger<'a> {
    pub(super) fn new(have: Intervals, hasher: Option<&'a PrefixHasher>) -> Self {
        if let Some(hasher) = hasher {
            hasher.advance(have.prefix());
        }
        Self {
            have: Mutex::new(have),
            changed: AtomicBool::new(false),
            hasher,
        }
    }

    pub(super) fn add(&self, start: u64, end: u64) {
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

    pub(super) fn missing(&self, size: u64) -> bool {
        self.have.lock().expect("not poisoned").total() < size
    }

    pub(super) fn gaps(&self, size: u64) -> Vec<(u64, u64)> {
        self.have.lock().expect("not poisoned").gaps(size)
    }

    /// A copy of what is written, if anything was added since the last one.
    pub(super) fn take_changes(&self) -> Option<Intervals> {
        self.changed
            .swap(false, Ordering::AcqRel)
            .then(|| self.have.lock().expect("not poisoned").clone())
    }
}
