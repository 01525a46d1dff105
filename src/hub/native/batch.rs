//! Step one of a batch, and the batch itself: every file looked up in the
//! cache (zero requests on a hit whose size is known to be right), the rest
//! asked about with one `HEAD` each; then the missing ones downloaded at
//! once (`download`).

use std::collections::HashMap;

use futures::future::join_all;

use super::cache_check::CacheCheck;
use super::client::HubClient;
use super::damage::Damage;
use super::fetched::FetchedFile;
use super::remote;
use crate::hub::error::HubError;
use crate::hub::event::HubEvent;
use crate::hub::file::HubFile;
use crate::hub::retry::Failure;

/// What step one found out about a file.
enum Lookup {
    Cached(FetchedFile),
    /// To download, from where the `HEAD` that found it said.
    Remote(remote::Head),
}

impl HubClient {
    /// One file: from the cache if present, else downloaded into it.
    pub async fn file(&self, file: &HubFile) -> Result<FetchedFile, HubError> {
        let mut files = self.files(std::slice::from_ref(file)).await?;
        Ok(files.remove(0))
    }

    /// Many files at once, returned in the order asked. Every file is attempted
    /// even when another fails, so nothing fetched is lost; the error then names
    /// every file that failed.
    pub async fn files(&self, files: &[HubFile]) -> Result<Vec<FetchedFile>, HubError> {
        let errors: Vec<HubError> = files.iter().filter_map(|f| f.validate().err()).collect();
        if let Some(e) = HubError::from_many(errors) {
            return Err(e);
        }
        let mut unique: Vec<HubFile> = files.to_vec();
        unique.sort();
        unique.dedup();

        let lookups = join_all(unique.iter().map(|f| self.lookup(f))).await;
        let pending: Vec<(HubFile, Result<Lookup, HubError>)> =
            unique.into_iter().zip(lookups).collect();
        if self.is_offline() {
            let missing: Vec<HubFile> = pending
                .iter()
                .filter(|(_, l)| !matches!(l, Ok(Lookup::Cached(_))))
                .map(|(f, _)| f.clone())
                .collect();
            if !missing.is_empty() {
                return Err(HubError::Offline {
                    missing,
                    cache: self.cache_dir().to_path_buf(),
                });
            }
        }

        // All at once: the connections go to whichever file has the least
        // left (see `transfer`).
        let results = join_all(pending.into_iter().map(|(file, lookup)| async move {
            match lookup? {
                Lookup::Cached(hit) => Ok(hit),
                Lookup::Remote(head) => self.download(&file, head).await,
            }
        }))
        .await;

        let mut errors = Vec::new();
        let mut by_file = HashMap::new();
        for result in results {
            match result {
                Ok(fetched) => {
                    by_file.insert(fetched.file.clone(), fetched);
                }
                Err(e) => errors.push(e),
            }
        }
        if let Some(e) = HubError::from_many(errors) {
            return Err(e);
        }
        Ok(files.iter().map(|f| by_file[f].clone()).collect())
    }

    /// Step one: the cache, or one `HEAD` (with retries).
    async fn lookup(&self, file: &HubFile) -> Result<Lookup, HubError> {
        let mut at = file.clone();
        match self.check_cached(file).await? {
            CacheCheck::Intact(hit) => return Ok(self.cache_hit(hit)),
            CacheCheck::Unchecked { hit, commit, etag } => {
                if self.is_offline() {
                    return Ok(self.cache_hit(hit));
                }
                return self.check_size_online(file, hit, &commit, etag).await;
            }
            CacheCheck::Damaged {
                commit,
                etag,
                reason,
            } => {
                tracing::warn!(%file, %reason, "damaged in the cache; fetching it again");
                if !self.is_offline() {
                    self.discard_blob(file, &etag, Damage::Size).await?;
                }
                // The same content again, whatever the revision points to now.
                at = file.clone().at_revision(commit);
            }
            CacheCheck::Absent => {}
        }
        if self.is_offline() {
            // Reported for the whole batch by the caller.
            return Err(HubError::Offline {
                missing: vec![file.clone()],
                cache: self.cache_dir().to_path_buf(),
            });
        }
        let token = self.token().await;
        let head = self.with_retries(file, || self.head(token, &at)).await?;
        self.emit(HubEvent::Queued {
            file: file.clone(),
            size: head.remote.size,
        });
        Ok(Lookup::Remote(head))
    }

    fn cache_hit(&self, hit: FetchedFile) -> Lookup {
        self.emit(HubEvent::Cached {
            file: hit.file.clone(),
            size: hit.size,
        });
        Lookup::Cached(hit)
    }

    /// A cached file of unknown size: one `HEAD` at its commit says what it
    /// must hold, and is recorded so that the next lookup needs none. If the
    /// Hub cannot be asked, the cached file is used as it is, as Python does.
    async fn check_size_online(
        &self,
        file: &HubFile,
        hit: FetchedFile,
        commit: &str,
        etag: Option<String>,
    ) -> Result<Lookup, HubError> {
        let token = self.token().await;
        let at = file.clone().at_revision(commit);
        let head = self.head(token, &at).await;
        match head {
            Ok(head)
                if head.remote.size == hit.size
                    && etag.as_ref().is_none_or(|e| *e == head.remote.etag) =>
            {
                let cache = &self.inner.cache;
                cache
                    .record_size(&file.repo, &head.remote.etag, hit.size)
                    .await;
                Ok(self.cache_hit(hit))
            }
            Ok(head) => {
                tracing::warn!(
                    %file,
                    path = %hit.path.display(),
                    cached = hit.size,
                    expected = head.remote.size,
                    "the cached file has the wrong size; fetching it again"
                );
                self.emit(HubEvent::Queued {
                    file: file.clone(),
                    size: head.remote.size,
                });
                Ok(Lookup::Remote(head))
            }
            Err(failure) => {
                let reason = match failure {
                    Failure::Fatal(e) => e.to_string(),
                    Failure::Transient { reason, .. } => reason,
                };
                tracing::info!(%file, %reason, "cannot ask the Hub what the cached file must hold; using it as it is");
                Ok(self.cache_hit(hit))
            }
        }
    }
}
