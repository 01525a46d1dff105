//! `verify`: hashing what the cache holds against the names of its blobs,
//! and repairing what does not match.

use std::path::Path;

use tokio::sync::Semaphore;

use futures::future::join_all;

use super::{io_err, HubClient};
use crate::hub::digest::{self, EtagKind};
use crate::hub::{HubError, HubFile};

/// What [`HubClient::verify`] found for one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verification {
    /// Not in the cache: nothing to check (a download is always checked).
    NotCached,
    /// Its content hashes to the name of its blob.
    Intact,
    /// Its blob's name is no content hash, but its size is as recorded.
    SizeOnly,
    /// Nothing to check it against: neither a hash nor a recorded size.
    Unchecked,
    /// It was damaged (`reason`) and has been downloaded again.
    Repaired { reason: String },
    /// It is damaged (`reason`), and offline it could not be downloaded again.
    Damaged { reason: String },
}

impl HubClient {
    /// Hashes each cached file against the name of its blob (sha256 for LFS
    /// files, git blob sha1 for the others), as `hf cache verify` does, and
    /// downloads again, at the same commit, every file that does not match
    /// (offline, it only reports them). Hashing runs on the blocking pool, a
    /// few files at a time. Every file
    /// is checked even when another fails; the error then names each failure.
    pub async fn verify(&self, files: &[HubFile]) -> Result<Vec<Verification>, HubError> {
        let errors: Vec<HubError> = files.iter().filter_map(|f| f.validate().err()).collect();
        if let Some(e) = HubError::from_many(errors) {
            return Err(e);
        }
        let hashers = Semaphore::new(
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
        );
        let results = join_all(files.iter().map(|f| self.verify_one(f, &hashers))).await;
        let mut verified = Vec::with_capacity(results.len());
        let mut errors = Vec::new();
        for result in results {
            match result {
                Ok(v) => verified.push(v),
                Err(e) => errors.push(e),
            }
        }
        match HubError::from_many(errors) {
            Some(e) => Err(e),
            None => Ok(verified),
        }
    }

    async fn verify_one(
        &self,
        file: &HubFile,
        hashers: &Semaphore,
    ) -> Result<Verification, HubError> {
        let cache = &self.inner.cache;
        let Some(found) = cache.lookup(file).await else {
            return Ok(Verification::NotCached);
        };
        let Some(etag) = found.etag else {
            return Ok(Verification::Unchecked);
        };
        let recorded = cache.recorded_size(&file.repo, &etag).await;
        let blob = cache.blob_path(&file.repo, &etag);
        let reason = match recorded {
            Some(expected) if expected != found.size => Some(format!(
                "its blob {} holds {} bytes, {expected} were downloaded",
                blob.display(),
                found.size
            )),
            _ if EtagKind::of(&etag) == EtagKind::Opaque => {
                return Ok(if recorded.is_some() {
                    Verification::SizeOnly
                } else {
                    Verification::Unchecked
                });
            }
            _ => {
                let _permit = hashers.acquire().await.expect("never closed");
                hash_check(file, &blob, &etag).await?
            }
        };
        let Some(reason) = reason else {
            if recorded.is_none() {
                cache.record_size(&file.repo, &etag, found.size).await;
            }
            return Ok(Verification::Intact);
        };
        if self.is_offline() {
            return Ok(Verification::Damaged { reason });
        }
        tracing::warn!(%file, %reason, "damaged in the cache; downloading it again");
        self.discard_blob(file, &etag, Damage::Content).await?;
        self.files(&[file.clone().at_revision(&found.commit)])
            .await?;
        Ok(Verification::Repaired { reason })
    }

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
