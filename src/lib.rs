//! schnell: FLUX.1-schnell text-to-image, as a native server and a browser client.
//!
//! The heart of the crate is [`hub`]: one async way to get a Hugging Face Hub file,
//! the same call on every target. Natively it is backed by tokio `hf-hub` and the
//! standard Hugging Face cache; the browser backend arrives with the wasm client.
//!
//! Target-specific code is chosen here, at module boundaries, and nowhere else.

pub mod hub;
pub mod limits;
pub mod web;

cfg_if::cfg_if! {
    if #[cfg(not(target_arch = "wasm32"))] {
        #[doc(hidden)]
        pub mod dev;
        pub mod flux;
        pub mod mirror;
        pub mod server;
    }
}
