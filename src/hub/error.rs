use std::fmt;
use std::path::PathBuf;

use super::file::HubFile;

/// What a 404 said was missing, from the Hub's `X-Error-Code` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotFoundKind {
    /// The repository does not exist (or is private and no token was sent).
    Repo,
    /// The repository exists but not this branch, tag or commit.
    Revision,
    /// The revision exists but holds no such file.
    Entry,
}

impl fmt::Display for NotFoundKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NotFoundKind::Repo => "the repository does not exist, or is private",
            NotFoundKind::Revision => "the repository has no such revision",
            NotFoundKind::Entry => "the revision has no such file",
        })
    }
}

/// Everything that can go wrong getting a Hub file. Every message names the
/// repository, revision and file at fault; none ever holds the token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// A name that could not come from the Hub, or would leave the cache.
    #[error("{file}: invalid name: {reason}")]
    InvalidFile {
        /// The file asked for.
        file: HubFile,
        /// What is wrong with its names.
        reason: String,
    },

    /// 404: no such repository, revision or file.
    #[error("{file}: not found (404): {kind}")]
    NotFound {
        /// The file asked for.
        file: HubFile,
        /// Which of them is missing.
        kind: NotFoundKind,
    },

    /// 401 `GatedRepo`: the repository's licence must be accepted first.
    #[error(
        "{file}: the repository is gated (401 GatedRepo): accept its licence at \
         https://huggingface.co/{repo} while logged in, then set HF_TOKEN to a token of that account",
        repo = file.repo
    )]
    Gated {
        /// The file asked for.
        file: HubFile,
    },

    /// 401: no token, or one the Hub rejected.
    #[error(
        "{file}: authentication failed (401){}: set HF_TOKEN to a valid Hugging Face token",
        if *token_sent { ", the token was rejected" } else { ", no token was sent" }
    )]
    Unauthorized {
        /// The file asked for.
        file: HubFile,
        /// Whether a token was sent (and rejected).
        token_sent: bool,
    },

    /// 403: the token's owner has no access to the repository.
    #[error(
        "{file}: access denied (403): the token's owner has not been granted access; accept the \
         licence at https://huggingface.co/{repo} with that account, or use another HF_TOKEN",
        repo = file.repo
    )]
    Forbidden {
        /// The file asked for.
        file: HubFile,
    },

    /// Offline, and files are not in the cache.
    #[error(
        "offline (HF_HUB_OFFLINE is set) and {} file(s) are not in the cache at {}: {}",
        missing.len(),
        cache.display(),
        list_files(missing)
    )]
    Offline {
        /// Every file asked for that the cache lacks.
        missing: Vec<HubFile>,
        /// The cache folder looked in.
        cache: PathBuf,
    },

    /// The downloaded content does not hash to its ETag (and was discarded).
    #[error("{file}: downloaded content does not match the Hub's checksum (expected {expected}, got {actual}); the download was discarded")]
    Integrity {
        /// The file asked for.
        file: HubFile,
        /// The hash its ETag names.
        expected: String,
        /// The hash of what arrived.
        actual: String,
    },

    /// Another final HTTP status.
    #[error("{file}: HTTP {status} from {endpoint}")]
    Http {
        /// The file asked for.
        file: HubFile,
        /// The status the server answered.
        status: u16,
        /// The Hub (or mirror) asked.
        endpoint: String,
    },

    /// An answer that breaks the Hub's protocol (headers, ranges, redirects).
    #[error("{file}: the Hub's answer is unusable: {reason}")]
    Protocol {
        /// The file asked for.
        file: HubFile,
        /// What was wrong with the answer.
        reason: String,
    },

    /// Transient failures (network, 5xx, stalls) outlasted the retries.
    #[error("{file}: download failed after {attempts} attempt(s): {reason}")]
    Transfer {
        /// The file asked for.
        file: HubFile,
        /// How many attempts were made.
        attempts: u32,
        /// Why the last one failed.
        reason: String,
    },

    /// Reading or writing the cache failed.
    #[error("{file}: cache I/O on {}: {source}", path.display())]
    Io {
        /// The file asked for.
        file: HubFile,
        /// The cache path at fault.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The disk filled up; the partial download was deleted.
    #[error(
        "{file}: no space left on the disk: writing {} failed, so that partial download was \
         deleted to free its space; free at least {size} bytes there (or set HF_HUB_CACHE to \
         another disk) and fetch again",
        partial.display()
    )]
    DiskFull {
        /// The file asked for.
        file: HubFile,
        /// The partial download that filled the disk (deleted since).
        partial: PathBuf,
        /// The whole file's size.
        size: u64,
    },

    /// The browser's storage for this origin is full.
    #[error("{file}: the browser's storage is full ({reason}); clear schnell's cached files or free space")]
    StorageFull {
        /// The file asked for.
        file: HubFile,
        /// The browser's message.
        reason: String,
    },

    /// Several files of one batch failed; one error each.
    #[error("{} files failed: {}", .0.len(), list_errors(.0))]
    Many(Vec<HubError>),

    /// The client cannot be set up (HTTP client, browser APIs, environment).
    #[error("Hub client configuration: {0}")]
    Config(String),
}

/// By hand because `std::io::Error` is not `Clone`: concurrent callers that
/// shared one download each get the error.
impl Clone for HubError {
    fn clone(&self) -> Self {
        match self {
            HubError::InvalidFile { file, reason } => HubError::InvalidFile {
                file: file.clone(),
                reason: reason.clone(),
            },
            HubError::NotFound { file, kind } => HubError::NotFound {
                file: file.clone(),
                kind: *kind,
            },
            HubError::Gated { file } => HubError::Gated { file: file.clone() },
            HubError::Unauthorized { file, token_sent } => HubError::Unauthorized {
                file: file.clone(),
                token_sent: *token_sent,
            },
            HubError::Forbidden { file } => HubError::Forbidden { file: file.clone() },
            HubError::Offline { missing, cache } => HubError::Offline {
                missing: missing.clone(),
                cache: cache.clone(),
            },
            HubError::Integrity {
                file,
                expected,
                actual,
            } => HubError::Integrity {
                file: file.clone(),
                expected: expected.clone(),
                actual: actual.clone(),
            },
            HubError::Http {
                file,
                status,
                endpoint,
            } => HubError::Http {
                file: file.clone(),
                status: *status,
                endpoint: endpoint.clone(),
            },
            HubError::Protocol { file, reason } => HubError::Protocol {
                file: file.clone(),
                reason: reason.clone(),
            },
            HubError::Transfer {
                file,
                attempts,
                reason,
            } => HubError::Transfer {
                file: file.clone(),
                attempts: *attempts,
                reason: reason.clone(),
            },
            HubError::Io { file, path, source } => HubError::Io {
                file: file.clone(),
                path: path.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            HubError::DiskFull {
                file,
                partial,
                size,
            } => HubError::DiskFull {
                file: file.clone(),
                partial: partial.clone(),
                size: *size,
            },
            HubError::StorageFull { file, reason } => HubError::StorageFull {
                file: file.clone(),
                reason: reason.clone(),
            },
            HubError::Many(errors) => HubError::Many(errors.clone()),
            HubError::Config(reason) => HubError::Config(reason.clone()),
        }
    }
}

impl HubError {
    /// The file this error is about, where there is exactly one.
    pub fn file(&self) -> Option<&HubFile> {
        match self {
            HubError::InvalidFile { file, .. }
            | HubError::NotFound { file, .. }
            | HubError::Gated { file }
            | HubError::Unauthorized { file, .. }
            | HubError::Forbidden { file }
            | HubError::Integrity { file, .. }
            | HubError::Http { file, .. }
            | HubError::Protocol { file, .. }
            | HubError::Transfer { file, .. }
            | HubError::StorageFull { file, .. }
            | HubError::DiskFull { file, .. }
            | HubError::Io { file, .. } => Some(file),
            HubError::Offline { .. } | HubError::Many(_) | HubError::Config(_) => None,
        }
    }

    /// What a final (non-retryable) HTTP status from a resolve URL means,
    /// read with the Hub's `X-Error-Code`. Both backends use it.
    pub fn from_status(
        file: &HubFile,
        endpoint: &str,
        status: u16,
        error_code: Option<&str>,
        token_sent: bool,
    ) -> HubError {
        let file = file.clone();
        let not_found = |kind| HubError::NotFound {
            file: file.clone(),
            kind,
        };
        match (status, error_code.unwrap_or("")) {
            (_, "RepoNotFound") => not_found(NotFoundKind::Repo),
            (_, "RevisionNotFound") => not_found(NotFoundKind::Revision),
            (404, _) => not_found(NotFoundKind::Entry),
            (401, "GatedRepo") => HubError::Gated { file },
            (401, _) => HubError::Unauthorized { file, token_sent },
            (403, _) => HubError::Forbidden { file },
            _ => HubError::Http {
                file,
                status,
                endpoint: endpoint.to_string(),
            },
        }
    }

    /// Joins the errors of a batch: one stays itself, several become [`HubError::Many`].
    pub fn from_many(mut errors: Vec<HubError>) -> Option<HubError> {
        match errors.len() {
            0 => None,
            1 => errors.pop(),
            _ => Some(HubError::Many(errors)),
        }
    }
}

fn list_files(files: &[HubFile]) -> String {
    files
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn list_errors(errors: &[HubError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gated_message_says_licence_and_token() {
        let e = HubError::Gated {
            file: HubFile::new("black-forest-labs/FLUX.1-schnell", "ae.safetensors"),
        };
        let s = e.to_string();
        assert!(s.contains("https://huggingface.co/black-forest-labs/FLUX.1-schnell"));
        assert!(s.contains("HF_TOKEN") && s.contains("licence") && s.contains("ae.safetensors"));
    }

    #[test]
    fn offline_lists_every_missing_file() {
        let e = HubError::Offline {
            missing: vec![HubFile::new("a/b", "x.json"), HubFile::new("c/d", "y.bin")],
            cache: PathBuf::from("/cache"),
        };
        let s = e.to_string();
        assert!(s.contains("2 file(s)") && s.contains("x.json") && s.contains("c/d"));
    }
}
