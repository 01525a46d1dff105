//! A request's images in one JSON answer (`stream: false`).

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use futures::StreamExt;
use tokio::sync::OwnedSemaphorePermit;

use super::api_error::ApiError;
use super::output::{encode, image_url, stage_timings, unix_now, OPAQUE};
use super::request::Checked;
use super::state::AppState;
use crate::flux::{GenerateEvent, GenerateRequest, Image, Timings};
use crate::protocol::{ImageData, ImagesResponse, Size, Usage};

/// Runs a checked request that holds its queue place to the end, and
/// answers with all its images.
pub(super) async fn images(
    state: Arc<AppState>,
    checked: Checked,
    permit: OwnedSemaphorePermit,
) -> Response {
    // Dropping this future (the client went away) drops the engine's stream,
    // which cancels the job at its next step, and frees the queue place.
    let _permit = permit;
    let (mut data, mut prompt_tokens) = (Vec::new(), 0);
    let n = checked.request.n;
    // The request moves to the engine; an edit's image is not copied.
    let Checked {
        wire,
        request,
        as_url,
        format,
        ..
    } = checked;
    let size = Size::Pixels {
        width: request.width,
        height: request.height,
    };
    let all_done = match run_to_end(&state, request).await {
        Ok(done) => done,
        Err(e) => return e.into_response(),
    };
    for done in all_done {
        prompt_tokens = done.prompt_tokens;
        let compression = wire.output_compression;
        let encoded = match encode(done.image, format, compression).await {
            Ok(bytes) => bytes,
            Err(e) => return e.into_response(),
        };
        let mut item = ImageData {
            seed: done.seed,
            timings: stage_timings(&done.timings),
            ..Default::default()
        };
        if as_url {
            let name = match state.images.put(encoded, format).await {
                Ok(name) => name,
                Err(e) => {
                    tracing::error!(error = %e, "cannot keep an image");
                    return ApiError::internal(format!(
                        "the image was made but could not be kept for its URL: {}",
                        state.redact.apply(&e.to_string())
                    ))
                    .into_response();
                }
            };
            item.url = Some(image_url(&state, &name));
        } else {
            item.b64_json = Some(base64::engine::general_purpose::STANDARD.encode(&encoded));
        }
        data.push(item);
    }
    Json(ImagesResponse {
        created: unix_now(),
        data,
        background: OPAQUE.into(),
        output_format: format,
        quality: wire.quality_echo(),
        size,
        usage: Usage::new(prompt_tokens as u64, n.into(), size.pixels()),
        model: state.model.id.to_string(),
    })
    .into_response()
}

/// A finished image and what it took.
struct Done {
    image: Image,
    seed: u64,
    timings: Timings,
    prompt_tokens: usize,
}

/// The request's `n` images, in order (batched in the engine as memory allows).
async fn run_to_end(state: &AppState, request: GenerateRequest) -> Result<Vec<Done>, ApiError> {
    let n = request.n as usize;
    let mut all = Vec::with_capacity(n);
    let mut events = std::pin::pin!(state.engine.generate(request));
    while let Some(event) = events.next().await {
        match event {
            GenerateEvent::Done {
                image,
                seed,
                timings,
                prompt_tokens,
            } => {
                state.metrics.image_done(&timings);
                all.push(Done {
                    image,
                    seed,
                    timings,
                    prompt_tokens,
                });
                if all.len() == n {
                    return Ok(all);
                }
            }
            GenerateEvent::Failed { error } => return Err(state.flux_error(&error)),
            _ => {}
        }
    }
    Err(ApiError::from_flux(&crate::flux::FluxError::EngineStopped))
}
