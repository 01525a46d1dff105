//! How an engine runs: its options, the size it plans for, and how it retries a failed start.

use crate::flux::error::FluxError;
use crate::flux::plan::choice::QuantChoice;
use crate::flux::plan::device::DeviceChoice;
use crate::flux::weights::files::TextEncoders;
use crate::flux::weights::quant::T5Quant;
use crate::hub::HubError;
use candle_core::DType;
use std::time::Duration;

/// How the engine runs. Built from `Default` with the setters below (the
/// fields can be read, and set in place):
///
/// ```
/// use schnell::flux::{EngineOptions, Quant, QuantChoice};
/// let options = EngineOptions::default()
///     .quant(QuantChoice::Fixed(Quant::Q8_0))
///     .low_memory(true);
/// assert!(options.low_memory);
/// ```
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct EngineOptions {
    /// Where candle runs: the CPU (default), a CUDA GPU or Metal.
    pub device: DeviceChoice,
    /// Default: bf16 on GPUs, f32 on the CPU.
    pub dtype: Option<DType>,
    /// Where T5 and CLIP come from: the FLUX repo (default) or their own repos.
    pub text_encoders: TextEncoders,
    /// Keep only the tokenizers resident; load T5, CLIP, the transformer and
    /// the VAE's decoder in turn on every request, each freed before the next.
    pub low_memory: bool,
    /// The transformer's weights: `auto` (the default) picks the largest
    /// that fits the device's memory.
    pub quant: QuantChoice,
    /// T5's weights; by default the type nearest the transformer's.
    pub t5_quant: Option<T5Quant>,
    /// Plan `auto` for this many bytes instead of measuring free memory.
    pub memory_budget: Option<u64>,
}

impl EngineOptions {
    /// Runs on `device`.
    pub fn device(mut self, device: DeviceChoice) -> Self {
        self.device = device;
        self
    }

    /// Runs in `dtype` instead of the device's default.
    pub fn dtype(mut self, dtype: Option<DType>) -> Self {
        self.dtype = dtype;
        self
    }

    /// Takes T5 and CLIP from `encoders`.
    pub fn text_encoders(mut self, encoders: TextEncoders) -> Self {
        self.text_encoders = encoders;
        self
    }

    /// Keeps only the tokenizers resident (see the field).
    pub fn low_memory(mut self, low_memory: bool) -> Self {
        self.low_memory = low_memory;
        self
    }

    /// Chooses the transformer's weights.
    pub fn quant(mut self, quant: QuantChoice) -> Self {
        self.quant = quant;
        self
    }

    /// Chooses T5's weights; `None`: the type nearest the transformer's.
    pub fn t5_quant(mut self, t5_quant: Option<T5Quant>) -> Self {
        self.t5_quant = t5_quant;
        self
    }

    /// Plans `auto` for this many bytes instead of measuring free memory.
    pub fn memory_budget(mut self, bytes: Option<u64>) -> Self {
        self.memory_budget = bytes;
        self
    }

    /// The dtype to run in: the one asked for, else the device's default.
    /// bf16 on the CPU is refused here, before anything is fetched: candle's
    /// CPU matmul has no bf16 kernel for the VAE's convolutions, so it would
    /// fail only after the whole denoising.
    pub fn resolved_dtype(&self) -> Result<DType, FluxError> {
        let dtype = self.dtype.unwrap_or_else(|| self.device.default_dtype());
        if dtype == DType::BF16 && self.device == DeviceChoice::Cpu {
            return Err(FluxError::Dtype(
                "bf16 is not supported on the CPU (candle's CPU convolutions have no bf16 matmul): use f32, or a GGUF --quant for less memory".into(),
            ));
        }
        Ok(dtype)
    }
}

/// The image size `auto` plans for when no request has come yet (`prepare`).
pub const PLANNED_SIDE: u32 = 1024;
/// How [`FluxSchnell::prepare_until_ready`](super::FluxSchnell::prepare_until_ready) waits between attempts: from
/// `first`, doubling, up to `max`.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// The wait after the first failure.
    pub first: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl RetryPolicy {
    /// Waits `first` after the first failure, doubling up to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Self { first, max }
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            first: Duration::from_secs(2),
            max: Duration::from_secs(60),
        }
    }
}

/// Whether a failed start may mend itself, and how many attempts it gets:
/// the network, the Hub's servers and a full disk may mend, so they get as
/// many as it takes; an answer that is wrong in itself (a checksum
/// mismatch, no byte ranges) only a few, since each attempt may fetch
/// gigabytes again; a missing licence, a wrong name, a bad config or a
/// model too large for the device none.
pub(super) fn attempts_allowed(e: &FluxError) -> Option<u32> {
    fn hub(e: &HubError) -> Option<u32> {
        match e {
            HubError::Transfer { .. }
            | HubError::Http { .. }
            | HubError::Io { .. }
            | HubError::DiskFull { .. } => Some(u32::MAX),
            HubError::Protocol { .. } | HubError::Integrity { .. } => Some(3),
            HubError::Many(errors) => errors.iter().filter_map(hub).max(),
            _ => None,
        }
    }
    match e {
        FluxError::Hub(e) => hub(e),
        _ => None,
    }
}
