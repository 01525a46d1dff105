//! A test Hub: `schnell::mirror` on 127.0.0.1 with fault injection and
//! counters layered on top. Test code only; the benchmark shares it.
//!
//! This file only declares the parts and re-exports them under the paths
//! the tests use.
#![allow(dead_code)]

mod faults;
mod heartbeat;
mod hub;
mod models;
pub mod server;
mod small_disk;
mod stats;

// Each test binary uses a few of these.
#[allow(unused_imports)]
pub use self::faults::{BreakPlan, Faults, Gate, Link};
#[allow(unused_imports)]
pub use self::heartbeat::Heartbeat;
#[allow(unused_imports)]
pub use self::hub::TestHub;
#[allow(unused_imports)]
pub use self::models::{tiny_copy, tiny_models, write_random};
#[allow(unused_imports)]
pub use self::small_disk::SmallDisk;
#[allow(unused_imports)]
pub use self::stats::{Seen, Stats};
