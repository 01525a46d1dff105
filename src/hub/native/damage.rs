//! Damaged blobs: hashing one against the name it is stored under, and
//! deleting it, under its lock, so that it is fetched again.

use std::path::Path;

use super::cache::io_err;
use super::client::HubClient;
use crate::hub::digest::{self, EtagKind};
use crate::hub::error::HubError;
use crate::hub::file::HubFile;

impl HubClient {
    /// Deletes a damaged blob, holding its lock, so that it is fetched again;
    /// unless, checked again under the lock as `damage` found it, another
    /// task or process has repaired it meanwhile.
    pub(super) async fn discard_blob(
        &self,
        file: &HubFile,
        etag: &str,
        damage: Damage,
    ) -> Result<(), HubError> {
        let cache = &self.inner.cache;
        let lock_path = cache.lock_path(&file.repo, etag);
        let _lock = cache
            .lock(&file.repo, etag)
            .await
            .map_err(io_err(file, &lock_path))?;
        let blob = cache.blob_path(&file.repo, etag);
        let repaired = match damage {
            Damage::Size => {
                let size = tokio::fs::metadata(&blob).await.ok().map(|m| m.len());
                size.is_some() && size == cache.recorded_size(&file.repo, etag).await
            }
            Damage::Content => {
                tokio::fs::metadata(&blob).await.is_ok()
                    && hash_check(file, &blob, etag).await?.is_none()
            }
        };
        if repaired {
            return Ok(());
        }
        cache
            .remove_blob(&file.repo, etag)
            .await
            .map_err(io_err(file, &blob))
    }
}

/// How a blob was found damaged, so that it can be checked again the same way.
#[derive(Clone, Copy)]
pub(super) enum Damage {
    /// Its size is not the recorded one (or, unrecorded, its hash failed:
    /// a repair records the size).
    Size,
    /// Its content does not hash to its name (`verify`).
    Content,
}

/// Hashes a blob on the blocking pool against the ETag it is named by:
/// `Some(reason)` when it does not match.
pub(super) async fn hash_check(
    file: &HubFile,
    blob: &Path,
    etag: &str,
) -> Result<Option<String>, HubError> {
    let (path, name) = (blob.to_path_buf(), etag.to_string());
    let actual = tokio::task::spawn_blocking(move || digest::mismatch(&path, &name))
        .await
        .map_err(|e| io_err(file, blob)(std::io::Error::other(e)))?
        .map_err(io_err(file, blob))?;
    Ok(actual.map(|actual| {
        let kind = match EtagKind::of(etag) {
            EtagKind::Sha256 => "sha256",
            _ => "git blob sha1",
        };
        format!(
            "the {kind} of its blob {} is {actual}, not the {etag} it is named by",
            blob.display()
        )
    }))
}
