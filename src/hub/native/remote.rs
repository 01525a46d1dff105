//! What the Hub says about a file before any byte moves: commit, ETag, size.

use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_LENGTH, ETAG, LOCATION};
use reqwest::{StatusCode, Url};

use super::retry::{is_transient_status, retry_after, Failure};
use super::Secret;
use crate::hub::{HubError, HubFile};

/// The metadata of one file at one commit.
#[derive(Clone, Debug)]
pub(crate) struct RemoteFile {
    pub commit: String,
    /// sha256 for LFS files, git blob sha1 otherwise; names the blob.
    pub etag: String,
    pub size: u64,
}

/// Renamed repositories answer with relative redirects; a few are plenty.
const MAX_RELATIVE_REDIRECTS: usize = 5;

/// One `HEAD` on the resolve URL (following only relative redirects, as Python
/// does: an absolute one goes to the CDN, and the Hub's own headers are on it).
pub(crate) async fn head(
    http: &reqwest::Client,
    endpoint: &str,
    token: Option<&Secret>,
    file: &HubFile,
) -> Result<RemoteFile, Failure<HubError>> {
    let mut url = Url::parse(&file.resolve_url(endpoint))
        .map_err(|e| Failure::Fatal(HubError::Config(format!("bad endpoint {endpoint}: {e}"))))?;
    for _ in 0..=MAX_RELATIVE_REDIRECTS {
        let mut request = http.head(url.clone());
        if let Some(token) = token {
            request = request.header(AUTHORIZATION, format!("Bearer {}", token.expose()));
        }
        let response = request.send().await.map_err(|e| {
            Failure::transient(format!("HEAD {}: {}", strip_query(&url), describe(e)))
        })?;
        let status = response.status();
        let headers = response.headers();
        if status.is_redirection() {
            if let Some(next) = relative_location(&url, headers) {
                url = next;
                continue;
            }
        }
        if status.is_success() || status.is_redirection() {
            return parse_metadata(file, headers).map_err(Failure::Fatal);
        }
        return Err(classify_status(
            file,
            endpoint,
            status,
            headers,
            token.is_some(),
        ));
    }
    Err(Failure::Fatal(HubError::Protocol {
        file: file.clone(),
        reason: "too many redirects".into(),
    }))
}

/// Maps an error status to what the user must hear.
pub(crate) fn classify_status(
    file: &HubFile,
    endpoint: &str,
    status: StatusCode,
    headers: &HeaderMap,
    token_sent: bool,
) -> Failure<HubError> {
    let code = headers
        .get("x-error-code")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let file = file.clone();
    if is_transient_status(status) {
        return Failure::Transient {
            reason: format!("HTTP {status}"),
            retry_after: retry_after(headers),
            made_progress: false,
        };
    }
    let code = (!code.is_empty()).then_some(code);
    Failure::Fatal(HubError::from_status(
        &file,
        endpoint,
        status.as_u16(),
        code,
        token_sent,
    ))
}

fn parse_metadata(file: &HubFile, headers: &HeaderMap) -> Result<RemoteFile, HubError> {
    let protocol = |reason: String| HubError::Protocol {
        file: file.clone(),
        reason,
    };
    let text = |name: &str| -> Option<String> {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.trim().to_string())
    };
    let commit = text("x-repo-commit").ok_or_else(|| {
        protocol("no X-Repo-Commit header: is the endpoint a Hugging Face Hub?".into())
    })?;
    let etag = text("x-linked-etag")
        .or_else(|| text(ETAG.as_str()))
        .map(|e| e.trim_start_matches("W/").trim_matches('"').to_string())
        .filter(|e| !e.is_empty())
        .ok_or_else(|| protocol("no ETag header".into()))?;
    if etag.contains(['/', '\\']) || etag.starts_with('.') {
        return Err(protocol(format!("unsafe ETag {etag:?}")));
    }
    let size = text("x-linked-size")
        .or_else(|| text(CONTENT_LENGTH.as_str()))
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| protocol("no size (X-Linked-Size or Content-Length)".into()))?;
    if !super::cache::is_commit_hash(&commit) {
        return Err(protocol(format!(
            "X-Repo-Commit {commit:?} is not a commit hash"
        )));
    }
    Ok(RemoteFile { commit, etag, size })
}

fn relative_location(base: &Url, headers: &HeaderMap) -> Option<Url> {
    let location = headers.get(LOCATION)?.to_str().ok()?;
    if Url::parse(location).is_ok() {
        return None; // absolute: the CDN
    }
    base.join(location).ok()
}

/// Signed CDN URLs carry credentials in their query; never print those.
fn strip_query(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.to_string()
}

/// reqwest's message with its cause chain, but without the URL it appends.
pub(crate) fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::NotFoundKind;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn lfs_metadata_prefers_linked_headers() {
        let h = headers(&[
            ("x-repo-commit", "0123456789abcdef0123456789abcdef01234567"),
            ("etag", "\"cdn-etag\""),
            ("x-linked-etag", "\"aaaa\""),
            ("x-linked-size", "12345"),
            ("content-length", "1"),
        ]);
        let m = parse_metadata(&HubFile::new("o/n", "f"), &h).unwrap();
        assert_eq!((m.etag.as_str(), m.size), ("aaaa", 12345));
    }

    #[test]
    fn statuses_map_to_named_errors() {
        let f = HubFile::new("black-forest-labs/FLUX.1-schnell", "ae.safetensors");
        let gated = classify_status(
            &f,
            "e",
            StatusCode::UNAUTHORIZED,
            &headers(&[("x-error-code", "GatedRepo")]),
            false,
        );
        assert!(matches!(gated, Failure::Fatal(HubError::Gated { .. })));
        let missing = classify_status(
            &f,
            "e",
            StatusCode::NOT_FOUND,
            &headers(&[("x-error-code", "RevisionNotFound")]),
            false,
        );
        assert!(matches!(
            missing,
            Failure::Fatal(HubError::NotFound {
                kind: NotFoundKind::Revision,
                ..
            })
        ));
        let busy = classify_status(
            &f,
            "e",
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[("retry-after", "2")]),
            false,
        );
        assert!(matches!(
            busy,
            Failure::Transient { retry_after: Some(d), .. } if d.as_secs() == 2
        ));
    }
}
