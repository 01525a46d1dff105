//! The Cache API store: the named caches that hold Hub files (and the
//! page's own), and putting a response into one.

use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{Cache, CacheStorage, Headers, Response, ResponseInit};

use super::js::{config, js_message, js_name};
use crate::hub::error::HubError;
use crate::hub::file::HubFile;

/// The Cache API cache that holds Hub files, unless a client names another.
pub(super) const CACHE_NAME: &str = "schnell-hub-v1";

/// Puts a copy in the cache, with the headers a later reader needs, and waits
/// for the browser to confirm it.
pub(super) async fn store(
    cache: &Cache,
    url: &str,
    file: &HubFile,
    bytes: &[u8],
    from: &Headers,
) -> Result<(), HubError> {
    let headers = Headers::new().map_err(|e| config(&e))?;
    for name in ["content-type", "etag", "x-linked-etag", "x-repo-commit"] {
        if let Ok(Some(value)) = from.get(name) {
            let _ = headers.set(name, &value);
        }
    }
    cache_put(cache, url, bytes, &headers).await.map_err(|e| {
        if is_quota_exceeded(&e) {
            HubError::StorageFull {
                file: file.clone(),
                reason: js_message(&e),
            }
        } else {
            HubError::Transfer {
                file: file.clone(),
                attempts: 1,
                reason: format!(
                    "could not store it in the browser's cache: {}",
                    js_message(&e)
                ),
            }
        }
    })
}

/// Puts `bytes` in `cache` under `url`, as a 200 response with `headers`, and
/// waits for the browser to confirm it. The error is the browser's.
pub(crate) async fn cache_put(
    cache: &Cache,
    url: &str,
    bytes: &[u8],
    headers: &Headers,
) -> Result<(), JsValue> {
    let _ = headers.set("content-length", &bytes.len().to_string());
    let init = ResponseInit::new();
    init.set_status(200);
    init.set_headers(headers);
    let mut copy = bytes.to_vec();
    let response = Response::new_with_opt_u8_array_and_init(Some(&mut copy), &init)?;
    JsFuture::from(cache.put_with_str(url, &response)).await?;
    Ok(())
}

/// The browser's storage for this origin is full.
pub(crate) fn is_quota_exceeded(e: &JsValue) -> bool {
    js_name(e).as_deref() == Some("QuotaExceededError")
}

/// A Cache API cache by name, made if missing.
pub(crate) async fn open_cache(name: &str) -> Result<Cache, HubError> {
    let cache = JsFuture::from(caches()?.open(name))
        .await
        .map_err(|e| config(&e))?;
    Ok(cache.unchecked_into())
}

/// Deletes a Cache API cache; whether there was one.
pub(crate) async fn delete_cache(name: &str) -> Result<bool, HubError> {
    let deleted = JsFuture::from(caches()?.delete(name))
        .await
        .map_err(|e| config(&e))?;
    Ok(deleted.as_bool().unwrap_or(false))
}

/// The window's, or a worker's, `caches`.
fn caches() -> Result<CacheStorage, HubError> {
    let storage = match web_sys::window() {
        Some(window) => window.caches(),
        None => js_sys::global()
            .unchecked_into::<web_sys::WorkerGlobalScope>()
            .caches(),
    };
    storage.map_err(|e| {
        HubError::Config(format!(
            "the Cache API is not available (it needs a secure context): {}",
            js_message(&e)
        ))
    })
}
