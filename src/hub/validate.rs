//! Checking a [`HubFile`]'s names before they become a URL or a cache path.
//! Apart from the file itself, because the error it returns names the file.

use super::error::HubError;
use super::file::HubFile;

impl HubFile {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
