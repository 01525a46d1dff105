//! The optional bearer key on `/v1` (and on `/hub`'s weights).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::api_error::ApiError;
use super::state::AppState;

/// Lets a request through when no key is set or it carries the key.
pub async fn require_key(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    match &state.api_key {
        Some(expected) if !bearer_matches(request.headers(), expected) => {
            ApiError::unauthorized().into_response()
        }
        _ => next.run(request).await,
    }
}

/// Whether `Authorization` is `Bearer <expected>`: the scheme in any case
/// (RFC 7235), the key compared in constant time.
pub fn bearer_matches(headers: &HeaderMap, expected: &str) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map_or("", |(_, token)| token.trim_start());
    // Never equal to an empty key: an empty key is refused at startup anyway.
    !expected.is_empty() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn the_scheme_is_case_insensitive_and_the_key_exact() {
        for ok in ["Bearer k1", "bearer k1", "BEARER k1", "Bearer  k1"] {
            assert!(bearer_matches(&with(ok), "k1"), "{ok}");
        }
        for bad in [
            "Bearer k2",
            "Basic k1",
            "Bearerk1",
            "k1",
            "Bearer k1x",
            "Bearer ",
        ] {
            assert!(!bearer_matches(&with(bad), "k1"), "{bad}");
        }
        assert!(!bearer_matches(&HeaderMap::new(), "k1"));
        assert!(!bearer_matches(&with("Bearer "), ""));
    }
}
