//! `/v1`: OpenAI's Images API (`POST /v1/images/generations`), the images it
//! serves by URL, and `GET /v1/models`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use bytes::BytesMut;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::OwnedSemaphorePermit;

use super::errors::ApiError;
use super::AppState;
use crate::flux::{GenerateEvent, GenerateRequest, Image, Phase, Timings};

pub const MAX_IMAGES: u32 = 4;

/// The request body. Fields OpenAI has and FLUX has no use for (`quality`,
/// `style`, `user`, `background`, …) are accepted and ignored.
#[derive(Debug, Deserialize)]
struct ImagesRequest {
    prompt: Option<String>,
    model: Option<String>,
    n: Option<u32>,
    size: Option<String>,
    response_format: Option<String>,
    output_format: Option<String>,
    #[serde(default)]
    stream: bool,
    /// Extension: the seed of the first image (the next ones count up).
    seed: Option<u64>,
    /// Extension: denoising steps (default 4).
    steps: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Png,
    Jpeg,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Png => "png",
            Format::Jpeg => "jpeg",
        }
    }
    /// PNG or JPEG bytes, on the blocking pool: a 2048² image takes tens
    /// to hundreds of milliseconds to compress.
    async fn encode(self, image: Image) -> Result<Vec<u8>, ApiError> {
        tokio::task::spawn_blocking(move || match self {
            Format::Png => image.to_png(),
            Format::Jpeg => image.to_jpeg(),
        })
        .await
        .map_err(|e| ApiError::internal(format!("encoding the image: {e}")))?
        .map_err(|e| ApiError::from_flux(&e))
    }
}

/// A request after every field was checked.
struct Checked {
    request: GenerateRequest,
    n: u32,
    as_url: bool,
    format: Format,
    stream: bool,
}

/// The whole body, at most [`super::MAX_BODY`] bytes, within `timeout`: a
/// client trickling its body cannot hold a connection (or a shutdown) open.
async fn read_body(body: Body, timeout: Duration) -> Result<Bytes, ApiError> {
    let read = async {
        let mut stream = body.into_data_stream();
        let mut buf = BytesMut::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::invalid(None, format!("the request body could not be read: {e}"))
            })?;
            if buf.len() + chunk.len() > super::MAX_BODY {
                return Err(ApiError::too_large(super::MAX_BODY));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or_else(|_| Err(ApiError::body_timeout(timeout)))
}

fn check(state: &AppState, body: Bytes) -> Result<Checked, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(
            None,
            "the request body is empty: send JSON such as {\"prompt\": \"a red fox\", \"size\": \"1024x1024\"}",
        ));
    }
    let parsed: ImagesRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::invalid(
            None,
            format!("the body is not valid JSON for this endpoint: {e}"),
        )
    })?;
    let prompt = parsed
        .prompt
        .filter(|p| !p.trim().is_empty())
        .ok_or_else(|| {
            ApiError::invalid(Some("prompt"), "`prompt` is required and must not be empty")
        })?;
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
    let n = parsed.n.unwrap_or(1);
    if !(1..=MAX_IMAGES).contains(&n) {
        return Err(ApiError::invalid(
            Some("n"),
            format!("`n` must be 1 to {MAX_IMAGES}, not {n}"),
        ));
    }
    if parsed.stream && n != 1 {
        return Err(ApiError::invalid(
            Some("n"),
            "streaming makes one image: use n = 1 with stream = true",
        ));
    }
    let size = parsed.size.as_deref().unwrap_or("1024x1024");
    let (width, height) = size
        .split_once('x')
        .and_then(|(w, h)| Some((w.trim().parse::<u32>().ok()?, h.trim().parse::<u32>().ok()?)))
        .ok_or_else(|| {
            ApiError::invalid(
                Some("size"),
                format!("`size` must be \"WIDTHxHEIGHT\", such as \"1024x1024\", not {size:?}"),
            )
        })?;
    let as_url = match parsed.response_format.as_deref() {
        None | Some("b64_json") => false,
        Some("url") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                Some("response_format"),
                format!("`response_format` must be \"b64_json\" or \"url\", not {other:?}"),
            ))
        }
    };
    let format = match parsed.output_format.as_deref() {
        None | Some("png") => Format::Png,
        Some("jpeg") | Some("jpg") => Format::Jpeg,
        Some(other) => {
            return Err(ApiError::invalid(
                Some("output_format"),
                format!("`output_format` must be \"png\" or \"jpeg\", not {other:?}"),
            ))
        }
    };
    let mut request = GenerateRequest::new(prompt).size(width, height);
    request.steps = parsed.steps.unwrap_or(crate::flux::DEFAULT_STEPS);
    request.seed = parsed.seed;
    request.validate().map_err(|e| ApiError::from_flux(&e))?;
    Ok(Checked {
        request,
        n,
        as_url,
        format,
        stream: parsed.stream,
    })
}

/// 503 with the loading progress until the model is ready.
fn ready(state: &AppState) -> Result<(), ApiError> {
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
fn admit(state: &AppState) -> Result<OwnedSemaphorePermit, ApiError> {
    state
        .queue
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::queue_full(state.max_queue))
}

pub async fn generations(State(state): State<Arc<AppState>>, body: Body) -> Response {
    let body = match read_body(body, state.body_timeout).await {
        Ok(body) => body,
        Err(e) => return e.into_response(),
    };
    let checked = match check(&state, body) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = ready(&state) {
        return e.into_response();
    }
    // Too large for memory: 400 now, streamed or not, rather than an error
    // event after a 200.
    let (width, height) = (checked.request.width, checked.request.height);
    if let Err(e) = state.engine.check_size(width, height) {
        return state.flux_error(&e).into_response();
    }
    let permit = match admit(&state) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    if checked.stream {
        return stream(state, checked, permit).into_response();
    }
    // Dropping this future (the client went away) drops the engine's stream,
    // which cancels the job at its next step, and frees the queue place.
    let _permit = permit;
    let mut data = Vec::new();
    let mut request = checked.request.clone();
    let mut seed = request.seed.unwrap_or_else(crate::flux::random_seed);
    let mut timings = Vec::new();
    for _ in 0..checked.n {
        request.seed = Some(seed);
        let (image, used_seed, t) = match run_to_end(&state, request.clone()).await {
            Ok(done) => done,
            Err(e) => return e.into_response(),
        };
        let encoded = match checked.format.encode(image).await {
            Ok(bytes) => bytes,
            Err(e) => return e.into_response(),
        };
        let mut item = json!({ "seed": used_seed });
        if checked.as_url {
            let name = match state.images.put(encoded, checked.format.name()).await {
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
            item["url"] = json!(image_url(&state, &name));
        } else {
            item["b64_json"] = json!(base64::engine::general_purpose::STANDARD.encode(&encoded));
        }
        data.push(item);
        timings.push(timings_json(&t));
        seed = crate::limits::next_seed(seed);
    }
    Json(json!({
        "created": unix_now(),
        "data": data,
        "model": state.model.id,
        "size": format!("{}x{}", checked.request.width, checked.request.height),
        "output_format": checked.format.name(),
        "timings": timings,
    }))
    .into_response()
}

async fn run_to_end(
    state: &AppState,
    request: GenerateRequest,
) -> Result<(Image, u64, Timings), ApiError> {
    let mut events = std::pin::pin!(state.engine.generate(request));
    while let Some(event) = events.next().await {
        match event {
            GenerateEvent::Done {
                image,
                seed,
                timings,
            } => return Ok((image, seed, timings)),
            GenerateEvent::Failed { error } => return Err(state.flux_error(&error)),
            _ => {}
        }
    }
    Err(ApiError::from_flux(&crate::flux::FluxError::EngineStopped))
}

/// Server-sent events with OpenAI's names: `image_generation.partial_image` per
/// step (the step's preview), then `image_generation.completed`. Progress
/// fields (`step`, `total_steps`, `progress`) are extensions.
fn stream(
    state: Arc<AppState>,
    checked: Checked,
    permit: OwnedSemaphorePermit,
) -> Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>> {
    let size = format!("{}x{}", checked.request.width, checked.request.height);
    let format = checked.format;
    let errors = state.clone();
    let engine_events = state.engine.generate(checked.request);
    let events = engine_events
        .filter_map(move |event| {
            let size = size.clone();
            let errors = errors.clone();
            async move {
                let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
                let (name, data): (&str, Value) = match event {
                    GenerateEvent::Step { index, total, preview } => {
                        let png = preview.to_png().ok()?;
                        (
                            "image_generation.partial_image",
                            json!({
                                "type": "image_generation.partial_image",
                                "b64_json": b64(&png),
                                "partial_image_index": index - 1,
                                "created_at": unix_now(),
                                "size": size,
                                "output_format": "png",
                                "background": "opaque",
                                "step": index,
                                "total_steps": total,
                                "progress": index as f64 / total as f64,
                                "preview_size": format!("{}x{}", preview.width, preview.height),
                            }),
                        )
                    }
                    GenerateEvent::Done { image, seed, timings } => match format.encode(image).await {
                        Ok(bytes) => (
                            "image_generation.completed",
                            json!({
                                "type": "image_generation.completed",
                                "b64_json": b64(&bytes),
                                "created_at": unix_now(),
                                "size": size,
                                "output_format": format.name(),
                                "background": "opaque",
                                "seed": seed,
                                "timings": timings_json(&timings),
                            }),
                        ),
                        Err(e) => ("error", json!({ "type": "error", "error": e.body()["error"] })),
                    },
                    GenerateEvent::Failed { error } => (
                        "error",
                        json!({ "type": "error", "error": errors.flux_error(&error).body()["error"] }),
                    ),
                    GenerateEvent::Warning { message } => ("warning", json!({ "type": "warning", "message": message })),
                    _ => return None,
                };
                Some(Ok(Event::default().event(name).data(data.to_string())))
            }
        })
        // The queue place is held until the stream ends or the client leaves.
        .chain(futures::stream::once(async move {
            drop(permit);
            Ok(Event::default().comment("end"))
        }));
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

fn timings_json(t: &Timings) -> Value {
    let ms = |d: Duration| (d.as_secs_f64() * 1e3).round() as u64;
    json!({
        "load_ms": ms(t.load),
        "text_encoding_ms": ms(t.text_encoding),
        "steps_ms": t.steps.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
        "vae_decode_ms": ms(t.vae_decode),
        "total_ms": ms(t.total),
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Under `--public-url` when set; else relative (`/v1/images/ID.png`), to
/// be resolved against the URL the client called. Never from the request's
/// `Host`, which the client controls and which says nothing of the scheme or
/// of a proxy in front.
fn image_url(state: &AppState, name: &str) -> String {
    format!(
        "{}/v1/images/{name}",
        state.public_url.as_deref().unwrap_or("")
    )
}

/// `GET /v1/images/{id}.{png|jpeg}`: an image made with `response_format: "url"`.
pub async fn image(State(state): State<Arc<AppState>>, Path(file): Path<String>) -> Response {
    match state.images.get(&file).await {
        Some((bytes, content_type)) => {
            ([(header::CONTENT_TYPE, content_type)], bytes).into_response()
        }
        None => ApiError::not_found(format!(
            "no image {file:?}: it never existed or has expired"
        ))
        .into_response(),
    }
}

/// Any other path under `/v1`.
pub async fn unknown(method: Method, uri: Uri) -> Response {
    ApiError::not_found(format!("no such endpoint: {method} {}", uri.path())).into_response()
}

/// A known path with another method.
pub async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        message: format!("{} does not answer {method}", uri.path()),
        kind: "invalid_request_error",
        param: None,
        code: Some("method_not_allowed"),
        retry_after: None,
    }
    .into_response()
}

/// `GET /v1/models`.
pub async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": state.model.id,
            "object": "model",
            "created": state.started,
            "owned_by": "black-forest-labs",
            "hub_repo": state.model.key,
        }],
    }))
}
