//! FLUX.1-schnell with candle: files through the hub, configs from the files,
//! one engine thread for all compute.

mod attention;
mod config;
mod cpu_ops;
mod device;
mod edit;
mod engine;
mod error;
mod files;
pub(crate) mod gguf;
mod init_image;
mod loaded;
pub mod memory;
mod pipeline;
mod preview;
mod prompt_cache;
mod quant;
mod request;
mod text;
pub(crate) mod transformer;
mod vae;
mod vae_cpu;
mod weights;
pub(crate) use weights::Named;

pub use config::{
    check_coupling, clip_text_config, flux_config, t5_config, vae_config, ConfigSource,
};
pub use device::{backend_reports, parse_dtype, BackendReport, DeviceChoice, COMPILED_BACKENDS};
pub use engine::{
    EngineOptions, EngineStats, EngineStatus, FileProgress, FluxSchnell, MemoryReport, NextAttempt,
    Phase, RetryPolicy, PLANNED_SIDE,
};
pub use error::FluxError;
pub use files::{ModelDescription, ModelFiles, TextEncoders, FLUX_REPO, FLUX_SCHNELL, MODELS};
pub use init_image::{InitImage, Mask, MAX_INPUT_SIDE};
pub use memory::MemoryBudget;
pub use pipeline::seeded_noise;
pub use quant::{Quant, QuantChoice, QuantPlan, T5Quant, FLUX_GGUF_REPO, T5_GGUF_REPO};
pub use request::{
    random_seed, Component, GenerateEvent, GenerateRequest, Image, Preview, Timings, DEFAULT_STEPS,
    DEFAULT_STRENGTH, MAX_SIDE, MAX_STEPS, MIN_SIDE,
};
pub use text::{PromptTokens, Tokenizers, CLIP_TOKENS, T5_TOKENS};

/// What the numerical tests of owned layers share.
#[cfg(test)]
pub(crate) mod test_util {
    use candle_core::{DType, Tensor};

    /// The largest element-wise difference, in F32.
    pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }
}
