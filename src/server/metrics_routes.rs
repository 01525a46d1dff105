//! `GET /metrics`, in OpenMetrics text (which Prometheus scrapes), and the
//! middleware that counts every answer. Behind the API key when one is set.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::api_error::ApiError;
use super::metrics::Readings;
use super::state::AppState;

/// Counts every answer by its status (middleware on the whole router).
pub async fn count_requests(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    state.metrics.count_answer(response.status().as_u16());
    response
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let readings = Readings {
        queue_in_use: (state.max_queue - state.queue.available_permits()) as u64,
        queue_max: state.max_queue as u64,
        downloaded: state.engine.status().files.values().map(|f| f.done).sum(),
        stored_images: state.images.bytes_in_memory() as u64,
        prompt_cache: state.engine.stats().prompt_cache_bytes,
    };
    let text = match state.metrics.render(&readings) {
        Ok(text) => text,
        Err(e) => return ApiError::internal(format!("encoding the metrics: {e}")).into_response(),
    };
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
