//! The standard Hugging Face cache layout, so that Python `huggingface_hub` reads
//! what we write and we read what it wrote:
//!
//! ```text
//! <cache>/models--<org>--<name>/blobs/<etag>                 content, named by ETag
//! <cache>/models--<org>--<name>/snapshots/<commit>/<path>    relative symlink to the blob
//! <cache>/models--<org>--<name>/refs/<revision>              the commit a revision resolved to
//! <cache>/.locks/models--<org>--<name>/<etag>.lock           cross-process lock (flock, as Python's filelock)
//! ```
//!
//! and two folders of our own, which Python's cache scan ignores:
//!
//! ```text
//! <cache>/models--<org>--<name>/.schnell-partial/            partial downloads
//! <cache>/models--<org>--<name>/.schnell-meta/<etag>.json    {"size": N}: what a blob must hold
//! ```
//!
//! A blob is named by its content's hash, so its size record never goes
//! stale; it lets a cache hit catch a truncated blob without a request.
//!
//! All I/O here is async (tokio::fs) or runs on the blocking pool.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::hub::error::HubError;
use crate::hub::file::HubFile;

/// Where partial downloads live, inside the repo folder so that the final
/// rename stays on one filesystem. Python's cache scan ignores unknown folders.
const PARTIAL_DIR: &str = ".schnell-partial";

/// Where the size of each blob is recorded when it is downloaded.
const META_DIR: &str = ".schnell-meta";

/// How every repository folder's name begins (`models--org--name`).
const REPO_FOLDER_PREFIX: &str = "models--";

/// The folders of a repository folder: content, commits, revisions.
const BLOBS: &str = "blobs";
const SNAPSHOTS: &str = "snapshots";
const REFS: &str = "refs";

/// A file found in the cache.
#[derive(Clone, Debug)]
pub(crate) struct Cached {
    /// The snapshot path.
    pub path: PathBuf,
    /// The blob's size on disk.
    pub size: u64,
    /// The commit its snapshot belongs to.
    pub commit: String,
    /// The blob's name (its ETag), where the snapshot entry is a link to it.
    pub etag: Option<String>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct BlobMeta {
    size: u64,
}

#[derive(Clone, Debug)]
pub(crate) struct HubCache {
    root: PathBuf,
}

impl HubCache {
    pub(crate) fn new(root: PathBuf) -> Self {
        Self { root }
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// `models--org--name`, as Python and hf-hub name it.
    pub(crate) fn repo_folder(repo: &str) -> String {
        format!("{REPO_FOLDER_PREFIX}{}", repo.replace('/', "--"))
    }

    pub(crate) fn repo_dir(&self, repo: &str) -> PathBuf {
        self.root.join(Self::repo_folder(repo))
    }

    pub(crate) fn blob_path(&self, repo: &str, etag: &str) -> PathBuf {
        self.repo_dir(repo).join(BLOBS).join(etag)
    }

    pub(crate) fn snapshot_path(&self, file: &HubFile, commit: &str) -> PathBuf {
        join_relative(snapshot_dir(&self.repo_dir(&file.repo), commit), &file.path)
    }

    pub(crate) fn ref_path(&self, file: &HubFile) -> PathBuf {
        ref_file(&self.repo_dir(&file.repo), &file.revision)
    }

    pub(crate) fn lock_path(&self, repo: &str, etag: &str) -> PathBuf {
        self.root
            .join(".locks")
            .join(Self::repo_folder(repo))
            .join(format!("{etag}.lock"))
    }

    /// The partial download of a blob: its bytes, then the length of the
    /// complete prefix as 8 little-endian bytes (hf-hub 0.5's `.sync.part`
    /// format and place, so that partials of earlier versions resume).
    pub(crate) fn partial_path(&self, repo: &str, etag: &str) -> PathBuf {
        self.repo_dir(repo)
            .join(PARTIAL_DIR)
            .join(Self::repo_folder(repo))
            .join(BLOBS)
            .join(format!("{etag}.sync.part"))
    }

    fn meta_path(&self, repo: &str, etag: &str) -> PathBuf {
        self.repo_dir(repo)
            .join(META_DIR)
            .join(format!("{etag}.json"))
    }

    /// The size recorded for a blob when it was downloaded, if any.
    pub(crate) async fn recorded_size(&self, repo: &str, etag: &str) -> Option<u64> {
        let text = tokio::fs::read(self.meta_path(repo, etag)).await.ok()?;
        serde_json::from_slice::<BlobMeta>(&text)
            .ok()
            .map(|m| m.size)
    }

    /// Records the size a blob must have. Best effort: a read-only cache
    /// still works, it is only checked less cheaply.
    pub(crate) async fn record_size(&self, repo: &str, etag: &str, size: u64) {
        let json = serde_json::to_vec(&BlobMeta { size }).expect("serialisable");
        let path = self.meta_path(repo, etag);
        if let Err(e) = write_atomic(&path, &json).await {
            tracing::debug!(path = %path.display(), error = %e, "cannot record a blob's size");
        }
    }

    /// Deletes a damaged blob, so that it is downloaded again.
    pub(crate) async fn remove_blob(&self, repo: &str, etag: &str) -> io::Result<()> {
        match tokio::fs::remove_file(self.blob_path(repo, etag)).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The commit a revision resolves to in the cache, as Python resolves it:
    /// `refs/<revision>` if present, else the revision itself when it names a
    /// snapshot.
    pub(crate) async fn cached_commit(&self, file: &HubFile) -> Option<String> {
        if let Ok(commit) = tokio::fs::read_to_string(self.ref_path(file)).await {
            let commit = commit.trim().to_string();
            if !commit.is_empty() {
                return Some(commit);
            }
        }
        let snapshot = snapshot_dir(&self.repo_dir(&file.repo), &file.revision);
        (is_commit_hash(&file.revision) && tokio::fs::metadata(snapshot).await.is_ok())
            .then(|| file.revision.clone())
    }

    /// The cached file, its size and the blob it links to, without any
    /// network request. Nothing is checked here but that the blob exists.
    pub(crate) async fn lookup(&self, file: &HubFile) -> Option<Cached> {
        let commit = self.cached_commit(file).await?;
        let path = self.snapshot_path(file, &commit);
        // `metadata` follows the symlink: a dangling link is a miss.
        let meta = tokio::fs::metadata(&path).await.ok()?;
        if !meta.is_file() {
            return None;
        }
        let etag = tokio::fs::read_link(&path)
            .await
            .ok()
            .and_then(|target| blob_name(&target));
        Some(Cached {
            path,
            size: meta.len(),
            commit,
            etag,
        })
    }

    /// Size of the blob for `etag`, if it is present.
    pub(crate) async fn blob_len(&self, repo: &str, etag: &str) -> Option<u64> {
        let meta = tokio::fs::metadata(self.blob_path(repo, etag)).await.ok()?;
        meta.is_file().then_some(meta.len())
    }

    /// Points `snapshots/<commit>/<path>` at the blob and records the revision's
    /// commit in `refs/`. Both are replaced atomically, so a reader sees either
    /// the old state or the new one.
    pub(crate) async fn link(
        &self,
        file: &HubFile,
        commit: &str,
        etag: &str,
    ) -> io::Result<PathBuf> {
        let pointer = self.snapshot_path(file, commit);
        let parent = pointer.parent().expect("snapshot paths have a parent");
        tokio::fs::create_dir_all(parent).await?;
        let depth = 2 + file.path.split('/').count() - 1;
        let target = PathBuf::from("../".repeat(depth)).join(BLOBS).join(etag);
        let tmp = sibling_tmp(&pointer);
        let _ = tokio::fs::remove_file(&tmp).await;
        make_link(&target, &self.blob_path(&file.repo, etag), &tmp).await?;
        tokio::fs::rename(&tmp, &pointer).await?;

        if file.revision != commit {
            write_atomic(&self.ref_path(file), commit.as_bytes()).await?;
        }
        Ok(pointer)
    }

    /// Takes the cross-process lock for one blob, waiting as long as another
    /// process holds it. The wait happens on the blocking pool.
    pub(crate) async fn lock(&self, repo: &str, etag: &str) -> io::Result<BlobLock> {
        let path = self.lock_path(repo, etag);
        tokio::fs::create_dir_all(path.parent().expect("lock paths have a parent")).await?;
        let file = tokio::task::spawn_blocking(move || -> io::Result<std::fs::File> {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            file.lock()?;
            Ok(file)
        })
        .await
        .map_err(io::Error::other)??;
        Ok(BlobLock { _file: file })
    }
}

/// Held while a blob is written; dropping it closes the file and releases the lock.
pub(crate) struct BlobLock {
    _file: std::fs::File,
}

/// Names the file and the cache path in an I/O error.
pub(crate) fn io_err(file: &HubFile, path: &Path) -> impl FnOnce(std::io::Error) -> HubError {
    let (file, path) = (file.clone(), path.to_path_buf());
    move |source| HubError::Io { file, path, source }
}

/// Whether a folder's name is that of a repository folder: a folder that
/// holds such folders is a Hugging Face cache.
pub(crate) fn is_repo_folder(name: &str) -> bool {
    name.starts_with(REPO_FOLDER_PREFIX)
}

/// `<repo_dir>/snapshots/<commit>`: the files of one commit.
pub(crate) fn snapshot_dir(repo_dir: &Path, commit: &str) -> PathBuf {
    repo_dir.join(SNAPSHOTS).join(commit)
}

/// `<repo_dir>/refs/<revision>`: the file naming the commit a revision
/// (`main`, `refs/pr/2`) resolved to.
pub(crate) fn ref_file(repo_dir: &Path, revision: &str) -> PathBuf {
    join_relative(repo_dir.join(REFS), revision)
}

/// The ETag a path in a `blobs` folder is named by (a snapshot entry's
/// link target, or the blob itself); `None` for any other path.
pub(crate) fn blob_name(path: &Path) -> Option<String> {
    (path.parent()?.file_name()? == BLOBS)
        .then(|| path.file_name()?.to_str().map(str::to_string))?
}

/// A 40-hex-digit git commit id.
pub(crate) fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Joins a validated `/`-separated relative path.
fn join_relative(mut base: PathBuf, rel: &str) -> PathBuf {
    base.extend(rel.split('/'));
    base
}

/// A name beside `path` that no other writer, in this process or another, uses.
fn sibling_tmp(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}-{n}", std::process::id()));
    path.with_file_name(name)
}

/// Writes a small file by writing a sibling and renaming it over the target.
pub(crate) async fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    tokio::fs::create_dir_all(path.parent().expect("cache paths have a parent")).await?;
    let tmp = sibling_tmp(path);
    tokio::fs::write(&tmp, contents).await?;
    tokio::fs::rename(&tmp, path).await
}

#[cfg(unix)]
async fn make_link(target: &Path, _blob: &Path, at: &Path) -> io::Result<()> {
    tokio::fs::symlink(target, at).await
}

/// Where symlinks are not available, the snapshot holds a copy, as Python does.
#[cfg(not(unix))]
async fn make_link(_target: &Path, blob: &Path, at: &Path) -> io::Result<()> {
    tokio::fs::copy(blob, at).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_layout_paths() {
        let c = HubCache::new(PathBuf::from("/c"));
        let f = HubFile::new("google/t5-v1_1-xxl", "a/b.json").at_revision("refs/pr/2");
        assert_eq!(
            c.snapshot_path(&f, "abc"),
            PathBuf::from("/c/models--google--t5-v1_1-xxl/snapshots/abc/a/b.json")
        );
        assert_eq!(
            c.ref_path(&f),
            PathBuf::from("/c/models--google--t5-v1_1-xxl/refs/refs/pr/2")
        );
        assert_eq!(
            c.lock_path("o/n", "e"),
            PathBuf::from("/c/.locks/models--o--n/e.lock")
        );
        assert_eq!(
            c.partial_path("o/n", "e"),
            PathBuf::from("/c/models--o--n/.schnell-partial/models--o--n/blobs/e.sync.part")
        );
    }

    #[tokio::test]
    async fn link_is_relative_and_resolves() {
        let dir = tempfile::tempdir().unwrap();
        let c = HubCache::new(dir.path().to_path_buf());
        let f = HubFile::new("o/n", "sub/dir/x.json");
        let blob = c.blob_path("o/n", "e1");
        tokio::fs::create_dir_all(blob.parent().unwrap())
            .await
            .unwrap();
        tokio::fs::write(&blob, b"{}").await.unwrap();
        let commit = "0".repeat(40);
        let p = c.link(&f, &commit, "e1").await.unwrap();
        assert_eq!(
            tokio::fs::read_link(&p).await.unwrap(),
            PathBuf::from("../../../../blobs/e1")
        );
        let hit = c.lookup(&f).await.unwrap();
        assert_eq!((hit.size, hit.etag.as_deref()), (2, Some("e1")));
        assert_eq!(
            tokio::fs::read_to_string(c.ref_path(&f)).await.unwrap(),
            commit
        );
        // A commit revision resolves without a ref file.
        let by_commit = HubFile::new("o/n", "sub/dir/x.json").at_revision(commit.clone());
        assert!(c.lookup(&by_commit).await.is_some());

        assert_eq!(c.recorded_size("o/n", "e1").await, None);
        c.record_size("o/n", "e1", 2).await;
        assert_eq!(c.recorded_size("o/n", "e1").await, Some(2));
    }
}
