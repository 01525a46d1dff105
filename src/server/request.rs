//! A request from its parsed fields to a place in the queue: its checks,
//! readiness, memory fit and admission.

use tokio::sync::OwnedSemaphorePermit;

use super::api_error::ApiError;
use super::fields::{field_error, parse};
use super::state::AppState;
use crate::flux::{EngineStatus, GenerateRequest, InitImage, Phase};
use crate::protocol::{
    human_bytes, partial_steps, ImagesRequest, OutputFormat, ResponseFormat, Size,
};

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
    let not_json = |e: serde_json::Error| {
        ApiError::invalid(
            None,
            format!("the body is not one JSON value: {e}; send one object such as {{\"prompt\": \"a red fox\"}}"),
        )
    };
    // The fields, from the text (a field sent twice is an error).
    let mut text = serde_json::Deserializer::from_slice(body);
    let parsed = match parse(&mut text) {
        // Anything but whitespace after the value is an error too.
        Ok(parsed) => text.end().map(|()| parsed).map_err(not_json)?,
        Err(e) if e.inner().is_data() => return Err(field_error(e)),
        // Broken JSON, or what serde_json's parser reports as a syntax error
        // without saying what it found (a number where a string variant
        // belongs): from a value, the field fails with its type.
        Err(e) => {
            let value: serde_json::Value = serde_json::from_slice(body).map_err(not_json)?;
            return Err(field_error(parse(value).err().unwrap_or(e)));
        }
    };
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
        _ => Err(ApiError::not_ready(not_ready_yet(&status))),
    }
}

/// How far loading is, in words: the bytes only once some size is known
/// (offline, or while the cache is checked, none is), and the attempts that
/// failed before this one.
fn not_ready_yet(status: &EngineStatus) -> String {
    let (done, total) = status
        .files
        .values()
        .fold((0u64, 0u64), |(d, t), f| (d + f.done, t + f.total));
    let phase = match status.phase {
        Phase::Downloading if total == 0 => "finding its files".to_string(),
        Phase::Downloading => format!(
            "downloading: {} of {}",
            human_bytes(done),
            human_bytes(total)
        ),
        Phase::Loading => "loading it into memory".to_string(),
        _ => "starting".to_string(),
    };
    let retried = match &status.retry {
        Some(retry) => format!(", after {} failed attempt(s)", retry.failed),
        None => String::new(),
    };
    format!("the model is not ready yet ({phase}{retried}); see /readyz")
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flux::{FileProgress, NextAttempt};

    fn status(phase: Phase, files: &[(u64, u64)], retry: Option<u32>) -> EngineStatus {
        EngineStatus {
            phase,
            files: files
                .iter()
                .enumerate()
                .map(|(i, &(done, total))| (format!("r/f{i}"), FileProgress { done, total }))
                .collect(),
            error: None,
            weights: None,
            memory: None,
            retry: retry.map(|failed| NextAttempt {
                failed,
                at: std::time::SystemTime::now(),
            }),
        }
    }

    #[test]
    fn not_ready_says_what_is_known_and_no_empty_figures() {
        let offline = not_ready_yet(&status(Phase::Downloading, &[(0, 0), (0, 0)], Some(1)));
        assert_eq!(
            offline,
            "the model is not ready yet (finding its files, after 1 failed attempt(s)); see /readyz"
        );
        let downloading = not_ready_yet(&status(
            Phase::Downloading,
            &[(3_000_000, 12_000_000)],
            None,
        ));
        assert!(
            downloading.contains("downloading: 3.0 MB of 12.0 MB"),
            "{downloading}"
        );
        let loading = not_ready_yet(&status(Phase::Loading, &[(5, 5)], None));
        assert!(loading.contains("loading it into memory"), "{loading}");
        assert!(!loading.contains(" of "), "{loading}");
    }
}
