//! The model's sizes from its configs, and the peak memory of one choice of weights for one workload.

use crate::flux::error::FluxError;
use crate::flux::model::attention::SCORE_BYTES;
use crate::flux::model::vae;
use crate::flux::weights::config::{self, ConfigSource};
use crate::flux::weights::quant::{Quant, T5Quant};
use candle_core::DType;
use candle_transformers::models::clip::text_model::ClipTextConfig;
use candle_transformers::models::flux::{autoencoder, model};
use candle_transformers::models::t5;

use super::params::*;

/// The model's sizes, from its configs.
#[derive(Clone, Debug)]
pub struct ModelSize {
    /// The transformer's parameters.
    pub flux: FluxParams,
    /// The transformer's attention heads.
    pub flux_heads: u64,
    /// The transformer's hidden size.
    pub flux_width: u64,
    /// T5's encoder parameters.
    pub t5: T5Params,
    /// CLIP's weights in f32, in bytes.
    pub clip_params_bytes_f32: u64,
    /// The VAE decoder's weights in f32, in bytes.
    pub decoder_bytes_f32: u64,
    /// Channels of the VAE's widest (latent-side) blocks.
    pub vae_top_channels: u64,
    /// Channels of the VAE's full-resolution blocks.
    pub vae_first_channels: u64,
}

impl ModelSize {
    /// The sizes, from the four parsed configs.
    pub fn of(
        flux: &model::Config,
        t5: &t5::Config,
        clip: &ClipTextConfig,
        vae: &autoencoder::Config,
    ) -> Self {
        Self {
            flux: FluxParams::of(flux),
            flux_heads: flux.num_heads as u64,
            flux_width: flux.hidden_size as u64,
            t5: T5Params::of(t5),
            clip_params_bytes_f32: clip_bytes(clip, DType::F32),
            decoder_bytes_f32: decoder_bytes(vae, DType::F32),
            vae_top_channels: (vae.ch * vae.ch_mult.last().copied().unwrap_or(1)) as u64,
            vae_first_channels: (vae.ch * vae.ch_mult.first().copied().unwrap_or(1)) as u64,
        }
    }
}

impl ModelSize {
    /// From the config files' bytes, in the order transformer, T5, CLIP, VAE;
    /// each named by its source in errors.
    pub fn from_configs(files: [(&ConfigSource, &[u8]); 4]) -> Result<Self, FluxError> {
        let [flux, t5, clip, vae] = files;
        Ok(Self::of(
            &config::flux_config(flux.0, flux.1)?,
            &config::t5_config(t5.0, t5.1)?,
            &config::clip_text_config(clip.0, clip.1)?,
            &config::vae_config(vae.0, vae.1)?,
        ))
    }
}

/// The real FLUX.1-schnell's config files under `tests/fixtures` (verbatim
/// copies; CLIP's reconstructed), in `from_configs`' order.
pub const REAL_CONFIGS: [&str; 4] = [
    "hub/black-forest-labs/FLUX.1-schnell/transformer/config.json",
    "hub/google/t5-v1_1-xxl/config.json",
    "reconstructed/flux-text_encoder-config.json",
    "hub/black-forest-labs/FLUX.1-schnell/vae/config.json",
];

/// What an engine will do, for the estimate.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    /// CLIP's and the VAE's dtype (and the full-precision transformer's).
    pub dtype: DType,
    /// The image's width in pixels.
    pub width: u32,
    /// The image's height in pixels.
    pub height: u32,
    /// Whether only one part is loaded at a time (`--low-memory`).
    pub low_memory: bool,
    /// On the CPU (elsewhere T5's GGUF embedding is dequantized whole for
    /// each encoding, and the VAE's encoder is candle's).
    pub cpu: bool,
    /// The VAE decodes in tiles (`vae::Decoder::decode_tiled`).
    pub tiled_vae: bool,
    /// An edit: the VAE's encoder runs on the image first.
    pub edit: bool,
    /// Images in each transformer pass (at least 1).
    pub batch: u32,
}

/// The peak memory of one choice of weights, in bytes.
pub fn estimate_peak(size: &ModelSize, plan: (Quant, T5Quant), work: &Workload) -> u64 {
    let (quant, t5q) = plan;
    let s = work.dtype.size_in_bytes() as u64;
    let scale = |bytes_f32: u64| bytes_f32 / 4 * s;
    // CLIP beside GGUF weights on the CPU: F16 (`run::loaded::clip_dtype`).
    let clip = match quant != Quant::None && work.cpu {
        true => size.clip_params_bytes_f32 / 2,
        false => scale(size.clip_params_bytes_f32),
    };
    let always = clip + scale(size.decoder_bytes_f32);
    let flux = size.flux.resident_bytes(quant, work.dtype);
    // T5 while it encodes (on a GPU with its GGUF embedding dequantized
    // whole), and while it loads (the renamed file in memory).
    let t5 = size.t5.resident_bytes(t5q, work.dtype);
    let t5_gpu_table = match t5q != T5Quant::None && !work.cpu {
        true => size.t5.embedding * 4,
        false => 0,
    };
    let t5_load = t5 + size.t5.load_extra_bytes(t5q);

    // The quantized transformer computes in F32.
    let flux_s = if quant == Quant::None { s } else { 4 };
    let (w, h) = (work.width as u64, work.height as u64);
    let tokens = (w / 16) * (h / 16) + T5_TOKENS;
    // The attention's scores and their softmax live together, in row blocks
    // of at most `SCORE_BYTES` each (`crate::flux::model::attention`); beside them a few
    // of the single blocks' widest activations (linear1: 3h for q, k, v and
    // 4h for the MLP).
    let scores = |bytes: u64| 2 * bytes.min(SCORE_BYTES as u64);
    let mlp_wide = 7 * size.flux_width;
    // A batch's images each have their own activations; the scores' row
    // blocks span every image and head, under the same cap.
    let batch = u64::from(work.batch.max(1));
    let flux_act = scores(batch * size.flux_heads * tokens * tokens * flux_s)
        + batch * 4 * tokens * mlp_wide * flux_s;
    let t5_act = 3 * size.t5.heads * T5_TOKENS * T5_TOKENS * 4 + t5_gpu_table;
    // The VAE: its mid-block attention at latent size, or about eight
    // full-resolution tensors as wide as its last block (norms, activations
    // and convolutions each make one; the tiny model at 2048², 32 channels,
    // peaked at 4.4 GB RSS). Tiled, that of one tile, plus the blended
    // image's sums and weights in F32.
    let vae_act = if work.tiled_vae {
        let tile = (vae::TILE * 8) as u64;
        let (tw, th) = (w.min(tile), h.min(tile));
        vae_activations(size, tw, th, s) + 4 * 4 * w * h
    } else {
        vae_activations(size, w, h, s)
    };

    // An edit loads the encoder for its image, beside everything else, and
    // frees it: its weights (fewer than the decoder's: 34 M parameters
    // against 50 M in FLUX's; planned as many) and activations. On the CPU
    // in f32 the encoder is `model::vae::cpu`'s, which, as its decoder, makes no
    // unfolded copies.
    let encode = if work.edit {
        let owned = work.cpu && work.dtype == DType::F32;
        scale(size.decoder_bytes_f32)
            + encoder_activations(size, w, h, s, if owned { 8 } else { 12 })
    } else {
        0
    };

    let peak = if work.low_memory {
        // One part at a time: T5, CLIP, an edit's encoder, the
        // transformer, the decoder.
        let decoder = scale(size.decoder_bytes_f32);
        [
            t5_load.max(t5 + t5_act),
            clip,
            flux + flux_act,
            decoder + vae_act,
            encode,
        ]
        .into_iter()
        .max()
        .expect("not empty")
    } else {
        let loading = always + t5_load;
        let running = always + t5 + flux + flux_act.max(t5_act).max(vae_act).max(encode);
        loading.max(running)
    };
    peak + OVERHEAD
}

/// The VAE decoder's activations for a `w`×`h` image in `s`-byte elements.
pub(crate) fn vae_activations(size: &ModelSize, w: u64, h: u64, s: u64) -> u64 {
    let latent = (w / 8) * (h / 8);
    let scores = 2 * (latent * latent * s).min(SCORE_BYTES as u64);
    (scores + latent * size.vae_top_channels * 4 * s).max(8 * size.vae_first_channels * w * h * s)
        + 2 * size.vae_top_channels * latent * s
}

/// The VAE encoder's activations for a `w`×`h` image: `maps` full-resolution
/// tensors as wide as its first block (candle's 3×3 convolutions unfold
/// their input ninefold (im2col) beside their input and output: 12; the
/// channels-last encoder's, as the decoder's: 8); or the mid-block attention
/// at latent size, as the decoder's.
pub(crate) fn encoder_activations(size: &ModelSize, w: u64, h: u64, s: u64, maps: u64) -> u64 {
    let latent = (w / 8) * (h / 8);
    let scores = 2 * (latent * latent * s).min(SCORE_BYTES as u64);
    (scores + latent * size.vae_top_channels * 4 * s)
        .max(maps * size.vae_first_channels * w * h * s)
}
