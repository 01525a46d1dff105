//! A model's local files, its parsed configs, and the parts kept in memory.

use candle_core::{DType, Device};
use candle_transformers::models::clip::text_model::ClipTextConfig;
use candle_transformers::models::flux::autoencoder::{self, Decoder};
use candle_transformers::models::flux::model::{self, Flux};
use candle_transformers::models::t5;

use super::config::{self, ConfigSource};
use super::text::{load_error, Clip, Tokenizers, T5};
use super::weights::{mmap, Named};
use super::FluxError;

/// Every file of a model, on disk.
#[derive(Clone, Debug)]
pub struct LocalFiles {
    pub transformer: Named,
    pub transformer_config: Named,
    pub vae: Named,
    pub vae_config: Named,
    pub t5_config: Named,
    pub t5_weights: Vec<Named>,
    pub t5_tokenizer: Named,
    pub clip_config: Named,
    pub clip_weights: Named,
    pub clip_tokenizer: Named,
}

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
        let t5_config = config::t5_config(&source(&files.t5_config), &files.t5_config.read()?)?;
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
        T5::load(
            &self.t5_config,
            &self.files.t5_weights,
            self.dtype,
            &self.device,
        )
    }

    pub fn load_flux(&self) -> Result<Flux, FluxError> {
        let files = std::slice::from_ref(&self.files.transformer);
        let vb = mmap(files, self.dtype, &self.device)?;
        Flux::new(&self.flux_config, vb).map_err(|e| load_error(files, e))
    }

    pub fn load_clip(&self) -> Result<Clip, FluxError> {
        Clip::load(
            &self.clip_config,
            &self.files.clip_weights,
            self.dtype,
            &self.device,
        )
    }

    /// The decoder half of the autoencoder; text-to-image never encodes.
    pub fn load_decoder(&self) -> Result<Decoder, FluxError> {
        let files = std::slice::from_ref(&self.files.vae);
        let vb = mmap(files, self.dtype, &self.device)?;
        Decoder::new(&self.vae_config, vb.pp("decoder")).map_err(|e| load_error(files, e))
    }

    pub fn tokenizers(&self) -> Result<Tokenizers, FluxError> {
        Tokenizers::load(&self.files.t5_tokenizer, &self.files.clip_tokenizer)
    }
}

/// What stays loaded between requests. In low-memory mode T5 and the
/// transformer are not kept: each request loads T5, encodes, frees it, then
/// loads the transformer.
pub struct Resident {
    pub tokenizers: Tokenizers,
    pub clip: Clip,
    pub decoder: Decoder,
    pub t5: Option<T5>,
    pub flux: Option<Flux>,
}
