//! `schnell serve` over real HTTP on 127.0.0.1, with tiny models behind the
//! mirror. One test binary (each costs a link), a module per subject.
#![cfg(not(target_arch = "wasm32"))]

#[path = "../support/mod.rs"]
mod support;

mod access;
mod connections;
mod cross_site;
mod edits;
mod errors;
mod generations;
mod observability;
mod queue;
mod stored_images;
mod streams;
mod uploads;
