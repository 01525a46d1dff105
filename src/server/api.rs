//! `/v1`: OpenAI's Images API (`POST /v1/images/generations` and
//! `/v1/images/edits`), the images it serves by URL, and `GET /v1/models`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use bytes::BytesMut;
use futures::{Stream, StreamExt};
use tokio::sync::OwnedSemaphorePermit;

use super::errors::ApiError;
use super::AppState;
use crate::flux::{GenerateEvent, GenerateRequest, Image, InitImage, Mask, Phase, Timings};
use crate::protocol::{
    partial_steps, CompletedImage, ImageData, ImagesRequest, ImagesResponse, Model, ModelList,
    OutputFormat, PartialImage, ResponseFormat, Size, StageTimings, StreamEvent, Usage,
};

pub use crate::protocol::MAX_IMAGES;

/// The image in its output format, on the blocking pool: a 2048² image
/// takes tens to hundreds of milliseconds to compress.
async fn encode(
    image: Image,
    format: OutputFormat,
    quality: Option<u8>,
) -> Result<Vec<u8>, ApiError> {
    tokio::task::spawn_blocking(move || image.encode(format, quality))
        .await
        .map_err(|e| ApiError::internal(format!("encoding the image: {e}")))?
        .map_err(|e| ApiError::from_flux(&e))
}

/// A request after every field was checked.
struct Checked {
    /// As sent, for what the answer echoes.
    wire: ImagesRequest,
    request: GenerateRequest,
    as_url: bool,
    format: OutputFormat,
    /// The steps after which a stream sends a partial image.
    partial_steps: Vec<u32>,
}

impl Checked {
    fn size(&self) -> Size {
        Size::Pixels {
            width: self.request.width,
            height: self.request.height,
        }
    }
}

/// The whole body, at most `limit` bytes, within `timeout`: a client
/// trickling its body cannot hold a connection (or a shutdown) open.
async fn read_body(body: Body, limit: usize, timeout: Duration) -> Result<Bytes, ApiError> {
    let read = async {
        let mut stream = body.into_data_stream();
        let mut buf = BytesMut::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::invalid(None, format!("the request body could not be read: {e}"))
            })?;
            if buf.len() + chunk.len() > limit {
                return Err(ApiError::too_large(limit));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or_else(|_| Err(ApiError::body_timeout(timeout)))
}

/// The request's fields OpenAI's clients send, as `ApiError`'s `param`.
const FIELDS: [&str; 17] = [
    "prompt",
    "model",
    "n",
    "size",
    "response_format",
    "output_format",
    "output_compression",
    "stream",
    "partial_images",
    "quality",
    "background",
    "moderation",
    "style",
    "user",
    "seed",
    "steps",
    "strength",
];

/// A field's name as `ApiError`'s `param`, if it is one of the request's.
pub(super) fn field_param(name: &str) -> Option<&'static str> {
    FIELDS.iter().copied().find(|f| *f == name)
}

/// The request from its fields, JSON's or a form's. The error names the
/// field at fault (`n: invalid type: string "two", expected u32`), and
/// `param` says it too.
fn parse<'de, D: serde::Deserializer<'de, Error = serde_json::Error>>(
    fields: D,
) -> Result<ImagesRequest, ApiError> {
    serde_path_to_error::deserialize(fields).map_err(|e| {
        let path = e.path().to_string();
        // Broken JSON is nobody's field, though the path says where it broke.
        let param = field_param(&path).filter(|_| e.inner().is_data());
        let message = match param {
            Some(field) => format!("`{field}`: {}", e.inner()),
            None => format!(
                "the body is not valid JSON for this endpoint: {}",
                e.inner()
            ),
        };
        ApiError::invalid(param, message)
    })
}

/// A generation's JSON body.
fn parse_json(body: &[u8]) -> Result<ImagesRequest, ApiError> {
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
fn check(
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

/// Refuses what would not fit in memory: 400 now, streamed or not, rather
/// than an error event after a 200.
fn fits(state: &AppState, checked: &Checked) -> Result<(), ApiError> {
    let request = &checked.request;
    state
        .engine
        .check_size(request.width, request.height, request.init.is_some())
        .map_err(|e| state.flux_error(&e))
}

pub async fn generations(State(state): State<Arc<AppState>>, body: Body) -> Response {
    let checked = async {
        let body = read_body(body, super::MAX_BODY, state.body_timeout).await?;
        let checked = check(&state, parse_json(&body)?, None)?;
        ready(&state)?;
        fits(&state, &checked)?;
        Ok::<_, ApiError>(checked)
    };
    let checked = match checked.await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let permit = match admit(&state) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    respond(state, checked, permit).await
}

/// `POST /v1/images/edits`: FLUX image-to-image, inpainting with a mask.
pub async fn edits(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    // At most [`super::MAX_UPLOADS`] bodies (each up to
    // [`super::MAX_EDIT_BODY`]) are read and decoded at once, beside the
    // queue, so that slow uploads never hold its places.
    let upload = match ready(&state).and_then(|()| {
        state
            .uploads
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::uploads_full(super::MAX_UPLOADS))
    }) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let checked = async {
        let body = read_body(body, super::MAX_EDIT_BODY, state.upload_timeout).await?;
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let form = super::form::parse(content_type, body).await?;
        let parsed = parse(serde_json::Value::Object(form.fields))?;
        let strength = parsed
            .strength
            .map_or(crate::flux::DEFAULT_STRENGTH, |s| s as f32);
        // Decoding a large upload takes a while: off the runtime's threads.
        // The upload's place goes with it, so a client that leaves meanwhile
        // does not let more decodes start than there are places.
        let init = tokio::task::spawn_blocking(move || {
            let _upload = upload;
            let image = Image::decode(&form.image)
                .map_err(|reason| ApiError::invalid(Some("image"), format!("`image` {reason}")))?;
            let mask = form
                .mask
                .map(|bytes| Mask::decode(&bytes))
                .transpose()
                .map_err(|reason| ApiError::invalid(Some("mask"), format!("`mask` {reason}")))?;
            InitImage::new(image, mask, strength).map_err(|e| ApiError::from_flux(&e))
        })
        .await
        .map_err(|e| ApiError::internal(format!("decoding the image: {e}")))??;
        let checked = check(&state, parsed, Some(init))?;
        fits(&state, &checked)?;
        Ok::<_, ApiError>(checked)
    };
    let checked = match checked.await {
        Ok(checked) => checked,
        Err(e) => return e.into_response(),
    };
    match admit(&state) {
        Ok(permit) => respond(state, checked, permit).await,
        Err(e) => e.into_response(),
    }
}

/// Runs a checked request that holds its queue place: the images in one
/// answer, or a stream of events.
async fn respond(state: Arc<AppState>, checked: Checked, permit: OwnedSemaphorePermit) -> Response {
    if checked.wire.stream {
        return stream(state, checked, permit).into_response();
    }
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

/// What the images always are, whatever `background` asked.
const OPAQUE: &str = "opaque";

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

/// Server-sent events with OpenAI's names: `image_generation.partial_image`
/// (`image_edit.partial_image` for an edit) after the steps
/// [`partial_steps`] picks (each the step's preview), then
/// `image_generation.completed` (`image_edit.completed`). Progress fields (`step`, `total_steps`,
/// `progress`) are extensions.
fn stream(
    state: Arc<AppState>,
    checked: Checked,
    permit: OwnedSemaphorePermit,
) -> Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>> {
    let size = checked.size();
    let (format, compression) = (checked.format, checked.wire.output_compression);
    let quality = checked.wire.quality_echo();
    let partials = checked.partial_steps;
    let edit = checked.request.init.is_some();
    let errors = state.clone();
    let engine_events = state.engine.generate(checked.request);
    let events = engine_events
        .filter_map(move |event| {
            let (errors, quality) = (errors.clone(), quality.clone());
            let partial_index = match &event {
                GenerateEvent::Step { index, .. } => partials.iter().position(|s| s == index),
                _ => None,
            };
            async move {
                let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
                let event = match event {
                    GenerateEvent::Step {
                        index,
                        total,
                        preview,
                    } => {
                        // A step the request wants no partial image after
                        // sends nothing (and encodes nothing).
                        let partial_image_index = partial_index? as u32;
                        let png = preview.to_png().ok()?;
                        StreamEvent::partial(
                            edit,
                            PartialImage {
                                b64_json: b64(&png),
                                created_at: unix_now(),
                                size,
                                quality,
                                background: OPAQUE.into(),
                                output_format: OutputFormat::Png,
                                partial_image_index,
                                step: index,
                                total_steps: total,
                                progress: index as f64 / total as f64,
                                preview_size: Size::Pixels {
                                    width: preview.width,
                                    height: preview.height,
                                },
                            },
                        )
                    }
                    GenerateEvent::Done {
                        image,
                        seed,
                        timings,
                        prompt_tokens,
                    } => {
                        errors.metrics.image_done(&timings);
                        match encode(image, format, compression).await {
                            Ok(bytes) => StreamEvent::completed(
                                edit,
                                CompletedImage {
                                    b64_json: b64(&bytes),
                                    created_at: unix_now(),
                                    size,
                                    quality,
                                    background: OPAQUE.into(),
                                    output_format: format,
                                    usage: Usage::new(prompt_tokens as u64, 1, size.pixels()),
                                    seed,
                                    timings: stage_timings(&timings),
                                },
                            ),
                            Err(e) => StreamEvent::Error { error: e.detail() },
                        }
                    }
                    GenerateEvent::Failed { error } => StreamEvent::Error {
                        error: errors.flux_error(&error).detail(),
                    },
                    GenerateEvent::Warning { message } => StreamEvent::Warning { message },
                    _ => return None,
                };
                Some(Ok(Event::default().event(event.name()).data(event.data())))
            }
        })
        // The queue place is held until the stream ends or the client leaves.
        .chain(futures::stream::once(async move {
            drop(permit);
            Ok(Event::default().comment("end"))
        }));
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

fn stage_timings(t: &Timings) -> StageTimings {
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
pub async fn models(State(state): State<Arc<AppState>>) -> Json<ModelList> {
    Json(ModelList {
        object: "list".into(),
        data: vec![Model {
            id: state.model.id.to_string(),
            object: "model".into(),
            created: state.started,
            owned_by: "black-forest-labs".into(),
            hub_repo: state.model.key.to_string(),
        }],
    })
}
