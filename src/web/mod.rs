//! The browser client. Its logic (the form's checks, the API's answers, the
//! SSE parser, the history's index) is plain Rust, built and
//! tested on every target; the page itself (`start`) is wasm32-only.

pub mod api;
pub mod history;
pub mod sse;

cfg_if::cfg_if! {
    if #[cfg(target_arch = "wasm32")] {
        mod app;
        pub use app::{read_sse, start, HISTORY_CACHE};
    }
}
