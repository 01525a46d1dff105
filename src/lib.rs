// The crate's front page is the README, so that every Rust block in it is a
// doc-test: it compiles (and runs, unless it needs the real weights).
#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
// Target-specific code is chosen here, at module boundaries, and nowhere else.

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
