//! What the Hub says about a file before any byte moves: commit, ETag, size,
//! and where the bytes are. The token goes only to the endpoint's own origin
//! (scheme, host and port), as Python `huggingface_hub` sends it: never to
//! the CDN that the Hub redirects large files to.

use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_LENGTH, ETAG, LOCATION, RETRY_AFTER};
use reqwest::{RequestBuilder, StatusCode, Url};

use super::token::Secret;
use crate::hub::error::HubError;
use crate::hub::file::HubFile;
use crate::hub::retry::{is_transient_status, parse_retry_after, Failure};

/// The metadata of one file at one commit.
#[derive(Clone, Debug)]
pub(crate) struct RemoteFile {
    /// The commit the revision resolved to.
    pub commit: String,
    /// sha256 for LFS files, git blob sha1 otherwise; names the blob.
    pub etag: String,
    /// Its size in bytes.
    pub size: u64,
}

/// What one `HEAD` learnt: the metadata, and the URL that serves the bytes
/// (the CDN's, when the Hub redirects there).
#[derive(Clone, Debug)]
pub(crate) struct Head {
    /// The file's metadata.
    pub remote: RemoteFile,
    /// Where its bytes are.
    pub location: Url,
}

/// Renamed repositories answer with relative redirects; a few are plenty.
const MAX_RELATIVE_REDIRECTS: usize = 5;

/// True when both URLs have the same scheme, host and port.
pub(crate) fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// The endpoint as a URL, to compare origins with.
pub(crate) fn endpoint_url(endpoint: &str) -> Result<Url, HubError> {
    Url::parse(endpoint).map_err(|e| HubError::Config(format!("bad endpoint {endpoint}: {e}")))
}

/// Adds the token when `url` is on the endpoint's origin; says whether it did.
pub(crate) fn authorize(
    request: RequestBuilder,
    url: &Url,
    endpoint: &Url,
    token: Option<&Secret>,
) -> (RequestBuilder, bool) {
    match token {
        Some(token) if same_origin(url, endpoint) => (
            request.header(AUTHORIZATION, format!("Bearer {}", token.expose())),
            true,
        ),
        _ => (request, false),
    }
}

/// One `HEAD` on the resolve URL, following only relative redirects, as
/// Python does: an absolute one goes to the CDN, and the Hub's own headers
/// are on it.
pub(crate) async fn head(
    http: &reqwest::Client,
    endpoint: &str,
    token: Option<&Secret>,
    file: &HubFile,
) -> Result<Head, Failure<HubError>> {
    let base = endpoint_url(endpoint).map_err(Failure::Fatal)?;
    let mut url = Url::parse(&file.resolve_url(endpoint))
        .map_err(|e| Failure::Fatal(HubError::Config(format!("bad endpoint {endpoint}: {e}"))))?;
    for _ in 0..=MAX_RELATIVE_REDIRECTS {
        let (request, token_sent) = authorize(http.head(url.clone()), &url, &base, token);
        let response = request.send().await.map_err(|e| {
            Failure::transient(format!("HEAD {}: {}", strip_query(&url), describe(e)))
        })?;
        let status = response.status();
        let headers = response.headers();
        if status.is_redirection() {
            match redirect(&url, headers) {
                Some(Redirect::Relative(next)) => {
                    url = next;
                    continue;
                }
                Some(Redirect::Absolute(cdn)) => {
                    let remote = parse_metadata(file, headers).map_err(Failure::Fatal)?;
                    return Ok(Head {
                        remote,
                        location: cdn,
                    });
                }
                None => {}
            }
        }
        if status.is_success() || status.is_redirection() {
            let remote = parse_metadata(file, headers).map_err(Failure::Fatal)?;
            return Ok(Head {
                remote,
                location: url,
            });
        }
        return Err(classify_status(file, endpoint, status, headers, token_sent));
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
    if is_transient_status(status.as_u16()) {
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

/// `Retry-After`, as delta-seconds or an HTTP date.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<std::time::Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(value, crate::hub::retry::now())
}

/// Where a redirect points.
pub(crate) enum Redirect {
    /// On the same origin: followed, with the token.
    Relative(Url),
    /// Elsewhere (the CDN); a protocol-relative `//host/...` counts as elsewhere.
    Absolute(Url),
}

pub(crate) fn redirect(base: &Url, headers: &HeaderMap) -> Option<Redirect> {
    let location = headers.get(LOCATION)?.to_str().ok()?;
    let next = base.join(location).ok()?;
    let relative = Url::parse(location).is_err() && !location.starts_with("//");
    Some(if relative && same_origin(base, &next) {
        Redirect::Relative(next)
    } else {
        Redirect::Absolute(next)
    })
}

/// Signed CDN URLs carry credentials in their query; never print those.
pub(crate) fn strip_query(url: &Url) -> String {
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
    use crate::hub::error::NotFoundKind;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn the_token_goes_only_to_the_endpoints_origin() {
        let endpoint = Url::parse("https://huggingface.co").unwrap();
        let resolve = Url::parse("https://huggingface.co/o/n/resolve/main/f").unwrap();
        let follow = |location: &'static str| match redirect(
            &resolve,
            &headers(&[("location", location)]),
        ) {
            Some(Redirect::Relative(u)) => ("relative", u.to_string()),
            Some(Redirect::Absolute(u)) => ("absolute", u.to_string()),
            None => ("none", String::new()),
        };
        assert_eq!(
            follow("/o/renamed/resolve/main/f"),
            (
                "relative",
                "https://huggingface.co/o/renamed/resolve/main/f".into()
            )
        );
        assert_eq!(follow("//cdn.example/x").0, "absolute");
        assert_eq!(follow("https://cdn-lfs.hf.co/x?sig=1").0, "absolute");

        let sent = |url: &str| {
            let url = Url::parse(url).unwrap();
            let secret = Secret("hf_x".into());
            let (request, sent) = authorize(
                reqwest::Client::new().get(url.clone()),
                &url,
                &endpoint,
                Some(&secret),
            );
            let has_header = request
                .build()
                .unwrap()
                .headers()
                .contains_key(AUTHORIZATION);
            assert_eq!(sent, has_header);
            sent
        };
        assert!(sent("https://huggingface.co/o/n/resolve/main/f"));
        assert!(sent("https://huggingface.co:443/x"), "the default port");
        assert!(!sent("https://cdn-lfs.huggingface.co/x"), "another host");
        assert!(!sent("http://huggingface.co/x"), "another scheme");
        assert!(!sent("https://huggingface.co:8443/x"), "another port");
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
