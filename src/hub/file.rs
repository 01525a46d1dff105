use std::fmt;

use serde::{Deserialize, Serialize};

use super::HubError;

/// One file of one Hub repository at one revision.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
pub struct HubFile {
    /// `org/name`, e.g. `black-forest-labs/FLUX.1-schnell`.
    pub repo: String,
    /// A branch, tag, `refs/pr/N` or commit hash.
    #[serde(default = "default_revision")]
    pub revision: String,
    /// The file's path inside the repository, `/`-separated.
    pub path: String,
}

fn default_revision() -> String {
    "main".to_string()
}

impl HubFile {
    /// A file on the `main` revision.
    pub fn new(repo: impl Into<String>, path: impl Into<String>) -> Self {
        Self {
            repo: repo.into(),
            revision: default_revision(),
            path: path.into(),
        }
    }

    /// The same file at another revision.
    pub fn at_revision(mut self, revision: impl Into<String>) -> Self {
        self.revision = revision.into();
        self
    }

    /// Rejects names that could not come from the Hub or that would escape a
    /// cache folder once turned into a local path.
    pub fn validate(&self) -> Result<(), HubError> {
        let invalid = |reason: &str| HubError::InvalidFile {
            file: self.clone(),
            reason: reason.to_string(),
        };
        let mut parts = self.repo.split('/');
        let (Some(org), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(invalid("the repo must be `org/name`"));
        };
        let name_ok = |s: &str| {
            !s.is_empty()
                && !s.starts_with('.')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if !name_ok(org) || !name_ok(name) || self.repo.contains("--") {
            return Err(invalid(
                "the repo's org and name may hold letters, digits, '-', '_' and '.' (no '--')",
            ));
        }
        if self.revision.is_empty()
            || self
                .revision
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..")
            || self.revision.contains(['\\', '\0'])
        {
            return Err(invalid("the revision is not a valid branch, tag or commit"));
        }
        if !is_safe_relative_path(&self.path) {
            return Err(invalid(
                "the path must be relative, `/`-separated, without `.` or `..` segments",
            ));
        }
        Ok(())
    }

    /// `{endpoint}/{repo}/resolve/{revision}/{path}`, with a `/` inside the
    /// revision percent-encoded as the Hub expects (`refs%2Fpr%2F2`).
    pub fn resolve_url(&self, endpoint: &str) -> String {
        let endpoint = endpoint.trim_end_matches('/');
        let revision = encode_segment(&self.revision);
        let path: Vec<String> = self.path.split('/').map(encode_segment).collect();
        format!(
            "{endpoint}/{}/resolve/{revision}/{}",
            self.repo,
            path.join("/")
        )
    }
}

/// True for a non-empty relative `/`-separated path with no `.`, `..` or empty
/// segments, no backslashes and no NUL: one that cannot leave the folder it is
/// joined to.
pub(crate) fn is_safe_relative_path(path: &str) -> bool {
    !path.is_empty()
        && !path.contains(['\\', '\0'])
        && path
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..")
        && path.chars().nth(1) != Some(':')
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl fmt::Display for HubFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` in `{}` (revision `{}`)",
            self.path, self.repo, self.revision
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_url_encodes_revision_slashes() {
        let f = HubFile::new("google/t5-v1_1-xxl", "model.safetensors").at_revision("refs/pr/2");
        assert_eq!(
            f.resolve_url("https://huggingface.co/"),
            "https://huggingface.co/google/t5-v1_1-xxl/resolve/refs%2Fpr%2F2/model.safetensors"
        );
        let nested = HubFile::new("a/b", "text_encoder/my file.json");
        assert_eq!(
            nested.resolve_url("http://h"),
            "http://h/a/b/resolve/main/text_encoder/my%20file.json"
        );
    }

    #[test]
    fn validation_rejects_escapes() {
        for path in [
            "../x",
            "a/../../x",
            "/etc/passwd",
            "a//b",
            "a\\b",
            "",
            "./a",
            "C:x",
        ] {
            assert!(
                HubFile::new("a/b", path).validate().is_err(),
                "{path} accepted"
            );
        }
        for repo in ["a", "a/b/c", "../b", "a/..", "a--b/c", "a/b c"] {
            assert!(
                HubFile::new(repo, "f").validate().is_err(),
                "{repo} accepted"
            );
        }
        assert!(HubFile::new("a/b", "f")
            .at_revision("refs/../x")
            .validate()
            .is_err());
        HubFile::new(
            "black-forest-labs/FLUX.1-schnell",
            "text_encoder_2/config.json",
        )
        .at_revision("refs/pr/2")
        .validate()
        .unwrap();
    }

    #[test]
    fn display_names_repo_revision_and_path() {
        let s = HubFile::new("o/n", "p.json").at_revision("v1").to_string();
        assert!(s.contains("o/n") && s.contains("v1") && s.contains("p.json"));
    }
}
