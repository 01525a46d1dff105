//! The sha256 of a download, computed while it downloads.
//!
//! Hashing a multi-gigabyte file after its last byte arrived adds its whole
//! hashing time to the download. Instead, a thread of the blocking pool
//! follows the partial file's complete prefix and hashes each part as soon as
//! it is complete, so only the last stretch is left when the transfer ends.

use std::io::{self, Read};
use std::path::PathBuf;

use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub(crate) struct PrefixHasher {
    marks: watch::Sender<u64>,
    task: JoinHandle<io::Result<Option<String>>>,
}

impl PrefixHasher {
    /// Starts hashing the first `size` bytes of `path` as they are declared
    /// complete with [`advance`](Self::advance). No thread waits meanwhile:
    /// each step of the prefix is hashed by one call on the blocking pool,
    /// so a batch of many files cannot fill the pool with waiting hashers.
    pub(crate) fn start(path: PathBuf, size: u64) -> Self {
        let (marks, rx) = watch::channel(0u64);
        let task = tokio::spawn(follow(path, size, rx));
        Self { marks, task }
    }

    /// The first `prefix` bytes are written and will not change.
    pub(crate) fn advance(&self, prefix: u64) {
        self.marks.send_if_modified(|mark| {
            let grew = prefix > *mark;
            *mark = (*mark).max(prefix);
            grew
        });
    }

    /// The hex sha256 once every byte was declared complete, else `None`.
    pub(crate) async fn finish(self) -> io::Result<Option<String>> {
        drop(self.marks);
        self.task.await.map_err(io::Error::other)?
    }
}

/// Where the hashing got to: carried into each blocking step and back.
struct State {
    file: std::fs::File,
    hasher: Sha256,
    hashed: u64,
    buffer: Vec<u8>,
}

async fn follow(
    path: PathBuf,
    size: u64,
    mut marks: watch::Receiver<u64>,
) -> io::Result<Option<String>> {
    let mut state = tokio::task::spawn_blocking(move || {
        io::Result::Ok(State {
            file: std::fs::File::open(path)?,
            hasher: Sha256::new(),
            hashed: 0,
            buffer: vec![0u8; 1 << 20],
        })
    })
    .await
    .map_err(io::Error::other)??;
    // `changed` fails once the transfer drops its sender (finished or
    // failed), after the last mark was seen.
    while marks.changed().await.is_ok() {
        let mark = (*marks.borrow_and_update()).min(size);
        if mark <= state.hashed {
            continue;
        }
        state = tokio::task::spawn_blocking(move || {
            while state.hashed < mark {
                let n = ((mark - state.hashed) as usize).min(state.buffer.len());
                state.file.read_exact(&mut state.buffer[..n])?;
                state.hasher.update(&state.buffer[..n]);
                state.hashed += n as u64;
            }
            io::Result::Ok(state)
        })
        .await
        .map_err(io::Error::other)??;
    }
    Ok((state.hashed == size).then(|| hex::encode(state.hasher.finalize())))
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
