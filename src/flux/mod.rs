//! FLUX.1-schnell with candle: files through the hub, configs from the files,
//! one engine thread for all compute. Start at [`FluxSchnell`].
//!
//! The rooms, each importing only those listed before it:
//! - `error`: [`FluxError`];
//! - `weights`: which files a model needs, their configs, memory maps,
//!   GGUF and tokenizers;
//! - `model`: the networks (transformer, text encoders, VAE) and the owned
//!   CPU layers;
//! - `plan`: the device, `--quant auto`'s choice and the memory estimates;
//! - `request`: what a caller asks for and gets back;
//! - `run`: the engine thread, the loaded models, the pipeline, edits,
//!   previews and the prompt cache.

mod error;
pub(crate) mod model;
pub(crate) mod plan;
pub(crate) mod request;
pub(crate) mod run;
pub(crate) mod weights;

pub use error::FluxError;
pub use model::cpu_ops::{set_quantized_product, QuantizedProduct};
pub use plan::choice::{QuantChoice, QuantPlan};
pub use plan::device::{
    backend_reports, parse_dtype, BackendReport, DeviceChoice, COMPILED_BACKENDS,
};
pub use plan::memory;
pub use plan::memory::MemoryBudget;
pub use request::generate::{
    random_seed, GenerateRequest, DEFAULT_STEPS, DEFAULT_STRENGTH, MAX_SIDE, MAX_STEPS, MIN_SIDE,
};
pub use request::init_image::{InitImage, Mask, MAX_INPUT_SIDE};
pub use request::output::{
    Component, GenerateEvent, Generated, Generation, Image, Preview, Timings,
};
pub use run::engine::{
    EngineOptions, EngineStats, EngineStatus, FileProgress, FluxSchnell, MemoryReport, NextAttempt,
    Phase, RetryPolicy, PLANNED_SIDE,
};
pub use run::pipeline::seeded_noise;
pub use weights::config::ConfigSource;
pub use weights::files::{
    ModelDescription, ModelFiles, TextEncoders, FLUX_REPO, FLUX_SCHNELL, MODELS,
};
pub use weights::quant::{Quant, T5Quant, FLUX_GGUF_REPO, T5_GGUF_REPO};

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

/// Compile-time checks that what users share across threads and tasks can
/// be: the engine, the client, every error, the events and the stream.
#[allow(dead_code)]
mod thread_safety {
    use super::*;

    const fn send_sync<T: Send + Sync + 'static>() {}
    const _: () = {
        send_sync::<FluxSchnell>();
        send_sync::<crate::hub::HubClient>();
        send_sync::<crate::hub::HubError>();
        send_sync::<FluxError>();
        send_sync::<GenerateEvent>();
        send_sync::<Generated>();
        send_sync::<Generation>();
        send_sync::<EngineStatus>();
        send_sync::<EngineStats>();
    };

    fn streams_and_futures_are_send(engine: &FluxSchnell) {
        fn send_static<T: Send + 'static>(_: T) {}
        fn send<T: Send>(_: T) {}
        send_static(engine.generate(GenerateRequest::new("")));
        send(engine.generate_image(GenerateRequest::new("")));
        send(engine.generate_images(GenerateRequest::new("")));
    }
}
