//! candle configurations built from the config files that come with the
//! weights, so real and tiny models load through the same code.

use candle_transformers::models::clip::text_model::{Activation, ClipTextConfig};
use candle_transformers::models::flux::{autoencoder, model};
use candle_transformers::models::t5;
use serde::Deserialize;
use serde_json::Value;

use crate::flux::error::FluxError;

/// diffusers' default rotary axes for FLUX when the config has no `axes_dims_rope`.
const DEFAULT_AXES_DIMS_ROPE: [usize; 3] = [16, 56, 56];

/// What a config file is called in errors.
#[derive(Clone, Debug)]
pub struct ConfigSource(pub String);

fn invalid(source: &ConfigSource, field: &str, reason: impl Into<String>) -> FluxError {
    FluxError::Config {
        file: source.0.clone(),
        field: field.to_string(),
        reason: reason.into(),
    }
}

fn parse<T: for<'de> Deserialize<'de>>(source: &ConfigSource, json: &[u8]) -> Result<T, FluxError> {
    serde_json::from_slice(json).map_err(|e| {
        // serde names the missing or mistyped field in its message.
        invalid(source, "", e.to_string())
    })
}

/// diffusers' `FluxTransformer2DModel` config (`transformer/config.json`).
#[derive(Debug, Deserialize)]
struct DiffusersTransformer {
    attention_head_dim: usize,
    num_attention_heads: usize,
    num_layers: usize,
    num_single_layers: usize,
    in_channels: usize,
    joint_attention_dim: usize,
    pooled_projection_dim: usize,
    #[serde(default)]
    guidance_embeds: bool,
    axes_dims_rope: Option<Vec<usize>>,
}

/// `transformer/config.json` → candle's FLUX config.
pub fn flux_config(source: &ConfigSource, json: &[u8]) -> Result<model::Config, FluxError> {
    let c: DiffusersTransformer = parse(source, json)?;
    let axes_dim = c
        .axes_dims_rope
        .unwrap_or_else(|| DEFAULT_AXES_DIMS_ROPE.to_vec());
    if axes_dim.iter().sum::<usize>() != c.attention_head_dim {
        return Err(invalid(
            source,
            "axes_dims_rope",
            format!(
                "{axes_dim:?} sums to {}, but attention_head_dim is {}",
                axes_dim.iter().sum::<usize>(),
                c.attention_head_dim
            ),
        ));
    }
    if axes_dim.iter().any(|d| d % 2 != 0) {
        return Err(invalid(
            source,
            "axes_dims_rope",
            "every rotary axis must be even",
        ));
    }
    if c.in_channels != 64 {
        return Err(invalid(
            source,
            "in_channels",
            format!(
                "{} (the sampler packs 16 latent channels into 2×2 patches: 64)",
                c.in_channels
            ),
        ));
    }
    Ok(model::Config {
        in_channels: c.in_channels,
        vec_in_dim: c.pooled_projection_dim,
        context_in_dim: c.joint_attention_dim,
        hidden_size: c.num_attention_heads * c.attention_head_dim,
        mlp_ratio: 4.0,
        num_heads: c.num_attention_heads,
        depth: c.num_layers,
        depth_single_blocks: c.num_single_layers,
        axes_dim,
        theta: 10_000,
        qkv_bias: true,
        guidance_embed: c.guidance_embeds,
    })
}

/// diffusers' `AutoencoderKL` config (`vae/config.json`).
#[derive(Debug, Deserialize)]
struct DiffusersVae {
    block_out_channels: Vec<usize>,
    layers_per_block: usize,
    latent_channels: usize,
    #[serde(default = "three")]
    in_channels: usize,
    #[serde(default = "three")]
    out_channels: usize,
    scaling_factor: f64,
    #[serde(default)]
    shift_factor: Option<f64>,
}

fn three() -> usize {
    3
}

/// `vae/config.json` → candle's FLUX autoencoder config.
pub fn vae_config(source: &ConfigSource, json: &[u8]) -> Result<autoencoder::Config, FluxError> {
    let c: DiffusersVae = parse(source, json)?;
    let ch = *c
        .block_out_channels
        .first()
        .ok_or_else(|| invalid(source, "block_out_channels", "is empty"))?;
    if c.block_out_channels
        .iter()
        .any(|b| b % ch != 0 || b % 32 != 0)
    {
        return Err(invalid(
            source,
            "block_out_channels",
            format!(
                "{:?}: each must be a multiple of the first and of 32 (group norm)",
                c.block_out_channels
            ),
        ));
    }
    if c.block_out_channels.len() != 4 {
        return Err(invalid(
            source,
            "block_out_channels",
            "FLUX's VAE has 4 levels (8× upsampling)",
        ));
    }
    if c.latent_channels != 16 {
        return Err(invalid(
            source,
            "latent_channels",
            format!("{} (FLUX latents have 16)", c.latent_channels),
        ));
    }
    Ok(autoencoder::Config {
        resolution: 256,
        in_channels: c.in_channels,
        ch,
        out_ch: c.out_channels,
        ch_mult: c.block_out_channels.iter().map(|b| b / ch).collect(),
        num_res_blocks: c.layers_per_block,
        z_channels: c.latent_channels,
        scale_factor: c.scaling_factor,
        shift_factor: c
            .shift_factor
            .ok_or_else(|| invalid(source, "shift_factor", "missing (FLUX's VAE has one)"))?,
    })
}

/// T5's `config.json` (google's, or the FLUX repo's `text_encoder_2/`).
pub fn t5_config(source: &ConfigSource, json: &[u8]) -> Result<t5::Config, FluxError> {
    parse(source, json)
}

/// The keys of transformers' `CLIPTextConfig`, with its defaults.
#[derive(Debug, Deserialize)]
struct HfClipText {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default = "clip_positions")]
    max_position_embeddings: usize,
    #[serde(default = "quick_gelu")]
    hidden_act: String,
    #[serde(default = "clip_vocab")]
    vocab_size: usize,
    #[serde(default = "clip_projection")]
    projection_dim: usize,
}

fn clip_positions() -> usize {
    77
}
fn quick_gelu() -> String {
    "quick_gelu".into()
}
fn clip_vocab() -> usize {
    49408
}
fn clip_projection() -> usize {
    512
}

/// A CLIP text config, flat (`text_encoder/config.json`) or nested under
/// `text_config` (the full CLIP model's `config.json`).
pub fn clip_text_config(source: &ConfigSource, json: &[u8]) -> Result<ClipTextConfig, FluxError> {
    let value: Value = parse(source, json)?;
    let text = match value.get("text_config") {
        Some(nested) => nested.clone(),
        None => value,
    };
    let c: HfClipText =
        serde_json::from_value(text).map_err(|e| invalid(source, "text_config", e.to_string()))?;
    if c.hidden_act != "quick_gelu" {
        return Err(invalid(
            source,
            "hidden_act",
            format!(
                "{:?}: candle's CLIP text model supports quick_gelu only",
                c.hidden_act
            ),
        ));
    }
    Ok(ClipTextConfig {
        vocab_size: c.vocab_size,
        embed_dim: c.hidden_size,
        activation: Activation::QuickGelu,
        intermediate_size: c.intermediate_size,
        max_position_embeddings: c.max_position_embeddings,
        pad_with: None,
        num_hidden_layers: c.num_hidden_layers,
        num_attention_heads: c.num_attention_heads,
        projection_dim: c.projection_dim,
    })
}

/// Checks that the three models fit together; the FLUX transformer's input
/// sizes are fixed by the text encoders.
pub fn check_coupling(
    flux: &model::Config,
    t5: &t5::Config,
    clip: &ClipTextConfig,
    flux_source: &ConfigSource,
) -> Result<(), FluxError> {
    if flux.context_in_dim != t5.d_model {
        return Err(invalid(
            flux_source,
            "joint_attention_dim",
            format!(
                "{} but the T5 encoder's d_model is {}",
                flux.context_in_dim, t5.d_model
            ),
        ));
    }
    if flux.vec_in_dim != clip.embed_dim {
        return Err(invalid(
            flux_source,
            "pooled_projection_dim",
            format!(
                "{} but the CLIP text model's hidden_size is {}",
                flux.vec_in_dim, clip.embed_dim
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
