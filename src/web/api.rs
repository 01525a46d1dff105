//! What the browser client asks of `schnell serve` and what it makes of the
//! answers: the form's checks, the request body, the stream's events, API
//! errors and `/readyz`. Plain Rust, so it is tested natively too.

use serde::Deserialize;
use serde_json::{json, Value};

use super::sse::SseEvent;
use crate::hub::HubFile;
use crate::limits::{check_side, check_steps};

/// The form's settings, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    pub prompt: String,
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    /// `None`: the server picks one and reports it.
    pub seed: Option<u64>,
}

/// A form field at fault, by its element id, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: &'static str,
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
        })
    }

    /// The body of `POST /v1/images/generations`, streamed.
    pub fn request_body(&self) -> Value {
        let mut body = json!({
            "prompt": self.prompt,
            "size": format!("{}x{}", self.width, self.height),
            "steps": self.steps,
            "n": 1,
            "stream": true,
            "response_format": "b64_json",
            "output_format": "png",
        });
        if let Some(seed) = self.seed {
            body["seed"] = json!(seed);
        }
        body
    }
}

/// One event of a streamed generation.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamEvent {
    /// A step is done; its preview as base64 PNG.
    Partial {
        step: u32,
        total: u32,
        png_b64: String,
    },
    /// The image, as base64 PNG.
    Completed { png_b64: String, seed: u64 },
    /// The server gave up; its message.
    Failed { message: String },
    /// Something this client has no use for (warnings, newer events).
    Other,
}

impl StreamEvent {
    /// Reads one server-sent event; the error says which field is missing.
    pub fn parse(event: &SseEvent) -> Result<Self, String> {
        let known = matches!(
            event.event.as_str(),
            "image_generation.partial_image" | "image_generation.completed" | "error"
        );
        if !known {
            return Ok(StreamEvent::Other);
        }
        let data: Value = serde_json::from_str(&event.data).map_err(|e| {
            format!(
                "the server sent a {} event that is not JSON: {e}",
                event.event
            )
        })?;
        let missing = |field: &str| format!("the server's {} event has no {field}", event.event);
        let text = |field: &str| {
            data[field]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| missing(field))
        };
        let number = |field: &str| data[field].as_u64().ok_or_else(|| missing(field));
        Ok(match event.event.as_str() {
            "image_generation.partial_image" => StreamEvent::Partial {
                step: number("step")? as u32,
                total: number("total_steps")? as u32,
                png_b64: text("b64_json")?,
            },
            "image_generation.completed" => StreamEvent::Completed {
                png_b64: text("b64_json")?,
                seed: number("seed")?,
            },
            _ => StreamEvent::Failed {
                message: data["error"]["message"]
                    .as_str()
                    .unwrap_or("the generation failed (no reason given)")
                    .to_string(),
            },
        })
    }
}

/// Tries of one request while the server's queue is full.
pub const QUEUE_TRIES: u32 = 5;

/// A refused request, from its status, OpenAI-shaped body and `Retry-After`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiFailure {
    pub status: u16,
    pub message: String,
    pub param: Option<String>,
    pub code: Option<String>,
    pub retry_after_s: Option<u32>,
}

impl ApiFailure {
    pub fn new(status: u16, body: &str, retry_after: Option<&str>) -> Self {
        let error = serde_json::from_str::<Value>(body)
            .ok()
            .map(|v| v["error"].clone())
            .unwrap_or(Value::Null);
        let field = |name: &str| error[name].as_str().map(str::to_string);
        Self {
            status,
            message: field("message").unwrap_or_else(|| {
                let body = body.trim();
                if body.is_empty() {
                    "no message".to_string()
                } else {
                    body.chars().take(300).collect()
                }
            }),
            param: field("param"),
            code: field("code"),
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

/// `GET /readyz`.
#[derive(Clone, Debug, Deserialize)]
pub struct Readiness {
    pub ready: bool,
    pub phase: String,
    pub model: String,
    #[serde(default)]
    pub bytes_done: u64,
    #[serde(default)]
    pub bytes_total: u64,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub tokenizers: Option<Tokenizers>,
}

/// The engine's tokenizer files, fetched through the server's `/hub`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Tokenizers {
    pub t5: HubFile,
    pub clip: HubFile,
}

impl Readiness {
    pub fn parse(body: &str) -> Result<Self, String> {
        serde_json::from_str(body)
            .map_err(|e| format!("/readyz answered something unexpected: {e}"))
    }

    pub fn failed(&self) -> bool {
        self.phase == "failed"
    }

    /// Bytes downloaded, as a fraction, while downloading.
    pub fn fraction(&self) -> Option<f64> {
        (self.phase == "downloading" && self.bytes_total > 0)
            .then(|| self.bytes_done as f64 / self.bytes_total as f64)
    }

    /// One line on how far the server is.
    pub fn summary(&self) -> String {
        match self.phase.as_str() {
            "ready" => format!("{} is ready.", self.model),
            "failed" => format!(
                "The model failed to load: {}",
                self.error.as_deref().unwrap_or("no reason given")
            ),
            "downloading" => format!(
                "Downloading {}: {} of {} ({:.0}%).",
                self.model,
                human_bytes(self.bytes_done),
                human_bytes(self.bytes_total),
                self.fraction().unwrap_or(0.0) * 100.0
            ),
            "loading" => format!("Loading {} into memory…", self.model),
            _ => format!("{} is starting…", self.model),
        }
    }
}

fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.1} GB", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1} MB", n as f64 / 1e6),
        n => format!("{:.0} kB", n as f64 / 1e3),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_is_checked_field_by_field() {
        let ok = Params::from_form("a fox", "512", " 768 ", "4", "").unwrap();
        assert_eq!(
            (ok.width, ok.height, ok.steps, ok.seed),
            (512, 768, 4, None)
        );
        let body = ok.request_body();
        assert_eq!(body["size"], "512x768");
        assert_eq!(body["stream"], true);
        assert!(body.get("seed").is_none());
        let seeded = Params::from_form("a fox", "512", "512", "2", "42").unwrap();
        assert_eq!(seeded.request_body()["seed"], 42);

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

    fn sse(event: &str, data: Value) -> SseEvent {
        SseEvent {
            event: event.into(),
            data: data.to_string(),
        }
    }

    #[test]
    fn stream_events_are_read_or_named_as_broken() {
        let partial = sse(
            "image_generation.partial_image",
            json!({"step": 2, "total_steps": 4, "b64_json": "AAA="}),
        );
        assert_eq!(
            StreamEvent::parse(&partial).unwrap(),
            StreamEvent::Partial {
                step: 2,
                total: 4,
                png_b64: "AAA=".into()
            }
        );
        let done = sse(
            "image_generation.completed",
            json!({"b64_json": "BBB=", "seed": 7}),
        );
        assert_eq!(
            StreamEvent::parse(&done).unwrap(),
            StreamEvent::Completed {
                png_b64: "BBB=".into(),
                seed: 7
            }
        );
        let failed = sse("error", json!({"error": {"message": "out of memory"}}));
        assert_eq!(
            StreamEvent::parse(&failed).unwrap(),
            StreamEvent::Failed {
                message: "out of memory".into()
            }
        );
        assert_eq!(
            StreamEvent::parse(&sse("warning", json!({}))).unwrap(),
            StreamEvent::Other
        );
        let broken = sse("image_generation.completed", json!({"b64_json": "x"}));
        assert!(StreamEvent::parse(&broken).unwrap_err().contains("seed"));
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

    #[test]
    fn readiness_reads_what_readyz_says() {
        let r = Readiness::parse(
            &json!({
                "ready": false, "phase": "downloading", "model": "flux-schnell",
                "bytes_done": 8_500_000_000u64, "bytes_total": 34_000_000_000u64,
                "tokenizers": {
                    "t5": {"repo": "black-forest-labs/FLUX.1-schnell", "revision": "main", "path": "tokenizer_2/tokenizer.json"},
                    "clip": {"repo": "openai/clip-vit-large-patch14", "revision": "main", "path": "tokenizer.json"}
                }
            })
            .to_string(),
        )
        .unwrap();
        assert_eq!(
            r.summary(),
            "Downloading flux-schnell: 8.5 GB of 34.0 GB (25%)."
        );
        assert_eq!(r.fraction(), Some(0.25));
        assert_eq!(r.tokenizers.unwrap().clip.path, "tokenizer.json");
        let failed =
            Readiness::parse(r#"{"ready":false,"phase":"failed","model":"m","error":"no token"}"#)
                .unwrap();
        assert!(failed.failed());
        assert_eq!(failed.summary(), "The model failed to load: no token");
        assert!(Readiness::parse("<html>").is_err());
    }
}
