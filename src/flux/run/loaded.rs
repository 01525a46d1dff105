//! A model's local files, its parsed configs, and the parts kept in memory.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::clip::text_model::ClipTextConfig;
use candle_transformers::models::flux::autoencoder;
use candle_transformers::models::flux::model;
use candle_transformers::models::flux::WithForward;
use candle_transformers::models::t5;

use crate::flux::error::FluxError;
use crate::flux::model::text::{load_error, Clip, T5};
use crate::flux::model::transformer::Flux;
use crate::flux::model::vae::{Decoder, Encoder};
use crate::flux::request::output::{Component, GenerateEvent, Timings};
use crate::flux::run::prompt_cache::PromptCache;
use crate::flux::weights::config::{self, ConfigSource};
use crate::flux::weights::gguf::{is_flux_block_matrix, GgufFile};
use crate::flux::weights::local::LocalFiles;
use crate::flux::weights::named::{mmap, Named};
use crate::flux::weights::quant::{Quant, T5Quant};
use crate::flux::weights::tokenizers::Tokenizers;

/// The files with their configs parsed: enough to load any part on demand.
pub struct LocalModel {
    pub files: LocalFiles,
    pub flux_config: model::Config,
    pub vae_config: autoencoder::Config,
    pub t5_config: t5::Config,
    pub clip_config: ClipTextConfig,
    pub device: Device,
    pub dtype: DType,
}

fn source(file: &Named) -> ConfigSource {
    ConfigSource(file.file.to_string())
}

impl LocalModel {
    /// Reads and checks the configs (blocking: the engine's thread).
    pub fn open(files: LocalFiles, device: Device, dtype: DType) -> Result<Self, FluxError> {
        let flux_config = config::flux_config(
            &source(&files.transformer_config),
            &files.transformer_config.read()?,
        )?;
        let vae_config = config::vae_config(&source(&files.vae_config), &files.vae_config.read()?)?;
        let t5_json = files.t5_config.read()?;
        let t5_config = config::t5_config(&source(&files.t5_config), &t5_json)?;
        let clip_config =
            config::clip_text_config(&source(&files.clip_config), &files.clip_config.read()?)?;
        config::check_coupling(
            &flux_config,
            &t5_config,
            &clip_config,
            &source(&files.transformer_config),
        )?;
        Ok(Self {
            files,
            flux_config,
            vae_config,
            t5_config,
            clip_config,
            device,
            dtype,
        })
    }

    pub fn load_t5(&self) -> Result<T5, FluxError> {
        match self.files.t5_quant {
            T5Quant::None => T5::load(
                &self.t5_config,
                &self.files.t5_weights,
                self.dtype,
                &self.device,
            ),
            _ => T5::load_gguf(
                &self.t5_config,
                &self.files.t5_weights[0],
                self.files.t5_quant,
                &self.device,
            ),
        }
    }

    pub fn load_flux(&self) -> Result<Transformer, FluxError> {
        let files = std::slice::from_ref(&self.files.transformer);
        match self.files.quant.ggml() {
            None => {
                let vb = mmap(files, self.dtype, &self.device)?;
                Flux::new(&self.flux_config, vb)
                    .map(|flux| Transformer(Box::new(flux)))
                    .map_err(|e| load_error(files, e))
            }
            Some(expected) => {
                let file = GgufFile::open(&self.files.transformer)?;
                file.check_type(expected, is_flux_block_matrix)?;
                let vb = file.var_builder(&self.device)?;
                Flux::new(&self.flux_config, vb)
                    .map(|flux| Transformer(Box::new(flux)))
                    .map_err(|e| load_error(files, e))
            }
        }
    }

    /// The dtype the transformer computes in: with GGUF weights its biases
    /// and norms are F32, so its inputs must be F32 too.
    pub fn flux_dtype(&self) -> DType {
        if self.files.quant == Quant::None {
            self.dtype
        } else {
            DType::F32
        }
    }

    pub fn load_clip(&self) -> Result<Clip, FluxError> {
        Clip::load(
            &self.clip_config,
            &self.files.clip_weights,
            clip_dtype(self.files.quant, &self.device, self.dtype),
            &self.device,
        )
    }

    /// The encoder half of the autoencoder, for an edit (never kept).
    pub fn load_encoder(&self) -> Result<Encoder, FluxError> {
        let files = std::slice::from_ref(&self.files.vae);
        let vb = mmap(files, self.dtype, &self.device)?;
        Encoder::new(&self.vae_config, vb.pp("encoder")).map_err(|e| load_error(files, e))
    }

    /// The decoder half of the autoencoder.
    pub fn load_decoder(&self) -> Result<Decoder, FluxError> {
        let files = std::slice::from_ref(&self.files.vae);
        let vb = mmap(files, self.dtype, &self.device)?;
        Decoder::new(&self.vae_config, vb.pp("decoder")).map_err(|e| load_error(files, e))
    }

    pub fn tokenizers(&self) -> Result<Tokenizers, FluxError> {
        Tokenizers::load(&self.files.t5_tokenizer, &self.files.clip_tokenizer)
    }
}

/// What stays loaded between requests. In low-memory mode only the
/// tokenizers are kept: each request loads each part in turn (T5, CLIP, the
/// transformer, the VAE's decoder) and frees it before the next loads.
pub struct Resident {
    pub tokenizers: Tokenizers,
    pub clip: Option<Clip>,
    pub decoder: Option<Decoder>,
    pub t5: Option<T5>,
    pub flux: Option<Transformer>,
    /// Recent prompts' encodings (kept in low-memory mode too: they are
    /// small, and a hit skips loading both encoders).
    pub prompts: PromptCache,
}

/// The FLUX transformer, from safetensors or from a GGUF file.
pub struct Transformer(Box<Flux>);

impl Transformer {
    /// One pass: the velocity at timestep `t`.
    pub fn forward(
        &self,
        img: &Tensor,
        img_ids: &Tensor,
        txt: &Tensor,
        txt_ids: &Tensor,
        t: &Tensor,
        y: &Tensor,
    ) -> candle_core::Result<Tensor> {
        self.0.forward(img, img_ids, txt, txt_ids, t, y, None)
    }
}

/// A part kept loaded, or loaded now into `borrowed` (so it is freed when
/// the caller drops that), with the load announced and timed.
pub fn resident_or_load<'a, T>(
    resident: Option<&'a mut T>,
    borrowed: &'a mut Option<T>,
    component: Component,
    load: impl FnOnce() -> Result<T, FluxError>,
    say: &mut impl FnMut(GenerateEvent) -> Result<(), FluxError>,
    timings: &mut Timings,
) -> Result<&'a mut T, FluxError> {
    if let Some(part) = resident {
        return Ok(part);
    }
    say(GenerateEvent::Loading { component })?;
    let t = Instant::now();
    let part = borrowed.insert(load()?);
    timings.load += t.elapsed();
    Ok(part)
}

/// CLIP's dtype: beside GGUF weights on the CPU, its file's F16 (half of
/// f32's 0.49 GB, which kept peak RSS 1% above stable-diffusion.cpp's at
/// 256²; CLIP gives one pooled vector per prompt, and commonly runs in F16
/// on GPUs); else `dtype`, so full-precision runs are unchanged.
pub fn clip_dtype(quant: Quant, device: &Device, dtype: DType) -> DType {
    if quant != Quant::None && device.is_cpu() {
        DType::F16
    } else {
        dtype
    }
}
