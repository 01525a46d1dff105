//! `/healthz` (the process answers) and `/readyz` (the model is loaded).

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::state::AppState;
use crate::protocol::{Phase, Queue, Readiness, Retry, Tokenizers};

/// Always quick: touches nothing but memory.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// 200 once the model is ready; until then 503 with the phase and, for every
/// file, the bytes done and total; 503 with the error if loading failed.
/// Always names the tokenizer files, for the browser's token counts.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let status = state.engine.status();
    let (done, total) = status
        .files
        .values()
        .fold((0u64, 0u64), |(d, t), f| (d + f.done, t + f.total));
    let code = if status.phase == Phase::Ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let queued = state.max_queue - state.queue.available_permits();
    // The browser counts prompt tokens with the engine's own tokenizers,
    // fetched through `/hub` once the server has them.
    let (t5_tokenizer, clip_tokenizer) = state.engine.tokenizer_files();
    let value = |v: serde_json::Result<serde_json::Value>| v.unwrap_or_default();
    let readiness = Readiness {
        ready: status.phase == Phase::Ready,
        phase: status.phase,
        model: state.model.id.to_string(),
        bytes_done: done,
        bytes_total: total,
        error: status.error.as_deref().map(|e| state.redact.apply(e)),
        tokenizers: Some(Tokenizers {
            t5: t5_tokenizer,
            clip: clip_tokenizer,
        }),
        queue: Queue {
            in_use: queued,
            max: state.max_queue,
        },
        files: value(serde_json::to_value(&status.files)),
        weights: value(serde_json::to_value(&status.weights)),
        memory: value(serde_json::to_value(&status.memory)),
        retry: status.retry.map(|next| Retry {
            failed_attempts: next.failed,
            next_in_s: next
                .at
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .as_secs_f64()
                .ceil(),
        }),
    };
    (code, Json(readiness)).into_response()
}
