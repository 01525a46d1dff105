//! One download per file in this process: concurrent callers wait for the
//! first instead of downloading again (other processes wait on the cache's
//! lock file).

use std::sync::Arc;

use super::client::{HubClient, Inner};
use crate::hub::file::HubFile;

impl HubClient {
    /// Waits until no other task of this client fetches `file`.
    pub(super) async fn claim(&self, file: &HubFile) -> Claim {
        let lock = {
            let mut busy = self.inner.busy.lock().expect("not poisoned");
            busy.entry(file.clone()).or_default().clone()
        };
        Claim {
            guard: Some(lock.lock_owned().await),
            inner: self.inner.clone(),
            file: file.clone(),
        }
    }
}

/// Holds a file's in-process lock; the last holder removes the map entry.
pub(super) struct Claim {
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    inner: Arc<Inner>,
    file: HubFile,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut busy = self.inner.busy.lock().expect("not poisoned");
        drop(self.guard.take());
        if busy
            .get(&self.file)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            busy.remove(&self.file);
        }
    }
}
