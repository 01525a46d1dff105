//! The Hub token: kept out of logs, and read from a file only when first
//! needed.

use std::fmt;
use std::path::PathBuf;

/// A token that never shows itself in `Debug` output or logs.
#[derive(Clone)]
pub(crate) struct Secret(pub(super) String);

impl Secret {
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Where the token comes from; a token file is read lazily, asynchronously.
#[derive(Clone, Debug)]
pub(super) enum TokenSource {
    Given(Option<Secret>),
    File(PathBuf),
}
