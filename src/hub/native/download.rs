//! Step two of a batch: one file downloaded, verified against its ETag,
//! renamed into the cache and linked, unless another task or process does it
//! first.

use std::path::Path;
use std::sync::Mutex;

use super::cache::io_err;
use super::cache_check::CacheCheck;
use super::client::HubClient;
use super::fetched::FetchedFile;
use super::remote;
use super::transfer::{Transfer, Transferred};
use crate::hub::digest;
use crate::hub::error::HubError;
use crate::hub::event::HubEvent;
use crate::hub::file::HubFile;

impl HubClient {
    /// Step two: download, verify and link one file, unless another task or
    /// process does it first.
    pub(super) async fn download(
        &self,
        file: &HubFile,
        found: remote::Head,
    ) -> Result<FetchedFile, HubError> {
        let remote = &found.remote;
        let _busy = self.claim(file).await;
        // Another task of this process may have finished it while we waited.
        if let CacheCheck::Intact(hit) = self.check_cached(file).await? {
            self.emit(HubEvent::Cached {
                file: file.clone(),
                size: hit.size,
            });
            return Ok(hit);
        }
        let cache = &self.inner.cache;
        let blob = cache.blob_path(&file.repo, &remote.etag);
        let lock_path = cache.lock_path(&file.repo, &remote.etag);
        let _lock = cache
            .lock(&file.repo, &remote.etag)
            .await
            .map_err(io_err(file, &lock_path))?;

        // The blob may be here already: another revision, another process, or
        // a run that stopped before linking it.
        if cache.blob_len(&file.repo, &remote.etag).await != Some(remote.size) {
            self.fetch_blob(file, &found, &blob).await?;
        }
        cache
            .record_size(&file.repo, &remote.etag, remote.size)
            .await;
        let path = cache
            .link(file, &remote.commit, &remote.etag)
            .await
            .map_err(io_err(file, &cache.snapshot_path(file, &remote.commit)))?;
        self.emit(HubEvent::Finished {
            file: file.clone(),
            size: remote.size,
        });
        Ok(FetchedFile {
            file: file.clone(),
            path,
            size: remote.size,
            from_cache: false,
        })
    }

    /// Transfers, verifies and renames the blob into place. A content mismatch
    /// discards the download and tries once more from scratch.
    async fn fetch_blob(
        &self,
        file: &HubFile,
        found: &remote::Head,
        blob: &Path,
    ) -> Result<(), HubError> {
        let remote = &found.remote;
        let parent = blob.parent().expect("blob paths have a parent");
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(io_err(file, parent))?;
        let mut integrity_retries = 1;
        loop {
            let (staged, hashed) = if remote.size == 0 {
                let empty = blob.with_extension("empty.part");
                tokio::fs::write(&empty, b"")
                    .await
                    .map_err(io_err(file, &empty))?;
                (empty, None)
            } else {
                let Transferred { path, sha256 } = self.transfer(file, found).await?;
                (path, sha256)
            };
            let verdict = match hashed {
                // Hashed while it downloaded.
                Some(actual) => (!actual.eq_ignore_ascii_case(&remote.etag)).then_some(actual),
                None => {
                    let (check_path, etag) = (staged.clone(), remote.etag.clone());
                    tokio::task::spawn_blocking(move || digest::mismatch(&check_path, &etag))
                        .await
                        .map_err(|e| io_err(file, &staged)(std::io::Error::other(e)))?
                        .map_err(io_err(file, &staged))?
                }
            };
            match verdict {
                None => {
                    return tokio::fs::rename(&staged, blob)
                        .await
                        .map_err(io_err(file, blob));
                }
                Some(actual) => {
                    let _ = tokio::fs::remove_file(&staged).await;
                    tracing::warn!(%file, expected = %remote.etag, %actual, "checksum mismatch; download discarded");
                    if integrity_retries == 0 {
                        return Err(HubError::Integrity {
                            file: file.clone(),
                            expected: remote.etag.clone(),
                            actual,
                        });
                    }
                    integrity_retries -= 1;
                    self.emit(HubEvent::Retrying {
                        file: file.clone(),
                        attempt: 1,
                        delay_ms: 0,
                        reason: "checksum mismatch".into(),
                    });
                }
            }
        }
    }

    /// The transfer with our retries; its ranges share the client's
    /// connections with every other download.
    async fn transfer(
        &self,
        file: &HubFile,
        found: &remote::Head,
    ) -> Result<Transferred, HubError> {
        let s = &self.inner.settings;
        let token = self.token().await;
        let transfer = Transfer {
            http: &self.inner.http,
            cache: &self.inner.cache,
            connections: &self.inner.connections,
            endpoint: &s.endpoint,
            token,
            events: self.events.as_ref(),
            stall_timeout: s.stall_timeout,
            max_chunk: s.chunk_size,
        };
        // The first attempt goes where the lookup was sent; a retry asks
        // again, since a signed link may have expired.
        let location = Mutex::new(Some(found.location.clone()));
        self.with_retries(file, || {
            let location = location.lock().expect("not poisoned").take();
            transfer.run(file, &found.remote, location)
        })
        .await
    }
}
