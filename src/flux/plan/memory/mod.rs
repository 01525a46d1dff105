//! How much memory a choice of weights needs, how much the device has, and
//! `--quant auto`'s pick.
//!
//! Needs are computed from the configs (parameter counts by how each file
//! stores them) and the requested image size (attention scores, the VAE's
//! full-resolution activations). They are estimates, planned on the high
//! side; the benchmark in BENCHMARKS.md measures the real peaks.

mod budget;
mod estimate;
mod params;
mod sizing;
#[cfg(test)]
mod tests;

pub use budget::{choose, fixed, MemoryBudget};
pub use estimate::{estimate_peak, ModelSize, Workload, REAL_CONFIGS};
pub use params::{clip_bytes, decoder_bytes, FluxParams, T5Params};
pub use sizing::{Sizing, VaeDecode};
