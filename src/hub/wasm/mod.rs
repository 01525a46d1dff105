//! The browser backend: `fetch` and the Cache API.
//!
//! Files are fetched from `{endpoint}/{repo}/resolve/{revision}/{path}` (by
//! default the serving origin's `/hub`, which `schnell serve` provides) and
//! kept in the Cache API under `schnell-hub-v1`, keyed by that URL. A hit makes
//! no request; a miss streams the body with progress events, checks it against
//! its ETag, and is stored (the `put` awaited) before it is returned
//! ([`fetch`], [`cache_store`]). Two concurrent calls for one file share one
//! fetch ([`client`]). Network errors, bodies that break off, 408, 429 and 5xx
//! are retried with the native backend's policy (exponential backoff with
//! jitter, `Retry-After` honoured, 5 retries in a row at most); 401, 403 and
//! 404 are final. [`js`] holds the JavaScript helpers the page shares.

mod cache_store;
mod client;
mod default_client;
mod fetch;
mod js;

pub(crate) use self::cache_store::{cache_put, delete_cache, is_quota_exceeded, open_cache};
pub use self::client::{FetchedFile, HubClient, HubClientBuilder};
pub use self::default_client::{huggingface_file, huggingface_files};
pub(crate) use self::js::{js_message, read_stream};
