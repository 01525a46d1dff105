//! The `schnell` binary as a user runs it: one test binary (each costs a
//! link), a module per subcommand.
#![cfg(not(target_arch = "wasm32"))]

#[path = "../support/mod.rs"]
mod support;

mod fetch;
mod generate;
mod mirror;
mod resume;
mod run;
mod serve;
mod version;
