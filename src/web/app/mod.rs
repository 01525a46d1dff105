//! The page: a prompt with live token counts, the settings, an optional
//! image to edit, Generate with per-step previews, the result, and a
//! history that survives a reload.
//! Everything runs on the page's one thread; long waits are futures.
//!
//! This file only declares the parts and re-exports; each part adds its
//! methods to the one `App`, in `page.rs`.

mod dom;
mod edit_image;
mod feedback;
mod generation;
mod history_view;
mod net;
mod page;
mod readiness;
mod store;
mod token_counts;

pub use self::net::read_sse;
pub use self::page::start;
pub use self::store::HISTORY_CACHE;
