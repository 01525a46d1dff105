//! What the cache holds for a file, checked as far as it can be without a
//! request: its size against the size recorded when it was downloaded, or,
//! for a small file named by its git sha1, its hash.

use super::client::HubClient;
use super::damage::hash_check;
use super::fetched::FetchedFile;
use crate::hub::digest::EtagKind;
use crate::hub::error::HubError;
use crate::hub::file::HubFile;

/// What the cache holds for a file, as far as it can tell without a request.
pub(super) enum CacheCheck {
    /// Present, and its size is what its blob's record (or its git sha1) says.
    Intact(FetchedFile),
    /// Present, but nothing here says how large it must be: a blob named by
    /// sha256 that Python, or an older schnell, wrote.
    Unchecked {
        hit: FetchedFile,
        commit: String,
        etag: Option<String>,
    },
    /// Present but damaged; fetched again at the same commit.
    Damaged {
        commit: String,
        etag: String,
        reason: String,
    },
    Absent,
}

/// The largest blob named by its git sha1 that a cache lookup hashes when no
/// size is recorded for it. Such blobs are the Hub's small, non-LFS files.
const HASH_ON_LOOKUP_MAX: u64 = 16 << 20;

impl HubClient {
    /// The cached copy of a file, if any, without a network request. A copy
    /// whose size is not what was recorded when it was downloaded (or whose
    /// git sha1 is wrong, for a small file) is damaged, and not returned.
    pub async fn cached(&self, file: &HubFile) -> Result<Option<FetchedFile>, HubError> {
        file.validate()?;
        Ok(match self.check_cached(file).await? {
            CacheCheck::Intact(hit) | CacheCheck::Unchecked { hit, .. } => Some(hit),
            CacheCheck::Damaged { .. } | CacheCheck::Absent => None,
        })
    }

    /// Looks a file up in the cache and checks what can be checked there.
    pub(super) async fn check_cached(&self, file: &HubFile) -> Result<CacheCheck, HubError> {
        let cache = &self.inner.cache;
        let Some(found) = cache.lookup(file).await else {
            return Ok(CacheCheck::Absent);
        };
        let hit = FetchedFile {
            file: file.clone(),
            path: found.path.clone(),
            size: found.size,
            from_cache: true,
        };
        let Some(etag) = found.etag else {
            return Ok(CacheCheck::Unchecked {
                hit,
                commit: found.commit,
                etag: None,
            });
        };
        let damaged = |reason: String| CacheCheck::Damaged {
            commit: found.commit.clone(),
            etag: etag.clone(),
            reason,
        };
        let blob = cache.blob_path(&file.repo, &etag);
        match cache.recorded_size(&file.repo, &etag).await {
            Some(expected) if expected == found.size => Ok(CacheCheck::Intact(hit)),
            Some(expected) => Ok(damaged(format!(
                "its blob {} holds {} bytes, {expected} were downloaded",
                blob.display(),
                found.size
            ))),
            None if EtagKind::of(&etag) == EtagKind::GitSha1
                && found.size <= HASH_ON_LOOKUP_MAX =>
            {
                match hash_check(file, &blob, &etag).await? {
                    None => {
                        cache.record_size(&file.repo, &etag, found.size).await;
                        Ok(CacheCheck::Intact(hit))
                    }
                    Some(reason) => Ok(damaged(reason)),
                }
            }
            None => Ok(CacheCheck::Unchecked {
                hit,
                commit: found.commit,
                etag: Some(etag),
            }),
        }
    }
}
