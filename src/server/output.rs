//! What answers and events share: encoding an image, its timings, the
//! time, and an image's URL.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::api_error::ApiError;
use super::state::AppState;
use crate::flux::{Image, Timings};
use crate::protocol::{OutputFormat, StageTimings};

/// The image in its output format, on the blocking pool: a 2048² image
/// takes tens to hundreds of milliseconds to compress.
pub(super) async fn encode(
    image: Image,
    format: OutputFormat,
    quality: Option<u8>,
) -> Result<Vec<u8>, ApiError> {
    tokio::task::spawn_blocking(move || image.encode(format, quality))
        .await
        .map_err(|e| ApiError::internal(format!("encoding the image: {e}")))?
        .map_err(|e| ApiError::from_flux(&e))
}

/// What the images always are, whatever `background` asked.
pub(super) const OPAQUE: &str = "opaque";

/// The engine's timings as the API reports them, in milliseconds.
pub(super) fn stage_timings(t: &Timings) -> StageTimings {
    let ms = |d: Duration| (d.as_secs_f64() * 1e3).round() as u64;
    StageTimings {
        load_ms: ms(t.load),
        text_encoding_ms: ms(t.text_encoding),
        vae_encode_ms: ms(t.vae_encode),
        steps_ms: t.steps.iter().map(|d| ms(*d)).collect(),
        vae_decode_ms: ms(t.vae_decode),
        total_ms: ms(t.total),
    }
}

/// Seconds since the Unix epoch, as `created` fields want.
pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Under `--public-url` when set; else relative (`/v1/images/ID.png`), to
/// be resolved against the URL the client called. Never from the request's
/// `Host`, which the client controls and which says nothing of the scheme or
/// of a proxy in front.
pub(super) fn image_url(state: &AppState, name: &str) -> String {
    format!(
        "{}/v1/images/{name}",
        state.public_url.as_deref().unwrap_or("")
    )
}
