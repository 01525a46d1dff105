use std::fmt;

use serde::{Deserialize, Serialize};

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
    fn display_names_repo_revision_and_path() {
        let s = HubFile::new("o/n", "p.json").at_revision("v1").to_string();
        assert!(s.contains("o/n") && s.contains("v1") && s.contains("p.json"));
    }
}
