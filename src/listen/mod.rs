//! The accept loop under `schnell serve` and `schnell mirror`: a cap on open
//! connections, a header timeout and an idle timeout per connection, and a
//! graceful shutdown that waits a bounded time.
//!
//! `axum::serve` has none of these: idle or slow sockets stay open forever
//! (and file descriptors run out), and its graceful shutdown waits for every
//! connection, however slow the client.
//!
//! It sits below both the images server and the mirror, which both run
//! it, and knows neither.

mod accept;
mod connection;
mod grace;
mod options;
mod registry;
mod signal;
mod tracked;

pub use self::accept::serve;
pub use self::grace::GraceOver;
pub use self::options::{default_max_connections, ServeOptions};
pub use self::signal::shutdown_signal;
