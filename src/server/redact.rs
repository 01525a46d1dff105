//! Local paths out of what clients see: error messages name files as
//! `repo/path at /home/…/blobs/…`, which is for the log, not for the world.

use std::path::Path;

/// Replaces known local folders (as given and as resolved) with a name.
#[derive(Default)]
pub struct Redactor {
    /// Longest first, so that a folder inside another is replaced whole.
    prefixes: Vec<(String, &'static str)>,
}

impl Redactor {
    /// Hides `dir`, and where it really is once links are followed.
    pub async fn add(&mut self, dir: &Path, name: &'static str) {
        let mut forms = vec![dir.to_path_buf()];
        if let Ok(canonical) = tokio::fs::canonicalize(dir).await {
            forms.push(canonical);
        }
        if let Ok(cwd) = std::env::current_dir() {
            if dir.is_relative() {
                forms.push(cwd.join(dir));
            }
        }
        for form in forms {
            let text = form.to_string_lossy().trim_end_matches('/').to_string();
            // "/" or "" would replace every slash.
            if text.len() > 1 && !self.prefixes.iter().any(|(p, _)| *p == text) {
                self.prefixes.push((text, name));
            }
        }
        self.prefixes
            .sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
    }

    /// `text` with every known local path replaced by its placeholder.
    pub fn apply(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (prefix, name) in &self.prefixes {
            out = replace_whole(&out, prefix, name);
        }
        out
    }
}

/// Replaces `prefix` where it is a whole path (`/home/ann` in `/home/ann/x`,
/// not in `/home/anna`).
fn replace_whole(text: &str, prefix: &str, name: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        let after = &rest[at + prefix.len()..];
        let whole = after
            .chars()
            .next()
            .is_none_or(|c| !(c.is_alphanumeric() || matches!(c, '_' | '-' | '.')));
        out.push_str(&rest[..at]);
        out.push_str(if whole { name } else { prefix });
        rest = after;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn folders_are_replaced_longest_first() {
        let mut r = Redactor::default();
        r.add(Path::new("/home/ann"), "~").await;
        r.add(
            Path::new("/home/ann/.cache/huggingface/hub"),
            "$HF_HUB_CACHE",
        )
        .await;
        assert_eq!(
            r.apply("repo/ae.safetensors at /home/ann/.cache/huggingface/hub/models--x/blobs/abc: bad; see /home/ann/x"),
            "repo/ae.safetensors at $HF_HUB_CACHE/models--x/blobs/abc: bad; see ~/x"
        );
        assert_eq!(r.apply("/home/anna/x"), "/home/anna/x");
        r.add(Path::new("/"), "root").await;
        assert_eq!(r.apply("a/b"), "a/b");
    }
}
