//! Finding a requested file on disk, in either folder layout, without ever
//! leaving the mirror's root.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use sha1::{Digest, Sha1};
use tokio::sync::OnceCell;

use crate::hub::digest::{self, EtagKind};
use crate::hub::native::cache::{
    blob_name, is_commit_hash, is_repo_folder, ref_file, snapshot_dir, HubCache,
};
use crate::hub::HubFile;

/// How the mirror's folder is organised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Layout {
    /// `DIR/<org>/<name>/<path>`; every revision answers from that folder.
    Folders,
    /// A Hugging Face cache (`models--org--name/...`); revisions are exact.
    HfCache,
}

/// Why a request found nothing; each maps to the Hub's `X-Error-Code`.
#[derive(Debug)]
pub(crate) enum Missing {
    Repo,
    Revision,
    Entry,
}

/// A file ready to be served.
#[derive(Clone, Debug)]
pub(crate) struct Resolved {
    /// The commit the revision answers with.
    pub commit: String,
    /// The file on disk (canonical, inside the root).
    pub path: PathBuf,
    /// Its size in bytes.
    pub len: u64,
    /// Its ETag: sha256 for LFS files, git blob sha1 otherwise.
    pub etag: String,
    /// Whether the Hub would store it in LFS.
    pub lfs: bool,
}

/// File types the Hub stores in LFS whatever their size; anything of 10 MiB or
/// more is LFS too.
const LFS_EXTENSIONS: &[&str] = &[
    "safetensors",
    "bin",
    "pt",
    "pth",
    "ckpt",
    "h5",
    "msgpack",
    "onnx",
    "gguf",
    "npz",
    "npy",
    "ot",
    "tflite",
    "pb",
    "model",
    "zip",
    "gz",
    "tar",
    "zst",
    "parquet",
    "arrow",
];
const LFS_MIN_SIZE: u64 = 10 << 20;

fn is_lfs(path: &Path, len: u64) -> bool {
    len >= LFS_MIN_SIZE
        || path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| LFS_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

type EtagKey = (PathBuf, u64, Option<SystemTime>);

/// A plain folder's stand-in commit is reused this long before the folder is
/// walked again: not once per request.
const LISTING_TTL: Duration = Duration::from_secs(2);

/// A repository folder's stand-in commit and when it was computed.
type Listing = Arc<tokio::sync::Mutex<Option<(Instant, String)>>>;

pub(crate) struct Source {
    root: PathBuf,
    layout: Layout,
    /// Hashing a multi-gigabyte file takes a while: once per version of a file.
    etags: Mutex<HashMap<EtagKey, Arc<OnceCell<String>>>>,
    /// Per repository folder (plain layout).
    listings: Mutex<HashMap<PathBuf, Listing>>,
    /// Folder walks for stand-in commits, for tests.
    walks: AtomicUsize,
}

impl Source {
    /// Opens `dir`, which becomes the boundary no request may cross; the
    /// layout is detected unless given.
    pub(crate) async fn open(dir: &Path, layout: Option<Layout>) -> io::Result<Self> {
        let root = tokio::fs::canonicalize(dir).await?;
        if !tokio::fs::metadata(&root).await?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a folder", root.display()),
            ));
        }
        let layout = match layout {
            Some(layout) => layout,
            None => detect_layout(&root).await?,
        };
        Ok(Self {
            root,
            layout,
            etags: Mutex::default(),
            listings: Mutex::default(),
            walks: AtomicUsize::new(0),
        })
    }

    pub(crate) fn layout(&self) -> Layout {
        self.layout
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// The file a resolve request names, or what is missing.
    pub(crate) async fn resolve(&self, file: &HubFile) -> Result<Resolved, Missing> {
        let (repo_dir, commit) = self.revision(file).await?;
        let base = match self.layout {
            Layout::Folders => repo_dir,
            Layout::HfCache => snapshot_dir(&repo_dir, &commit),
        };
        let mut candidate = base;
        candidate.extend(file.path.split('/'));
        let path = self.inside(&candidate).await.ok_or(Missing::Entry)?;
        let meta = tokio::fs::metadata(&path)
            .await
            .map_err(|_| Missing::Entry)?;
        if !meta.is_file() {
            return Err(Missing::Entry);
        }
        let len = meta.len();
        // In a Hugging Face cache the blob's name is its ETag already.
        let named = (self.layout == Layout::HfCache)
            .then(|| blob_name(&path))
            .flatten();
        let (etag, lfs) = match named {
            Some(etag) => {
                let lfs = EtagKind::of(&etag) == EtagKind::Sha256;
                (etag, lfs)
            }
            None => {
                let lfs = is_lfs(&path, len);
                let kind = if lfs {
                    EtagKind::Sha256
                } else {
                    EtagKind::GitSha1
                };
                let etag = self
                    .etag(&path, len, meta.modified().ok(), kind)
                    .await
                    .map_err(|_| Missing::Entry)?;
                (etag, lfs)
            }
        };
        Ok(Resolved {
            commit,
            path,
            len,
            etag,
            lfs,
        })
    }

    /// The commit a revision answers with, and the repository's folder.
    pub(crate) async fn revision(&self, file: &HubFile) -> Result<(PathBuf, String), Missing> {
        let (org, name) = file.repo.split_once('/').ok_or(Missing::Repo)?;
        match self.layout {
            Layout::Folders => {
                let repo_dir = self
                    .inside(&self.root.join(org).join(name))
                    .await
                    .ok_or(Missing::Repo)?;
                if !tokio::fs::metadata(&repo_dir)
                    .await
                    .is_ok_and(|m| m.is_dir())
                {
                    return Err(Missing::Repo);
                }
                let commit = self
                    .listing_commit(&repo_dir)
                    .await
                    .map_err(|_| Missing::Repo)?;
                Ok((repo_dir, commit))
            }
            Layout::HfCache => {
                let folder = HubCache::repo_folder(&file.repo);
                let repo_dir = self
                    .inside(&self.root.join(folder))
                    .await
                    .ok_or(Missing::Repo)?;
                let commit =
                    match tokio::fs::read_to_string(ref_file(&repo_dir, &file.revision)).await {
                        Ok(c) => c.trim().to_string(),
                        Err(_) => file.revision.clone(),
                    };
                let snapshot = snapshot_dir(&repo_dir, &commit);
                if !is_commit_hash(&commit)
                    || !tokio::fs::metadata(&snapshot)
                        .await
                        .is_ok_and(|m| m.is_dir())
                {
                    return Err(Missing::Revision);
                }
                Ok((repo_dir, commit))
            }
        }
    }

    /// The stand-in commit of a plain repository folder, walked at most once
    /// per [`LISTING_TTL`]; requests meanwhile wait for the one walk.
    async fn listing_commit(&self, repo_dir: &Path) -> io::Result<String> {
        let listing = self
            .listings
            .lock()
            .expect("not poisoned")
            .entry(repo_dir.to_path_buf())
            .or_default()
            .clone();
        let mut cached = listing.lock().await;
        if let Some((at, commit)) = &*cached {
            if at.elapsed() < LISTING_TTL {
                return Ok(commit.clone());
            }
        }
        self.walks.fetch_add(1, Ordering::Relaxed);
        let commit = listing_commit(repo_dir.to_path_buf(), self.root.clone()).await?;
        *cached = Some((Instant::now(), commit.clone()));
        Ok(commit)
    }

    /// Every file of a revision, as repository-relative `/` paths.
    pub(crate) async fn list(&self, file: &HubFile) -> Result<(String, Vec<String>), Missing> {
        let (repo_dir, commit) = self.revision(file).await?;
        let base = match self.layout {
            Layout::Folders => repo_dir,
            Layout::HfCache => snapshot_dir(&repo_dir, &commit),
        };
        let root = self.root.clone();
        let names = tokio::task::spawn_blocking(move || list_files(&base, &root))
            .await
            .map_err(|_| Missing::Repo)?;
        Ok((commit, names))
    }

    /// The canonical form of `path` if it exists and stays under the root once
    /// every symlink is followed.
    async fn inside(&self, path: &Path) -> Option<PathBuf> {
        let canonical = tokio::fs::canonicalize(path).await.ok()?;
        canonical.starts_with(&self.root).then_some(canonical)
    }

    async fn etag(
        &self,
        path: &Path,
        len: u64,
        modified: Option<SystemTime>,
        kind: EtagKind,
    ) -> io::Result<String> {
        let cell = {
            let mut etags = self.etags.lock().expect("not poisoned");
            etags
                .entry((path.to_path_buf(), len, modified))
                .or_default()
                .clone()
        };
        let path = path.to_path_buf();
        cell.get_or_try_init(|| async move {
            tokio::task::spawn_blocking(move || digest::file_digest(&path, kind))
                .await
                .map_err(io::Error::other)?
        })
        .await
        .cloned()
    }
}

async fn detect_layout(root: &Path) -> io::Result<Layout> {
    let mut entries = tokio::fs::read_dir(root).await?;
    while let Some(entry) = entries.next_entry().await? {
        if is_repo_folder(&entry.file_name().to_string_lossy()) {
            return Ok(Layout::HfCache);
        }
    }
    Ok(Layout::Folders)
}

/// Regular files under `base`, skipping hidden files and folders (`.git`,
/// partial downloads) and never entering a link that leads out of `root`.
fn walk(base: &Path, root: &Path) -> impl Iterator<Item = walkdir::DirEntry> {
    let root = root.to_path_buf();
    walkdir::WalkDir::new(base)
        .follow_links(true)
        .into_iter()
        .filter_entry(move |e| {
            e.depth() == 0
                || (!e.file_name().to_string_lossy().starts_with('.')
                    && (!e.path_is_symlink()
                        || std::fs::canonicalize(e.path()).is_ok_and(|c| c.starts_with(&root))))
        })
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
}

/// A stable stand-in commit for a plain folder: it changes whenever a file is
/// added, removed, resized or touched, so clients see a new revision.
async fn listing_commit(repo_dir: PathBuf, root: PathBuf) -> io::Result<String> {
    tokio::task::spawn_blocking(move || {
        let mut entries: Vec<(String, u64, u128)> = walk(&repo_dir, &root)
            .filter_map(|e| {
                let rel = e
                    .path()
                    .strip_prefix(&repo_dir)
                    .ok()?
                    .to_string_lossy()
                    .replace('\\', "/");
                let meta = e.metadata().ok()?;
                let mtime = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                Some((rel, meta.len(), mtime))
            })
            .collect();
        entries.sort();
        let mut hasher = Sha1::new();
        for (rel, len, mtime) in entries {
            hasher.update(format!("{rel}\0{len}\0{mtime}\n"));
        }
        hex::encode(hasher.finalize())
    })
    .await
    .map_err(io::Error::other)
}

/// Regular files under `base` (following links that stay under `root`),
/// skipping hidden folders such as `.git` and partial downloads.
fn list_files(base: &Path, root: &Path) -> Vec<String> {
    let mut names: Vec<String> = walk(base, root)
        .filter_map(|e| {
            Some(
                e.path()
                    .strip_prefix(base)
                    .ok()?
                    .to_string_lossy()
                    .replace('\\', "/"),
            )
        })
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_plain_folder_is_walked_once_not_per_request() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("acme/tiny");
        std::fs::create_dir_all(&repo).unwrap();
        std::fs::write(repo.join("config.json"), b"{}").unwrap();
        let source = Source::open(dir.path(), None).await.unwrap();
        let file = HubFile::new("acme/tiny", "config.json");
        let first = source.resolve(&file).await.unwrap().commit;
        let many = futures::future::join_all((0..20).map(|_| source.resolve(&file))).await;
        for found in many {
            assert_eq!(found.unwrap().commit, first);
        }
        assert_eq!(source.walks.load(Ordering::Relaxed), 1);
    }
}
