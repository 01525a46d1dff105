//! A download in progress on disk, and which of its bytes are already there.
//!
//! The partial file keeps hf-hub 0.5's `.sync.part` format: the content, then
//! the length of its complete prefix as 8 little-endian bytes, so partials of
//! earlier versions resume. Ranges fetched in parallel finish out of order,
//! and a prefix forgets everything past the first hole: a kill -9 there used
//! to cost every byte beyond it. So a small record beside it, `<etag>.ranges.part`,
//! lists every interval written, and is replaced atomically each time it is
//! saved. A record that is missing, damaged or for another size counts for
//! nothing; the prefix still does.

use std::io::{self, SeekFrom};
use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::cache::write_atomic;

/// The partial file's trailer: the complete prefix's length, little-endian.
const TRAILER: u64 = 8;

/// The first line of a range record; the file's size follows it.
const RECORD_HEADER: &str = "schnell-ranges v1";

/// Sorted, disjoint, non-empty half-open byte intervals `[start, end)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Intervals(Vec<(u64, u64)>);

impl Intervals {
    /// Adds `[start, end)`, merging it with any interval it touches.
    pub(crate) fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let v = &mut self.0;
        // The first interval that ends at or after `start` may merge.
        let first = v.partition_point(|&(_, e)| e < start);
        let mut last = first;
        let (mut s, mut e) = (start, end);
        while last < v.len() && v[last].0 <= end {
            s = s.min(v[last].0);
            e = e.max(v[last].1);
            last += 1;
        }
        v.splice(first..last, [(s, e)]);
    }

    /// Bytes covered.
    pub(crate) fn total(&self) -> u64 {
        self.0.iter().map(|(s, e)| e - s).sum()
    }

    /// The length of the covered prefix `[0, n)`.
    pub(crate) fn prefix(&self) -> u64 {
        match self.0.first() {
            Some(&(0, end)) => end,
            _ => 0,
        }
    }

    /// What of `[0, size)` is not covered, in order.
    pub(crate) fn gaps(&self, size: u64) -> Vec<(u64, u64)> {
        let mut gaps = Vec::new();
        let mut at = 0;
        for &(s, e) in &self.0 {
            if s >= size {
                break;
            }
            if s > at {
                gaps.push((at, s));
            }
            at = at.max(e);
        }
        if at < size {
            gaps.push((at, size));
        }
        gaps
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.0.iter().copied()
    }
}

/// Where a blob's partial download lives: the file and its range record.
#[derive(Clone, Debug)]
pub(crate) struct Partial {
    path: PathBuf,
    size: u64,
}

impl Partial {
    pub(crate) fn new(path: PathBuf, size: u64) -> Self {
        Self { path, size }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The range record beside the partial file.
    pub(crate) fn record_path(&self) -> PathBuf {
        record_path(&self.path)
    }

    /// Opens the partial file and returns what of it is already written;
    /// makes a new one (sparse, size + trailer) when there is none or it
    /// does not fit.
    pub(crate) async fn open(&self) -> io::Result<Intervals> {
        let parent = self.path.parent().expect("partial paths have a parent");
        tokio::fs::create_dir_all(parent).await?;
        if let Ok(mut f) = tokio::fs::File::open(&self.path).await {
            if f.metadata().await?.len() == self.size + TRAILER {
                f.seek(SeekFrom::Start(self.size)).await?;
                let mut trailer = [0u8; TRAILER as usize];
                f.read_exact(&mut trailer).await?;
                let mut have = self.read_record().await;
                have.insert(0, u64::from_le_bytes(trailer).min(self.size));
                return Ok(have);
            }
        }
        self.remove_record().await;
        let f = tokio::fs::File::create(&self.path).await?;
        f.set_len(self.size + TRAILER).await?;
        Ok(Intervals::default())
    }

    /// Records `have`: the trailer's prefix in the partial file, then every
    /// interval in the record. Data must be written before it is recorded.
    pub(crate) async fn save(&self, have: &Intervals) -> io::Result<()> {
        let mut out = tokio::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .await?;
        out.seek(SeekFrom::Start(self.size)).await?;
        out.write_all(&have.prefix().min(self.size).to_le_bytes())
            .await?;
        out.flush().await?;
        let mut text = format!("{RECORD_HEADER} {}\n", self.size);
        for (s, e) in have.iter() {
            text.push_str(&format!("{s} {e}\n"));
        }
        write_atomic(&self.record_path(), text.as_bytes()).await
    }

    /// Drops the trailer and the record: the file is now exactly the content.
    pub(crate) async fn complete(&self) -> io::Result<()> {
        let out = tokio::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .await?;
        out.set_len(self.size).await?;
        self.remove_record().await;
        Ok(())
    }

    /// Deletes the partial file and its record.
    pub(crate) async fn remove(&self) -> io::Result<()> {
        self.remove_record().await;
        match tokio::fs::remove_file(&self.path).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    async fn remove_record(&self) {
        let record = self.record_path();
        if let Err(e) = tokio::fs::remove_file(&record).await {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %record.display(), error = %e, "cannot delete a range record");
            }
        }
    }

    async fn read_record(&self) -> Intervals {
        let Ok(text) = tokio::fs::read_to_string(self.record_path()).await else {
            return Intervals::default();
        };
        parse_record(&text, self.size).unwrap_or_else(|| {
            tracing::warn!(path = %self.record_path().display(), "ignoring a damaged range record");
            Intervals::default()
        })
    }
}

/// `<etag>.sync.part` → `<etag>.ranges.part`.
fn record_path(partial: &Path) -> PathBuf {
    let name = partial.file_name().unwrap_or_default().to_string_lossy();
    let stem = name.strip_suffix(".sync.part").unwrap_or(&name);
    partial.with_file_name(format!("{stem}.ranges.part"))
}

/// The intervals of a record for a file of `size` bytes; `None` if the
/// record is damaged or describes another size.
fn parse_record(text: &str, size: u64) -> Option<Intervals> {
    let mut lines = text.lines();
    let header = lines.next()?.strip_prefix(RECORD_HEADER)?.trim();
    if header.parse::<u64>().ok()? != size {
        return None;
    }
    let mut have = Intervals::default();
    for line in lines {
        let (s, e) = line.split_once(' ')?;
        let (s, e) = (s.parse::<u64>().ok()?, e.parse::<u64>().ok()?);
        if s >= e || e > size {
            return None;
        }
        have.insert(s, e);
    }
    Some(have)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[(u64, u64)]) -> Intervals {
        let mut i = Intervals::default();
        for &(s, e) in v {
            i.insert(s, e);
        }
        i
    }

    #[test]
    fn intervals_merge_and_leave_the_right_gaps() {
        let i = set(&[(10, 20), (30, 40), (20, 25), (5, 10), (39, 50), (60, 60)]);
        assert_eq!(i.0, vec![(5, 25), (30, 50)]);
        assert_eq!(i.total(), 40);
        assert_eq!(i.prefix(), 0);
        assert_eq!(i.gaps(70), vec![(0, 5), (25, 30), (50, 70)]);
        let j = set(&[(0, 8), (8, 9), (12, 20), (1, 13)]);
        assert_eq!(j.0, vec![(0, 20)]);
        assert_eq!(j.prefix(), 20);
        assert!(j.gaps(20).is_empty());
    }

    #[test]
    fn records_round_trip_and_damage_counts_for_nothing() {
        let have = set(&[(0, 4), (10, 20)]);
        let text = format!("{RECORD_HEADER} 30\n0 4\n10 20\n");
        assert_eq!(parse_record(&text, 30), Some(have));
        assert_eq!(parse_record(&text, 31), None, "another size");
        assert_eq!(
            parse_record(&format!("{RECORD_HEADER} 30\n0 40\n"), 30),
            None
        );
        assert_eq!(
            parse_record(&format!("{RECORD_HEADER} 30\n0 x\n"), 30),
            None
        );
        assert_eq!(parse_record("", 30), None);
        assert_eq!(
            record_path(Path::new("/c/blobs/abc.sync.part")),
            PathBuf::from("/c/blobs/abc.ranges.part")
        );
    }

    #[tokio::test]
    async fn a_saved_partial_opens_with_every_interval() {
        let dir = tempfile::tempdir().unwrap();
        let p = Partial::new(dir.path().join("x/e.sync.part"), 100);
        assert_eq!(p.open().await.unwrap(), Intervals::default());
        let have = set(&[(0, 10), (50, 60)]);
        p.save(&have).await.unwrap();
        assert_eq!(p.open().await.unwrap(), have);
        // A record that is lost leaves the trailer's prefix.
        tokio::fs::remove_file(p.record_path()).await.unwrap();
        assert_eq!(p.open().await.unwrap(), set(&[(0, 10)]));
        // A partial of the wrong length starts again, and its record goes.
        p.save(&have).await.unwrap();
        std::fs::File::options()
            .write(true)
            .open(p.path())
            .unwrap()
            .set_len(50)
            .unwrap();
        assert_eq!(p.open().await.unwrap(), Intervals::default());
        assert!(!p.record_path().exists());
        p.save(&have).await.unwrap();
        p.complete().await.unwrap();
        assert_eq!(std::fs::metadata(p.path()).unwrap().len(), 100);
        assert!(!p.record_path().exists());
    }
}
