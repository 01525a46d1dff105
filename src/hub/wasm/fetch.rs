//! Fetching one file: the Cache API first, else `fetch` with retries, the
//! body streamed with progress events, checked against its ETag and stored
//! before it is returned.

use bytes::Bytes;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{Headers, Response};

use super::cache_store::{open_cache, store};
use super::js::{config, fetch, js_message, read_stream};
use crate::hub::digest::bytes_mismatch;
use crate::hub::error::HubError;
use crate::hub::event::{EventSink, HubEvent};
use crate::hub::file::HubFile;
use crate::hub::retry::{self, is_transient_status, parse_retry_after, Backoff, Failure};

fn emit(events: &Option<EventSink>, event: HubEvent) {
    if let Some(sink) = events {
        sink(event);
    }
}

/// One file from the cache named `cache_name`, or fetched into it; and
/// whether it came from the cache.
pub(super) async fn download(
    cache_name: String,
    backoff: Backoff,
    url: String,
    file: HubFile,
    events: Option<EventSink>,
) -> Result<(Bytes, bool), HubError> {
    let cache = open_cache(&cache_name).await?;
    let hit = JsFuture::from(cache.match_with_str(&url))
        .await
        .map_err(|e| config(&e))?;
    if let Ok(response) = hit.dyn_into::<Response>() {
        let bytes =
            read_body(&file, &response, None)
                .await
                .map_err(|reason| HubError::Transfer {
                    file: file.clone(),
                    attempts: 1,
                    reason: format!("reading the browser's cache: {reason}"),
                })?;
        emit(
            &events,
            HubEvent::Cached {
                file: file.clone(),
                size: bytes.len() as u64,
            },
        );
        return Ok((bytes, true));
    }

    let (bytes, headers) = retry::with_retries(&backoff, &file, events.as_ref(), || {
        fetch_once(&url, &file, &events)
    })
    .await?;
    let header = |name: &str| headers.get(name).ok().flatten();
    let etag = header("x-linked-etag")
        .or_else(|| header("etag"))
        .map(|e| e.trim_start_matches("W/").trim_matches('"').to_string());
    if let Some(actual) = etag.as_deref().and_then(|e| bytes_mismatch(&bytes, e)) {
        return Err(HubError::Integrity {
            file,
            expected: etag.unwrap_or_default(),
            actual,
        });
    }
    store(&cache, &url, &file, &bytes, &headers).await?;
    emit(
        &events,
        HubEvent::Finished {
            file,
            size: bytes.len() as u64,
        },
    );
    Ok((bytes, false))
}

/// One attempt: the request and the whole body.
async fn fetch_once(
    url: &str,
    file: &HubFile,
    events: &Option<EventSink>,
) -> Result<(Bytes, Headers), Failure<HubError>> {
    let response: Response = JsFuture::from(fetch(url).map_err(Failure::Fatal)?)
        .await
        .map_err(|e| {
            Failure::transient(format!(
                "network error (offline, or the server cannot be reached): {}",
                js_message(&e)
            ))
        })?
        .unchecked_into();
    let headers = response.headers();
    let header = |name: &str| headers.get(name).ok().flatten();
    if !response.ok() {
        let status = response.status();
        if is_transient_status(status) {
            return Err(Failure::Transient {
                reason: format!("HTTP {status}"),
                retry_after: header("retry-after")
                    .and_then(|v| parse_retry_after(&v, retry::now())),
                made_progress: false,
            });
        }
        let code = header("x-error-code");
        return Err(Failure::Fatal(HubError::from_status(
            file,
            url,
            status,
            code.as_deref(),
            false,
        )));
    }
    let size = header("x-linked-size")
        .or_else(|| header("content-length"))
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0);
    // Each attempt starts from zero: this also resets progress after a retry.
    emit(
        events,
        HubEvent::Started {
            file: file.clone(),
            size,
            resumed_from: 0,
        },
    );
    let bytes = read_body(file, &response, Some(events))
        .await
        .map_err(|reason| Failure::transient(format!("the body broke off: {reason}")))?;
    Ok((bytes, headers))
}

/// Reads a body as it streams in, reporting each chunk when asked to. The
/// error is the browser's message.
async fn read_body(
    file: &HubFile,
    response: &Response,
    events: Option<&Option<EventSink>>,
) -> Result<Bytes, String> {
    let mut bytes = Vec::new();
    read_stream(response, |chunk| {
        if let Some(events) = events {
            emit(
                events,
                HubEvent::Advanced {
                    file: file.clone(),
                    bytes: chunk.len() as u64,
                },
            );
        }
        bytes.extend_from_slice(chunk);
        true
    })
    .await
    .map_err(|e| js_message(&e))?;
    Ok(Bytes::from(bytes))
}
