//! Why the server could not be set up.

use std::io;
use std::path::{Path, PathBuf};

/// Why the server could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// `--api-key` is empty, which would turn authentication off.
    #[error("the API key is empty: give a non-empty --api-key (or SCHNELL_API_KEY), or leave both unset to serve without a key")]
    EmptyApiKey,
    /// The key starts or ends with whitespace, which no header can carry.
    #[error("the API key starts or ends with whitespace, which no client can send in a header: remove it")]
    ApiKeyWhitespace,
    #[error("--public-url {url:?} {reason}")]
    /// `--public-url` is not an `http(s)` URL without query or fragment.
    PublicUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    #[error("{what} {}: {source}", path.display())]
    /// A folder the server needs could not be created or read.
    Io {
        /// What the server was doing.
        what: &'static str,
        /// The folder.
        path: PathBuf,
        /// Why it failed.
        source: io::Error,
    },
}

impl ServerError {
    /// Maps an I/O error on `path` to [`ServerError::Io`], saying `what` failed.
    pub(super) fn io<'a>(
        what: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(io::Error) -> Self + 'a {
        move |source| Self::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}
