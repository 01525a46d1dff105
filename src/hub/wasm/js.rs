//! Small helpers over the browser's JavaScript objects, shared with the
//! page (the `web` module): error messages, streaming a body, the global
//! `fetch` and `location.origin` in a window or a worker.

use js_sys::{Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{ReadableStreamDefaultReader, Response};

use crate::hub::error::HubError;

/// Hands each chunk of a response body to `each` as it arrives, until the end
/// or until `each` returns false (the rest is then cancelled). The error is
/// the stream's: an abort, or a connection that broke.
pub(crate) async fn read_stream(
    response: &Response,
    mut each: impl FnMut(&[u8]) -> bool,
) -> Result<(), JsValue> {
    let Some(body) = response.body() else {
        return Ok(());
    };
    let reader: ReadableStreamDefaultReader = body.get_reader().unchecked_into();
    let mut buffer = Vec::new();
    loop {
        let chunk = JsFuture::from(reader.read()).await?;
        if Reflect::get(&chunk, &"done".into())?
            .as_bool()
            .unwrap_or(true)
        {
            return Ok(());
        }
        let value: Uint8Array = Reflect::get(&chunk, &"value".into())?.unchecked_into();
        buffer.resize(value.length() as usize, 0);
        value.copy_to(&mut buffer);
        if !each(&buffer) {
            // Awaited, so that a refusal to cancel is handled, not left unhandled.
            let _ = JsFuture::from(reader.cancel()).await;
            return Ok(());
        }
    }
}

/// `fetch(url)`, from a window or a worker.
pub(super) fn fetch(url: &str) -> Result<js_sys::Promise, HubError> {
    Ok(match web_sys::window() {
        Some(window) => window.fetch_with_str(url),
        None => js_sys::global()
            .unchecked_into::<web_sys::WorkerGlobalScope>()
            .fetch_with_str(url),
    })
}

/// This page's (or worker's) `location.origin`.
pub(super) fn origin() -> Result<String, HubError> {
    let location = Reflect::get(&js_sys::global(), &"location".into()).map_err(|e| config(&e))?;
    Reflect::get(&location, &"origin".into())
        .ok()
        .and_then(|o| o.as_string())
        .ok_or_else(|| {
            HubError::Config("no location.origin to derive the /hub endpoint from".into())
        })
}

/// A JavaScript error as a configuration error.
pub(super) fn config(e: &JsValue) -> HubError {
    HubError::Config(js_message(e))
}

/// A JavaScript error's `name`.
pub(super) fn js_name(e: &JsValue) -> Option<String> {
    Reflect::get(e, &"name".into()).ok()?.as_string()
}

/// A JavaScript error as `Name: message`.
pub(crate) fn js_message(e: &JsValue) -> String {
    let name = js_name(e).unwrap_or_default();
    let message = Reflect::get(e, &"message".into())
        .ok()
        .and_then(|m| m.as_string())
        .or_else(|| e.as_string())
        .unwrap_or_else(|| format!("{e:?}"));
    if name.is_empty() {
        message
    } else {
        format!("{name}: {message}")
    }
}
