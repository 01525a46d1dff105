//! A request from its parsed fields to a place in the queue: its checks,
//! readiness, memory fit and admission.

use tokio::sync::OwnedSemaphorePermit;

use super::api_error::ApiError;
use super::fields::parse;
use super::state::AppState;
use crate::flux::{GenerateRequest, InitImage, Phase};
use crate::protocol::{partial_steps, ImagesRequest, OutputFormat, ResponseFormat, Size};

/// A request after every field was checked.
pub(super) struct Checked {
    /// As sent, for what the answer echoes.
    pub(super) wire: ImagesRequest,
    pub(super) request: GenerateRequest,
    pub(super) as_url: bool,
    pub(super) format: OutputFormat,
    /// The steps after which a stream sends a partial image.
    pub(super) partial_steps: Vec<u32>,
}

impl Checked {
    /// The size the images will have.
    pub(super) fn size(&self) -> Size {
        Size::Pixels {
            width: self.request.width,
            height: self.request.height,
        }
    }
}

/// A generation's JSON body.
pub(super) fn parse_json(body: &[u8]) -> Result<ImagesRequest, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(
            None,
            "the request body is empty: send JSON such as {\"prompt\": \"a red fox\", \"size\": \"1024x1024\"}",
        ));
    }
    let parsed = parse(&mut serde_json::Deserializer::from_slice(body))?;
    if parsed.strength.is_some() {
        return Err(ApiError::invalid(
            Some("strength"),
            "`strength` is for edits: send the image to /v1/images/edits",
        ));
    }
    Ok(parsed)
}

/// Checks a request, for a generation or (with `init`) an edit of an image.
pub(super) fn check(
    state: &AppState,
    parsed: ImagesRequest,
    init: Option<InitImage>,
) -> Result<Checked, ApiError> {
    parsed
        .check()
        .map_err(|e| ApiError::invalid(Some(e.field), e.message))?;
    if let Some(model) = &parsed.model {
        if model != state.model.id && model != state.model.key {
            return Err(ApiError::invalid(
                Some("model"),
                format!(
                    "unknown model {model:?}: this server runs {:?}",
                    state.model.id
                ),
            ));
        }
    }
    let mut request = GenerateRequest::new(parsed.prompt.clone());
    match init {
        None => {
            let (width, height) = parsed.pixels();
            request = request.size(width, height);
        }
        // `auto` (or no size) is the image's own proportions.
        Some(init) => {
            request = request.edit(init);
            if let Some(Size::Pixels { width, height }) = parsed.size {
                request = request.size(width, height);
            }
        }
    }
    request.steps = parsed.steps.unwrap_or(crate::flux::DEFAULT_STEPS);
    request.seed = parsed.seed;
    request.n = parsed.image_count();
    request.validate().map_err(|e| ApiError::from_flux(&e))?;
    let partial_steps = partial_steps(request.steps, parsed.partial_images);
    Ok(Checked {
        as_url: parsed.response_format == Some(ResponseFormat::Url),
        format: parsed.output_format.unwrap_or_default(),
        partial_steps,
        request,
        wire: parsed,
    })
}

/// 503 with the loading progress until the model is ready.
pub(super) fn ready(state: &AppState) -> Result<(), ApiError> {
    let status = state.engine.status();
    match status.phase {
        Phase::Ready => Ok(()),
        Phase::Failed => Err(ApiError::not_ready(format!(
            "the model failed to load: {}",
            state.redact.apply(&status.error.unwrap_or_default())
        ))),
        phase => {
            let (done, total) = status
                .files
                .values()
                .fold((0u64, 0u64), |(d, t), f| (d + f.done, t + f.total));
            Err(ApiError::not_ready(format!(
                "the model is not ready yet ({phase:?}: {:.1} of {:.1} GB downloaded); see /readyz",
                done as f64 / 1e9,
                total as f64 / 1e9
            )))
        }
    }
}

/// A place in the bounded queue, or 429.
pub(super) fn admit(state: &AppState) -> Result<OwnedSemaphorePermit, ApiError> {
    state
        .queue
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::queue_full(state.max_queue))
}

/// Refuses what would not fit in memory: 400 now, streamed or not, rather
/// than an error event after a 200.
pub(super) fn fits(state: &AppState, checked: &Checked) -> Result<(), ApiError> {
    let request = &checked.request;
    state
        .engine
        .check_size(request.width, request.height, request.init.is_some())
        .map_err(|e| state.flux_error(&e))
}
