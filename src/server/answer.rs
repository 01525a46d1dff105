//! A request's images in one JSON answer (`stream: false`).

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use tokio::sync::OwnedSemaphorePermit;

use super::api_error::ApiError;
use super::output::{encode, image_url, stage_timings, unix_now, OPAQUE};
use super::request::Checked;
use super::state::AppState;
use crate::flux::{GenerateEvent, GenerateRequest, Generated};
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

/// The request's `n` images, in order (batched in the engine as memory
/// allows), each counted in the metrics as it arrives.
async fn run_to_end(
    state: &AppState,
    request: GenerateRequest,
) -> Result<Vec<Generated>, ApiError> {
    let made = state
        .engine
        .generate_images_with(request, |event| {
            if let GenerateEvent::Done { timings, .. } = event {
                state.metrics.image_done(timings);
            }
        })
        .await;
    match made {
        Ok(generation) => Ok(generation.images),
        Err(error) => Err(state.flux_error(&error)),
    }
}
