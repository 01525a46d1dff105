//! Random-weight FLUX.1-schnell models: a developer tool for tests, offline
//! demos and benchmarks, not part of the library's API.
//!
//! The files have the real repositories, file names, tensor names, dtypes and
//! config keys, so they load through exactly the code path of the real
//! weights: safetensors as the FLUX repo has them, and GGUF as city96's repos
//! have them (per-tensor types included). Three sizes: `tiny` (toy, for
//! tests), `bench` (mid-size, for CPU benchmarks) and `real` (the real
//! architecture and sizes, for honest memory and speed figures). Their images
//! are noise. The weights are seeded, so the files are the same every time.

//!
//! This file only declares the parts and re-exports what callers use.

mod error;
mod gguf;
mod json;
mod products;
mod random;
mod safetensors;
mod sizes;
pub(crate) mod tokenizers;
mod write;

pub use self::error::DevResult;
pub use self::gguf::rename_gguf_tensors;
pub use self::products::{ProductCase, ProductTiming};
pub use self::sizes::{ModelSizes, Size, WriteOptions};
pub use self::write::{transformer_parameters, write_models, write_tiny_models};
pub use crate::flux::model::cpu_ops::QuantizedProduct;
