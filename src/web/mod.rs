//! The browser client's logic. Parts that are plain Rust (the SSE parser, token
//! counts) build and are tested on every target; the UI itself will be
//! wasm32-only.

pub mod sse;
pub mod tokens;
