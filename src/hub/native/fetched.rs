//! What a fetch returns: a file present in the local cache.

use std::path::{Path, PathBuf};

use crate::hub::error::HubError;
use crate::hub::file::HubFile;

/// A file present in the local cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchedFile {
    /// The file asked for.
    pub file: HubFile,
    pub(super) path: PathBuf,
    pub(super) size: u64,
    pub(super) from_cache: bool,
}

impl FetchedFile {
    /// The snapshot path in the cache (a symlink to the blob on Unix).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether it was already cached, with no request made.
    pub fn from_cache(&self) -> bool {
        self.from_cache
    }

    /// The file's contents.
    pub async fn bytes(&self) -> Result<bytes::Bytes, HubError> {
        tokio::fs::read(&self.path)
            .await
            .map(bytes::Bytes::from)
            .map_err(|source| HubError::Io {
                file: self.file.clone(),
                path: self.path.clone(),
                source,
            })
    }
}
