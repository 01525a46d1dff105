//! `verify`: hashing what the cache holds against the names of its blobs,
//! and repairing what does not match.

use tokio::sync::Semaphore;

use futures::future::join_all;

use super::client::HubClient;
use super::damage::{hash_check, Damage};
use crate::hub::digest::EtagKind;
use crate::hub::error::HubError;
use crate::hub::file::HubFile;

/// What [`HubClient::verify`] found for one file.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
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
    Repaired {
        /// What was wrong with it.
        reason: String,
    },
    /// It is damaged (`reason`), and offline it could not be downloaded again.
    Damaged {
        /// What is wrong with it.
        reason: String,
    },
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
}
