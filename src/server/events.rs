//! A request's images as server-sent events (`stream: true`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use base64::Engine as _;
use futures::{Stream, StreamExt};
use tokio::sync::OwnedSemaphorePermit;

use super::api_error::ApiError;
use super::output::{encode, stage_timings, unix_now, OPAQUE};
use super::request::Checked;
use super::state::AppState;
use crate::flux::GenerateEvent;
use crate::protocol::{CompletedImage, OutputFormat, PartialImage, Size, StreamEvent, Usage};

/// Server-sent events with OpenAI's names: `image_generation.partial_image`
/// (`image_edit.partial_image` for an edit) after the steps
/// [`partial_steps`](crate::protocol::partial_steps) picks (each the step's preview), then
/// `image_generation.completed` (`image_edit.completed`). Progress fields (`step`, `total_steps`,
/// `progress`) are extensions. When `grace_over` resolves first (the server
/// is stopping), an `error` event ends the stream.
pub(super) fn stream(
    state: Arc<AppState>,
    checked: Checked,
    permit: OwnedSemaphorePermit,
    grace_over: impl Future<Output = ()> + Send + 'static,
) -> Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>> {
    let size = checked.size();
    let (format, compression) = (checked.format, checked.wire.output_compression);
    let quality = checked.wire.quality_echo();
    let partials = checked.partial_steps;
    let edit = checked.request.init.is_some();
    let errors = state.clone();
    let engine_events = state.engine.generate(checked.request);
    let events = engine_events.filter_map(move |event| {
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
            Some(event)
        }
    });
    let events = until_grace_over(events, grace_over)
        .map(|event| Ok(Event::default().event(event.name()).data(event.data())))
        // The queue place is held until the stream ends or the client leaves.
        .chain(futures::stream::once(async move {
            drop(permit);
            Ok(Event::default().comment("end"))
        }));
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// `events` until `grace_over` resolves; then an `error` event saying so,
/// and the end.
fn until_grace_over(
    events: impl Stream<Item = StreamEvent> + Send,
    grace_over: impl Future<Output = ()> + Send,
) -> impl Stream<Item = StreamEvent> + Send {
    let state = (Box::pin(events), Box::pin(grace_over), false);
    futures::stream::unfold(state, |(mut events, mut grace_over, ended)| async move {
        if ended {
            return None;
        }
        // The grace first: once it is over the job is being cancelled, and
        // events still queued would only delay the last word.
        tokio::select! {
            biased;
            () = &mut grace_over => {
                let error = ApiError::shutting_down().detail();
                Some((StreamEvent::Error { error }, (events, grace_over, true)))
            }
            event = events.next() => event.map(|e| (e, (events, grace_over, false))),
        }
    })
}
