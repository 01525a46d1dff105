//! The history, kept in the Cache API (`schnell-history-v1`) beside the Hub
//! files: the index as JSON and each image as a PNG, keyed by URLs under this
//! origin's `/__schnell/history/` that are never fetched from the network.

use js_sys::Uint8Array;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{Blob, Cache, Headers, Response};

use super::net::origin;
use crate::hub::{cache_put, delete_cache, is_quota_exceeded, js_message, open_cache};
use crate::web::history::{History, HistoryEntry};

/// The Cache API cache that holds the history: its index and its images.
pub const HISTORY_CACHE: &str = "schnell-history-v1";

pub struct HistoryStore {
    cache: Cache,
    base: String,
}

fn failed(what: &str) -> impl Fn(JsValue) -> String + '_ {
    move |e| format!("could not {what}: {}", js_message(&e))
}

impl HistoryStore {
    pub async fn open() -> Result<Self, String> {
        Ok(Self {
            cache: open_cache(HISTORY_CACHE).await.map_err(|e| e.to_string())?,
            base: format!("{}/__schnell/history", origin()),
        })
    }

    fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.base)
    }

    async fn get(&self, name: &str) -> Result<Option<Response>, String> {
        let hit = JsFuture::from(self.cache.match_with_str(&self.url(name)))
            .await
            .map_err(failed("read the history"))?;
        Ok(hit.dyn_into::<Response>().ok())
    }

    async fn put(&self, name: &str, bytes: &[u8], content_type: &str) -> Result<(), String> {
        let headers = Headers::new().map_err(failed("store the history"))?;
        let _ = headers.set("content-type", content_type);
        cache_put(&self.cache, &self.url(name), bytes, &headers)
            .await
            .map_err(|e| {
                if is_quota_exceeded(&e) {
                    "the browser's storage for this site is full: clear the history to make room"
                        .into()
                } else {
                    format!(
                        "could not store the image in the history: {}",
                        js_message(&e)
                    )
                }
            })
    }

    /// The index; empty when nothing was stored yet.
    pub async fn load(&self) -> Result<History, String> {
        let Some(response) = self.get("index.json").await? else {
            return Ok(History::default());
        };
        let buffer = JsFuture::from(
            response
                .array_buffer()
                .map_err(failed("read the history"))?,
        )
        .await
        .map_err(failed("read the history"))?;
        History::from_json(&Uint8Array::new(&buffer).to_vec())
    }

    /// One entry's image.
    pub async fn image(&self, entry: &HistoryEntry) -> Result<Option<Blob>, String> {
        let Some(response) = self.get(&format!("{}.png", entry.id)).await? else {
            return Ok(None);
        };
        let blob = JsFuture::from(response.blob().map_err(failed("read an image"))?)
            .await
            .map_err(failed("read an image"))?;
        Ok(Some(blob.unchecked_into()))
    }

    /// Stores the image first, then the index that names it, so the index
    /// never points at a missing image; then drops what fell off the end.
    pub async fn add(&self, entry: HistoryEntry, png: &[u8]) -> Result<History, String> {
        self.put(&format!("{}.png", entry.id), png, "image/png")
            .await?;
        let mut history = self.load().await.unwrap_or_default();
        let evicted = history.add(entry);
        self.put("index.json", &history.to_json(), "application/json")
            .await?;
        for old in evicted {
            let _ = JsFuture::from(
                self.cache
                    .delete_with_str(&self.url(&format!("{}.png", old.id))),
            )
            .await;
        }
        Ok(history)
    }

    /// Forgets every entry and image.
    pub async fn clear(&self) -> Result<(), String> {
        delete_cache(HISTORY_CACHE)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}
