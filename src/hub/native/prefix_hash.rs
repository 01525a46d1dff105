//! The sha256 of a download, computed while it downloads.
//!
//! Hashing a multi-gigabyte file after its last byte arrived adds its whole
//! hashing time to the download. Instead, a thread of the blocking pool
//! follows the partial file's complete prefix and hashes each part as soon as
//! it is complete, so only the last stretch is left when the transfer ends.

use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};

use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;

pub(crate) struct PrefixHasher {
    marks: Mutex<Option<mpsc::Sender<u64>>>,
    sent: AtomicU64,
    task: JoinHandle<io::Result<Option<String>>>,
}

impl PrefixHasher {
    /// Starts hashing the first `size` bytes of `path` as they are declared
    /// complete with [`advance`](Self::advance).
    pub(crate) fn start(path: PathBuf, size: u64) -> Self {
        let (marks, rx) = mpsc::channel::<u64>();
        let task = tokio::task::spawn_blocking(move || follow(path, size, rx));
        Self {
            marks: Mutex::new(Some(marks)),
            sent: AtomicU64::new(0),
            task,
        }
    }

    /// The first `prefix` bytes are written and will not change.
    pub(crate) fn advance(&self, prefix: u64) {
        if self.sent.fetch_max(prefix, Ordering::AcqRel) < prefix {
            if let Some(marks) = &*self.marks.lock().expect("not poisoned") {
                // The thread only stops early on an I/O error, which
                // `finish` reports.
                let _ = marks.send(prefix);
            }
        }
    }

    /// The hex sha256 once every byte was declared complete, else `None`.
    pub(crate) async fn finish(mut self) -> io::Result<Option<String>> {
        drop(self.marks.lock().expect("not poisoned").take());
        (&mut self.task).await.map_err(io::Error::other)?
    }
}

fn follow(path: PathBuf, size: u64, marks: mpsc::Receiver<u64>) -> io::Result<Option<String>> {
    let mut file = std::fs::File::open(&path)?;
    let mut hasher = Sha256::new();
    let mut hashed = 0u64;
    let mut buffer = vec![0u8; 1 << 20];
    // `recv` ends when the transfer drops its sender: finished or failed.
    while let Ok(mut mark) = marks.recv() {
        while let Ok(later) = marks.try_recv() {
            mark = later;
        }
        while hashed < mark.min(size) {
            let n = ((mark.min(size) - hashed) as usize).min(buffer.len());
            file.read_exact(&mut buffer[..n])?;
            hasher.update(&buffer[..n]);
            hashed += n as u64;
        }
    }
    Ok((hashed == size).then(|| hex::encode(hasher.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_the_prefix_as_it_grows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let expected = hex::encode(Sha256::digest(&data));

        let h = PrefixHasher::start(path.clone(), data.len() as u64);
        for mark in [10, 1_000_000, 999, 2_500_000, data.len() as u64] {
            h.advance(mark);
        }
        assert_eq!(h.finish().await.unwrap(), Some(expected));

        // Stopped short: no digest.
        let h = PrefixHasher::start(path, data.len() as u64);
        h.advance(1_000);
        assert_eq!(h.finish().await.unwrap(), None);
    }
}
