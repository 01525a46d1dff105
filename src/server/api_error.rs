//! Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::flux::FluxError;
use crate::protocol::{ErrorBody, ErrorDetail};

/// One API error, ready to send.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, for the client.
    pub message: String,
    /// OpenAI's error `type`, such as `invalid_request_error`.
    pub kind: &'static str,
    /// The request field at fault, if one is.
    pub param: Option<&'static str>,
    /// OpenAI's error `code`, such as `queue_full`.
    pub code: Option<&'static str>,
    /// `Retry-After`, in seconds, when trying again may help.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// 400: the request is wrong; `param` names the field at fault.
    pub fn invalid(param: Option<&'static str>, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param,
            code: None,
            retry_after: None,
        }
    }

    /// 401: the API key is missing or wrong.
    pub fn unauthorized() -> Self {
        Self::refused(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "missing or incorrect API key: send `Authorization: Bearer <key>`".into(),
        )
    }

    /// 413: the body is over `limit` bytes.
    pub fn too_large(limit: usize) -> Self {
        Self::refused(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            format!("the request body is larger than {}", byte_size(limit)),
        )
    }

    /// 408: the body did not arrive within `limit`.
    pub fn body_timeout(limit: std::time::Duration) -> Self {
        Self::refused(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request body did not arrive within {} s",
                limit.as_secs_f64()
            ),
        )
    }

    /// 500: the server failed; the message says where.
    pub fn internal(message: String) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message,
            kind: "server_error",
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// 429: all `max` places in the queue are taken.
    pub fn queue_full(max: usize) -> Self {
        Self::busy(
            "queue_full",
            format!("the queue is full ({max} requests); retry shortly"),
        )
    }

    /// 429: all `max` places for edits' uploads are taken.
    pub fn uploads_full(max: usize) -> Self {
        Self::busy(
            "uploads_full",
            format!("{max} edits are uploading already; retry shortly"),
        )
    }

    /// 503: the model is not ready; the message says how far it is.
    pub fn not_ready(message: String) -> Self {
        Self::unavailable("model_not_ready", message)
    }

    /// 404: no such endpoint or image.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::refused(StatusCode::NOT_FOUND, "not_found", message.into())
    }

    /// A request error of `status` and `code` that no field is at fault for.
    pub fn refused(status: StatusCode, code: &'static str, message: String) -> Self {
        Self {
            status,
            message,
            kind: "invalid_request_error",
            param: None,
            code: Some(code),
            retry_after: None,
        }
    }

    /// 429 with `code`: places are taken; trying again in 2 s may help.
    fn busy(code: &'static str, message: String) -> Self {
        Self {
            kind: "rate_limit_error",
            retry_after: Some(2),
            ..Self::refused(StatusCode::TOO_MANY_REQUESTS, code, message)
        }
    }

    /// 503 with `code`: the server cannot answer now; in 5 s it may.
    fn unavailable(code: &'static str, message: String) -> Self {
        Self {
            kind: "server_error",
            retry_after: Some(5),
            ..Self::refused(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }

    /// 403: a browser page from another site sent this request.
    pub fn foreign_origin(origin: &str) -> Self {
        Self::refused(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            format!(
                "requests from web pages at {origin} are refused: start the server with `--cors-origin {origin}` to allow that site"
            ),
        )
    }

    /// 403: a browser sent this request for another site's page, which did
    /// not say which (no `Origin`).
    pub fn cross_site() -> Self {
        Self::refused(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "requests from another site's web pages are refused (`Sec-Fetch-Site: cross-site`): allow a site with `--cors-origin`".into(),
        )
    }

    /// 421: the `Host` is not a name this server answers to.
    pub fn foreign_host(host: &str) -> Self {
        Self::refused(
            StatusCode::MISDIRECTED_REQUEST,
            "host_not_allowed",
            format!(
                "this server does not answer to the host name {host:?}: start it with `--allowed-host {host}` (or `--public-url`) to allow it; a proxy in front should pass the original `Host`"
            ),
        )
    }

    /// 415: the body's `Content-Type` is not `expected`.
    pub fn media_type(given: Option<&str>, expected: &str) -> Self {
        Self::refused(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "send the body with `Content-Type: {expected}` (this one is {})",
                given.map_or("without one".to_string(), |g| format!("{g:?}"))
            ),
        )
    }

    /// 408: the body arrived slower than `min_rate` bytes a second over a
    /// `window`.
    pub fn body_too_slow(
        received: usize,
        elapsed: std::time::Duration,
        min_rate: u64,
        window: std::time::Duration,
    ) -> Self {
        Self::refused(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request body arrived too slowly: {} in {:.1} s, and under {}/s over the last {} s",
                byte_size(received),
                elapsed.as_secs_f64(),
                byte_size(min_rate as usize),
                window.as_secs_f64()
            ),
        )
    }

    /// 503: the server is stopping and this request ran out of time.
    pub fn shutting_down() -> Self {
        Self::unavailable(
            "shutting_down",
            "the server is shutting down and its grace period is over: this request was cancelled; try again (another replica may answer)".into(),
        )
    }

    /// 429: this client uses all the upload places one client may.
    pub fn client_uploads_full(per_client: usize) -> Self {
        Self::busy(
            "uploads_full",
            format!("this client is uploading {per_client} edits already, as many as one client may at once; retry shortly"),
        )
    }

    /// What a failed generation tells the client.
    pub fn from_flux(e: &FluxError) -> Self {
        match e {
            FluxError::InvalidRequest { field, .. } => {
                let param = match *field {
                    "width" | "height" => "size",
                    "steps" => "steps",
                    "seed" => "seed",
                    "prompt" => "prompt",
                    "strength" => "strength",
                    "n" => "n",
                    "image" => "image",
                    "mask" => "mask",
                    _ => "request",
                };
                Self::invalid(Some(param), e.to_string())
            }
            FluxError::TooLarge { .. } => Self {
                code: Some("image_too_large"),
                ..Self::invalid(Some("size"), e.to_string())
            },
            FluxError::Cancelled => Self::refused(
                StatusCode::from_u16(499).expect("valid status"),
                "cancelled",
                e.to_string(),
            ),
            _ => Self {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: e.to_string(),
                kind: "server_error",
                param: None,
                code: None,
                retry_after: None,
            },
        }
    }

    /// The `error` object of the body, and of a stream's error event.
    pub fn detail(&self) -> ErrorDetail {
        ErrorDetail {
            message: self.message.clone(),
            kind: self.kind.into(),
            param: self.param.map(str::to_string),
            code: self.code.map(str::to_string),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.detail(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
/// A body limit in words: bytes below a KiB, KiB below a MiB, else MiB.
pub fn byte_size(bytes: usize) -> String {
    if bytes < 1 << 10 {
        format!("{bytes} B")
    } else if bytes < 1 << 20 {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}
