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
        Self {
            status: StatusCode::UNAUTHORIZED,
            message: "missing or incorrect API key: send `Authorization: Bearer <key>`".into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_api_key"),
            retry_after: None,
        }
    }

    /// 413: the body is over `limit` bytes.
    pub fn too_large(limit: usize) -> Self {
        Self {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("the request body is larger than {}", byte_size(limit)),
            kind: "invalid_request_error",
            param: None,
            code: Some("request_too_large"),
            retry_after: None,
        }
    }

    /// 408: the body did not arrive within `limit`.
    pub fn body_timeout(limit: std::time::Duration) -> Self {
        Self {
            status: StatusCode::REQUEST_TIMEOUT,
            message: format!(
                "the request body did not arrive within {} s",
                limit.as_secs_f64()
            ),
            kind: "invalid_request_error",
            param: None,
            code: Some("request_timeout"),
            retry_after: None,
        }
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
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!("the queue is full ({max} requests); retry shortly"),
            kind: "rate_limit_error",
            param: None,
            code: Some("queue_full"),
            retry_after: Some(2),
        }
    }

    /// 429: all `max` places for edits' uploads are taken.
    pub fn uploads_full(max: usize) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!("{max} edits are uploading already; retry shortly"),
            kind: "rate_limit_error",
            param: None,
            code: Some("uploads_full"),
            retry_after: Some(2),
        }
    }

    /// 503: the model is not ready; the message says how far it is.
    pub fn not_ready(message: String) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message,
            kind: "server_error",
            param: None,
            code: Some("model_not_ready"),
            retry_after: Some(5),
        }
    }

    /// 404: no such endpoint or image.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("not_found"),
            retry_after: None,
        }
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
            FluxError::Cancelled => Self {
                status: StatusCode::from_u16(499).expect("valid status"),
                message: e.to_string(),
                kind: "invalid_request_error",
                param: None,
                code: Some("cancelled"),
                retry_after: None,
            },
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
/// A body limit in words: KiB below a MiB, else MiB.
pub fn byte_size(bytes: usize) -> String {
    if bytes < 1 << 20 {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}
