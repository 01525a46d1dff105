//! Errors in OpenAI's shape, and `GET /readyz`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::hub::HubFile;

/// Every error answer: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// One error, as OpenAI describes it: a message, its kind, the field at fault
/// and a code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorDetail {
    /// What went wrong, for people to read.
    pub message: String,
    /// `invalid_request_error`, `server_error`, …
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The request field at fault, by its name on the wire.
    #[serde(default)]
    pub param: Option<String>,
    /// A stable name for the case (`queue_full`, `image_too_large`, …).
    #[serde(default)]
    pub code: Option<String>,
}

/// Where loading the model stands.
///
/// - `"idle"`: loading has not started yet.
/// - `"downloading"`: the model's files are being fetched from the Hugging Face Hub.
/// - `"loading"`: the weights are being read into memory.
/// - `"ready"`: the model is loaded and requests are served.
/// - `"failed"`: downloading or loading failed (`error` says why); a later attempt may succeed.
// Variants are documented above: docs on them would turn the schema's
// plain string enum into a oneOf (schemars), which some client generators
// read worse.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum Phase {
    #[default]
    Idle,
    Downloading,
    Loading,
    Ready,
    Failed,
}

/// The engine's tokenizer files, which the browser fetches through `/hub`
/// to count a prompt's tokens as the engine will.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Tokenizers {
    /// The T5 tokenizer's `tokenizer.json` on the Hub (T5 reads at most 256
    /// of a prompt's tokens).
    pub t5: HubFile,
    /// The CLIP tokenizer's `tokenizer.json` on the Hub.
    pub clip: HubFile,
}

/// Places in the request queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Queue {
    /// Requests admitted now, running or waiting.
    pub in_use: usize,
    /// Requests admitted at most (`--max-queue`); more are refused with 429.
    pub max: usize,
}

/// `GET /readyz`: 200 when `ready`, else 503 with the same body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Readiness {
    /// Whether requests are served now: `phase` is `"ready"`.
    pub ready: bool,
    /// Where loading the model stands.
    pub phase: Phase,
    /// The model's id, as `/v1/models` lists it.
    pub model: String,
    /// Bytes of the model's files downloaded so far, over all files; 0 when
    /// absent.
    #[serde(default)]
    pub bytes_done: u64,
    /// The model's files' total size in bytes, as far as known yet; 0 when
    /// absent.
    #[serde(default)]
    pub bytes_total: u64,
    /// Why the last attempt to download or load failed; null or absent when
    /// it did not.
    #[serde(default)]
    pub error: Option<String>,
    /// The engine's tokenizer files; absent from a server that does not name
    /// them.
    #[serde(default)]
    pub tokenizers: Option<Tokenizers>,
    /// How full the request queue is; zeros when absent.
    #[serde(default)]
    pub queue: Queue,
    /// Per file, the bytes done and total (informational: the engine's
    /// shape).
    #[serde(default)]
    pub files: serde_json::Value,
    /// The weights chosen (`--quant`, or auto's pick) and why.
    #[serde(default)]
    pub weights: serde_json::Value,
    /// The memory limit requests are checked against, and the largest
    /// square image under it (400 `image_too_large` beyond).
    #[serde(default)]
    pub memory: serde_json::Value,
    /// After a start that failed for a reason that may pass.
    #[serde(default)]
    pub retry: Option<Retry>,
}

/// When the server tries again to start the model after a failed start.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Retry {
    /// How many attempts to start have failed so far.
    pub failed_attempts: u32,
    /// Seconds until the next attempt, rounded up.
    pub next_in_s: f64,
}

/// `GET /v1/models`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ModelList {
    /// `"list"`.
    pub object: String,
    /// The models served: this server's one.
    pub data: Vec<Model>,
}

/// One model, as OpenAI's `/v1/models` describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Model {
    /// The model's id, which a request's `model` may name.
    pub id: String,
    /// `"model"`.
    pub object: String,
    /// When the server started (Unix seconds).
    pub created: u64,
    /// Who made the model: `"black-forest-labs"`.
    pub owned_by: String,
    /// Extension: the Hugging Face repository it comes from.
    pub hub_repo: String,
}

impl Readiness {
    /// Reads a `/readyz` body; the error says what was unexpected in it.
    pub fn parse(body: &str) -> Result<Self, String> {
        serde_json::from_str(body)
            .map_err(|e| format!("/readyz answered something unexpected: {e}"))
    }

    /// Whether loading failed: `phase` is `"failed"`.
    pub fn failed(&self) -> bool {
        self.phase == Phase::Failed
    }

    /// Bytes downloaded, as a fraction, while downloading.
    pub fn fraction(&self) -> Option<f64> {
        (self.phase == Phase::Downloading && self.bytes_total > 0)
            .then(|| self.bytes_done as f64 / self.bytes_total as f64)
    }

    /// One line on how far the server is.
    pub fn summary(&self) -> String {
        match self.phase {
            Phase::Ready => format!("{} is ready.", self.model),
            Phase::Failed => format!(
                "The model failed to load: {}",
                self.error.as_deref().unwrap_or("no reason given")
            ),
            Phase::Downloading => format!(
                "Downloading {}: {} of {} ({:.0}%).",
                self.model,
                human_bytes(self.bytes_done),
                human_bytes(self.bytes_total),
                self.fraction().unwrap_or(0.0) * 100.0
            ),
            Phase::Loading => format!("Loading {} into memory…", self.model),
            Phase::Idle => format!("{} is starting…", self.model),
        }
    }
}

/// Bytes in words: GB, MB or kB.
pub(crate) fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.1} GB", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1} MB", n as f64 / 1e6),
        n => format!("{:.0} kB", n as f64 / 1e3),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
