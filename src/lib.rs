//! schnell: FLUX.1-schnell text-to-image, as a native server and a browser client.
//!
//! The heart of the crate is [`hub`]: one async way to get a Hugging Face Hub file,
//! the same call on every target. Natively it is backed by tokio, reqwest and the
//! standard Hugging Face cache; in the browser by `fetch` and the Cache API.
//!
//! Target-specific code is chosen here, at module boundaries, and nowhere else.

pub mod hub;
pub mod limits;
pub mod protocol;
pub mod tokens;
pub mod web;

cfg_if::cfg_if! {
    if #[cfg(not(target_arch = "wasm32"))] {
        #[doc(hidden)]
        pub mod dev;
        pub mod flux;
        pub mod listen;
        pub mod mirror;
        pub mod server;
    }
}
