//! One async way to get a Hugging Face Hub file, the same call on every target.
//!
//! ```no_run
//! # async fn demo() -> Result<(), schnell::hub::HubError> {
//! use schnell::hub::{huggingface_file, HubFile};
//! let config = huggingface_file(&HubFile::new("google/t5-v1_1-xxl", "config.json")).await?;
//! let bytes = config.bytes().await?;
//! # Ok(()) }
//! ```
//!
//! Model code asks for files through `HubModel` (natively) or the free functions and never
//! touches a download client: the backend decides how bytes arrive (concurrently,
//! resumably, verified) and reports what happens as [`HubEvent`]s.

pub(crate) mod digest;
mod error;
mod event;
mod file;
mod retry;
mod validate;

pub use error::{HubError, NotFoundKind};
pub use event::{EventSink, HubEvent};
pub use file::HubFile;

cfg_if::cfg_if! {
    if #[cfg(not(target_arch = "wasm32"))] {
        pub(crate) mod native;
        mod model;
        pub use native::{
            default_client, huggingface_file, huggingface_files, FetchedFile, HubClient,
            HubClientBuilder, Verification,
        };
        pub use model::HubModel;
    } else {
        mod wasm;
        // The page (the `web` module) shares the backend's JavaScript and Cache
        // API helpers; they are no part of the public API.
        pub(crate) use wasm::{
            cache_put, delete_cache, is_quota_exceeded, js_message, open_cache, read_stream,
        };
        pub use wasm::{huggingface_file, huggingface_files, FetchedFile, HubClient, HubClientBuilder};
    }
}
