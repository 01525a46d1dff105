//! What the browser client asks of `schnell serve` and what it makes of the
//! answers: the form's checks, the request body, the stream's events and API
//! errors, on `crate::protocol`'s types. Plain Rust, so it is tested
//! natively too.

use super::sse::SseEvent;
use crate::limits::{check_side, check_steps, check_strength};
use crate::protocol::{self, ErrorBody, ImagesRequest, OutputFormat, ResponseFormat, Size};
pub use crate::protocol::{Readiness, Tokenizers};

/// The form's settings, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    /// What the image shows.
    pub prompt: String,
    /// Width in pixels, within [`crate::limits`].
    pub width: u32,
    /// Height in pixels, within [`crate::limits`].
    pub height: u32,
    /// Denoising steps.
    pub steps: u32,
    /// `None`: the server picks one and reports it.
    pub seed: Option<u64>,
    /// With an image to edit: how much of it to repaint.
    pub strength: Option<f64>,
}

/// A form field at fault, by its element id, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FieldError {
    /// The element id of the field at fault.
    pub field: &'static str,
    /// Why, in words for the person filling the form.
    pub message: String,
}

impl FieldError {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

impl Params {
    /// From the form's raw text; the error names the first field at fault.
    pub fn from_form(
        prompt: &str,
        width: &str,
        height: &str,
        steps: &str,
        seed: &str,
    ) -> Result<Self, FieldError> {
        if prompt.trim().is_empty() {
            return Err(FieldError::new("prompt", "Write a prompt first."));
        }
        let side = |field: &'static str, label: &str, text: &str| {
            let value: u32 = text.trim().parse().map_err(|_| {
                FieldError::new(field, format!("{label}: {text:?} is not a whole number."))
            })?;
            check_side(field, value)
                .map(|()| value)
                .map_err(|e| FieldError::new(field, format!("{label}: {e}.")))
        };
        let width = side("width", "Width", width)?;
        let height = side("height", "Height", height)?;
        let steps: u32 = steps.trim().parse().map_err(|_| {
            FieldError::new("steps", format!("Steps: {steps:?} is not a whole number."))
        })?;
        check_steps(steps).map_err(|e| FieldError::new("steps", format!("Steps: {e}.")))?;
        let seed = match seed.trim() {
            "" => None,
            text => Some(text.parse::<u64>().map_err(|_| {
                FieldError::new(
                    "seed",
                    format!(
                        "Seed: {text:?} is not a whole number from 0 to {}; leave it empty for a random one.",
                        u64::MAX
                    ),
                )
            })?),
        };
        Ok(Self {
            prompt: prompt.to_string(),
            width,
            height,
            steps,
            seed,
            strength: None,
        })
    }

    /// An edit, at the strength the form's text says.
    pub fn with_strength(mut self, text: &str) -> Result<Self, FieldError> {
        let strength: f64 = text.trim().parse().map_err(|_| {
            FieldError::new("strength", format!("Strength: {text:?} is not a number."))
        })?;
        check_strength(strength as f32)
            .map_err(|e| FieldError::new("strength", format!("Strength: {e}.")))?;
        self.strength = Some(strength);
        Ok(self)
    }

    /// An edit's text fields for `POST /v1/images/edits`, from the same
    /// request as a generation's (the image goes beside them as a file).
    pub fn form_fields(&self) -> Vec<(String, String)> {
        let body = serde_json::to_value(self.request_body()).expect("requests always serialise");
        let serde_json::Value::Object(fields) = body else {
            unreachable!("a request is an object")
        };
        fields
            .into_iter()
            .map(|(name, value)| match value {
                serde_json::Value::String(text) => (name, text),
                other => (name, other.to_string()),
            })
            .collect()
    }
    /// The body of `POST /v1/images/generations`, streamed, one partial
    /// image per step.
    pub fn request_body(&self) -> ImagesRequest {
        ImagesRequest {
            prompt: self.prompt.clone(),
            size: Some(Size::Pixels {
                width: self.width,
                height: self.height,
            }),
            steps: Some(self.steps),
            n: Some(1),
            stream: true,
            response_format: Some(ResponseFormat::B64Json),
            output_format: Some(OutputFormat::Png),
            seed: self.seed,
            strength: self.strength,
            ..Default::default()
        }
    }
}

/// One event of a streamed generation.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamEvent {
    /// A step is done; its preview as base64 PNG.
    Partial {
        /// The step just done, from 1.
        step: u32,
        /// All the request's steps.
        total: u32,
        /// The step's preview, base64 PNG.
        png_b64: String,
    },
    /// The image, as base64 PNG.
    Completed {
        /// The image, base64 PNG.
        png_b64: String,
        /// The seed it was made with.
        seed: u64,
    },
    /// The server gave up; its message.
    Failed {
        /// The server's message.
        message: String,
    },
    /// Something this client has no use for (warnings, newer events).
    Other,
}

impl StreamEvent {
    /// Reads one server-sent event (see [`protocol::StreamEvent::parse`]);
    /// the error says what is wrong with it.
    pub fn parse(event: &SseEvent) -> Result<Self, String> {
        Ok(
            match protocol::StreamEvent::parse(&event.event, &event.data)? {
                Some(protocol::StreamEvent::Partial(p) | protocol::StreamEvent::EditPartial(p)) => {
                    StreamEvent::Partial {
                        step: p.step,
                        total: p.total_steps,
                        png_b64: p.b64_json,
                    }
                }
                Some(
                    protocol::StreamEvent::Completed(c) | protocol::StreamEvent::EditCompleted(c),
                ) => StreamEvent::Completed {
                    png_b64: c.b64_json,
                    seed: c.seed,
                },
                Some(protocol::StreamEvent::Error { error }) => StreamEvent::Failed {
                    message: error.message,
                },
                Some(protocol::StreamEvent::Warning { .. }) | None => StreamEvent::Other,
            },
        )
    }
}

/// Tries of one request while the server's queue is full.
pub const QUEUE_TRIES: u32 = 5;

/// A refused request, from its status, OpenAI-shaped body and `Retry-After`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ApiFailure {
    /// The HTTP status.
    pub status: u16,
    /// The server's message (or the status's words, from a proxy).
    pub message: String,
    /// The request field at fault, if the server named one.
    pub param: Option<String>,
    /// OpenAI's error code, such as `queue_full`.
    pub code: Option<String>,
    /// `Retry-After`, in seconds.
    pub retry_after_s: Option<u32>,
}

impl ApiFailure {
    /// Reads a refusal from its status, body and `Retry-After` header.
    pub fn new(status: u16, body: &str, retry_after: Option<&str>) -> Self {
        // A proxy in between may answer in its own words, not OpenAI's shape.
        let error = serde_json::from_str::<ErrorBody>(body)
            .ok()
            .map(|b| b.error);
        Self {
            status,
            message: error
                .as_ref()
                .map(|e| e.message.clone())
                .unwrap_or_else(|| {
                    let body = body.trim();
                    if body.is_empty() {
                        "no message".to_string()
                    } else {
                        body.chars().take(300).collect()
                    }
                }),
            param: error.as_ref().and_then(|e| e.param.clone()),
            code: error.and_then(|e| e.code),
            retry_after_s: retry_after.and_then(|s| s.trim().parse().ok()),
        }
    }

    /// After try number `tries` (from 1) failed: how many seconds to wait
    /// before the next, or `None` to give up. Only a full queue (429) is worth
    /// another try, as `Retry-After` says (2 s if it does not), at most
    /// [`QUEUE_TRIES`] tries in all.
    pub fn retry_in(&self, tries: u32) -> Option<u32> {
        (self.status == 429 && tries < QUEUE_TRIES)
            .then(|| self.retry_after_s.unwrap_or(2).clamp(1, 60))
    }

    /// 503 while the model is still being fetched or loaded.
    pub fn is_not_ready(&self) -> bool {
        self.status == 503
    }

    /// The form fields the server blamed, by element id.
    pub fn fields(&self) -> &'static [&'static str] {
        match self.param.as_deref() {
            Some("size") => &["width", "height"],
            Some("steps") => &["steps"],
            Some("prompt") => &["prompt"],
            Some("seed") => &["seed"],
            Some("strength") => &["strength"],
            Some("image" | "mask") => &["edit-image"],
            _ => &[],
        }
    }

    /// What to show the person at the page.
    pub fn user_message(&self) -> String {
        match self.status {
            400 => format!("The server refused the request: {}", self.message),
            401 => "This server wants an API key: enter it under “API key” and try again.".into(),
            429 => format!("The server's queue is full: {}", self.message),
            503 => format!("The server is not ready yet: {}", self.message),
            status => format!("The server answered {status}: {}", self.message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_edit_sends_the_same_fields_as_text_with_its_strength() {
        let params = Params::from_form("a fox", "512", "256", "2", "9")
            .unwrap()
            .with_strength(" 0.6 ")
            .unwrap();
        let fields: std::collections::HashMap<String, String> =
            params.form_fields().into_iter().collect();
        for (name, value) in [
            ("prompt", "a fox"),
            ("size", "512x256"),
            ("steps", "2"),
            ("seed", "9"),
            ("stream", "true"),
            ("strength", "0.6"),
        ] {
            assert_eq!(fields.get(name).map(String::as_str), Some(value), "{name}");
        }
        let base = Params::from_form("a fox", "512", "256", "2", "").unwrap();
        for bad in ["0", "1.5", "lots"] {
            let e = base.clone().with_strength(bad).unwrap_err();
            assert_eq!(e.field, "strength", "{bad}");
        }
        assert!(!base
            .form_fields()
            .iter()
            .any(|(name, _)| name == "strength"));
    }

    #[test]
    fn the_form_is_checked_field_by_field() {
        let ok = Params::from_form("a fox", "512", " 768 ", "4", "").unwrap();
        assert_eq!(
            (ok.width, ok.height, ok.steps, ok.seed),
            (512, 768, 4, None)
        );
        let body = serde_json::to_value(ok.request_body()).unwrap();
        assert_eq!(body["size"], "512x768");
        assert_eq!(body["stream"], true);
        assert!(body.get("seed").is_none());
        let seeded = Params::from_form("a fox", "512", "512", "2", "42").unwrap();
        assert_eq!(
            serde_json::to_value(seeded.request_body()).unwrap()["seed"],
            42
        );

        for (form, field) in [
            (["  ", "512", "512", "4", ""], "prompt"),
            (["x", "500", "512", "4", ""], "width"),
            (["x", "512", "big", "4", ""], "height"),
            (["x", "512", "512", "0", ""], "steps"),
            (["x", "512", "512", "4", "-1"], "seed"),
        ] {
            let [prompt, width, height, steps, seed] = form;
            let e = Params::from_form(prompt, width, height, steps, seed).unwrap_err();
            assert_eq!(e.field, field, "{form:?}");
        }
        let e = Params::from_form("x", "500", "512", "4", "").unwrap_err();
        assert!(
            e.message.contains("nearest valid width is 496"),
            "{}",
            e.message
        );
    }

    fn sse(event: &protocol::StreamEvent) -> SseEvent {
        SseEvent {
            event: event.name().into(),
            data: event.data(),
        }
    }

    #[test]
    fn stream_events_are_read_or_named_as_broken() {
        let size = Size::Pixels {
            width: 256,
            height: 256,
        };
        let partial = protocol::StreamEvent::Partial(protocol::PartialImage {
            b64_json: "AAA=".into(),
            created_at: 1,
            size,
            quality: "auto".into(),
            background: "opaque".into(),
            output_format: OutputFormat::Png,
            partial_image_index: 1,
            step: 2,
            total_steps: 4,
            progress: 0.5,
            preview_size: size,
        });
        assert_eq!(
            StreamEvent::parse(&sse(&partial)).unwrap(),
            StreamEvent::Partial {
                step: 2,
                total: 4,
                png_b64: "AAA=".into()
            }
        );
        let done = protocol::StreamEvent::Completed(protocol::CompletedImage {
            b64_json: "BBB=".into(),
            created_at: 2,
            size,
            quality: "auto".into(),
            background: "opaque".into(),
            output_format: OutputFormat::Png,
            usage: protocol::Usage::new(3, 1, (256, 256)),
            seed: 7,
            timings: Default::default(),
        });
        assert_eq!(
            StreamEvent::parse(&sse(&done)).unwrap(),
            StreamEvent::Completed {
                png_b64: "BBB=".into(),
                seed: 7
            }
        );
        let failed = protocol::StreamEvent::Error {
            error: protocol::ErrorDetail {
                message: "out of memory".into(),
                kind: "server_error".into(),
                param: None,
                code: None,
            },
        };
        assert_eq!(
            StreamEvent::parse(&sse(&failed)).unwrap(),
            StreamEvent::Failed {
                message: "out of memory".into()
            }
        );
        let warning = protocol::StreamEvent::Warning {
            message: "truncated".into(),
        };
        assert_eq!(
            StreamEvent::parse(&sse(&warning)).unwrap(),
            StreamEvent::Other
        );
        let newer = SseEvent {
            event: "image_generation.something_new".into(),
            data: "{}".into(),
        };
        assert_eq!(StreamEvent::parse(&newer).unwrap(), StreamEvent::Other);
        let broken = SseEvent {
            event: "image_generation.completed".into(),
            data: r#"{"type":"image_generation.completed","b64_json":"x"}"#.into(),
        };
        assert!(StreamEvent::parse(&broken)
            .unwrap_err()
            .contains("completed"));
    }

    #[test]
    fn api_failures_say_what_went_wrong() {
        let body = r#"{"error":{"message":"`size` must be …","type":"invalid_request_error","param":"size","code":null}}"#;
        let f = ApiFailure::new(400, body, None);
        assert_eq!(f.fields(), &["width", "height"]);
        assert!(f.user_message().contains("`size` must be"));
        let full = ApiFailure::new(
            429,
            r#"{"error":{"message":"the queue is full","code":"queue_full"}}"#,
            Some("2"),
        );
        assert_eq!(full.retry_after_s, Some(2));
        assert_eq!(full.retry_in(1), Some(2));
        assert_eq!(full.retry_in(QUEUE_TRIES - 1), Some(2));
        assert_eq!(
            full.retry_in(QUEUE_TRIES),
            None,
            "gives up after {QUEUE_TRIES} tries"
        );
        let silent = ApiFailure::new(429, "", Some("soon"));
        assert_eq!(silent.retry_in(1), Some(2));
        let slow = ApiFailure::new(429, "", Some("3600"));
        assert_eq!(slow.retry_in(1), Some(60));
        assert_eq!(f.retry_in(1), None, "a 400 is not tried again");
        let proxy = ApiFailure::new(502, "Bad Gateway", None);
        assert_eq!(proxy.user_message(), "The server answered 502: Bad Gateway");
    }
}
