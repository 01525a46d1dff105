//! What to write: a random-weight model's sizes ([`ModelSizes`]), the
//! `--size` presets ([`Size`]) and the files and types ([`WriteOptions`]).

use std::fmt;
use std::str::FromStr;

use crate::flux::{Quant, T5Quant};

/// The sizes of a random-weight model. Some couplings are fixed by candle's
/// sampler: 64 input channels (16 latent channels in 2×2 patches),
/// `vec_in_dim` = CLIP width, `context_in_dim` = T5 `d_model`, rotary axes
/// summing to the head size, and VAE channels in multiples of 32 (group
/// norm). K-quant GGUF types need every quantized matrix's input width to be
/// a multiple of 256: the transformer's width and T5's `d_model`, inner
/// width and `d_ff`.
#[derive(Clone, Debug)]
pub struct ModelSizes {
    /// The transformer's attention heads.
    pub heads: usize,
    /// Each head's width.
    pub head_dim: usize,
    /// The rotary embedding's axes; they sum to `head_dim`.
    pub axes_dims_rope: [usize; 3],
    /// Double-stream (image and text) blocks.
    pub double_blocks: usize,
    /// Single-stream blocks.
    pub single_blocks: usize,
    /// T5's width.
    pub t5_d_model: usize,
    /// T5's encoder layers.
    pub t5_layers: usize,
    /// T5's attention heads.
    pub t5_heads: usize,
    /// T5's feed-forward width.
    pub t5_d_ff: usize,
    /// T5's vocabulary; by default the tiny tokenizer's.
    pub t5_vocab: Option<usize>,
    /// CLIP's width (also the transformer's `vec_in_dim`).
    pub clip_width: usize,
    /// CLIP's layers.
    pub clip_layers: usize,
    /// CLIP's attention heads.
    pub clip_heads: usize,
    /// CLIP's feed-forward width.
    pub clip_intermediate: usize,
    /// CLIP's vocabulary; by default the tiny tokenizer's.
    pub clip_vocab: Option<usize>,
    /// The VAE's channels per level, multiples of 32.
    pub vae_channels: [usize; 4],
    /// The VAE's residual blocks per level.
    pub vae_res_blocks: usize,
}

impl ModelSizes {
    /// Toy sizes (a 256-wide transformer, one block of each kind): a
    /// generation at 256×256 takes well under a second.
    pub fn tiny() -> Self {
        Self {
            heads: 2,
            head_dim: 128,
            axes_dims_rope: [16, 56, 56],
            double_blocks: 1,
            single_blocks: 1,
            t5_d_model: 256,
            t5_layers: 2,
            t5_heads: 4,
            t5_d_ff: 512,
            t5_vocab: None,
            clip_width: 32,
            clip_layers: 2,
            clip_heads: 4,
            clip_intermediate: 64,
            clip_vocab: None,
            vae_channels: [32, 32, 32, 32],
            vae_res_blocks: 1,
        }
    }

    /// For CPU benchmarks: a 768-wide transformer with 2 double and 4 single
    /// blocks, a T5-small-sized encoder, CLIP-L's text model and the real VAE.
    pub fn bench() -> Self {
        Self {
            heads: 12,
            head_dim: 64,
            axes_dims_rope: [8, 28, 28],
            double_blocks: 2,
            single_blocks: 4,
            t5_d_model: 512,
            t5_layers: 6,
            t5_heads: 8,
            t5_d_ff: 1024,
            t5_vocab: None,
            clip_width: 768,
            clip_layers: 12,
            clip_heads: 12,
            clip_intermediate: 3072,
            clip_vocab: None,
            vae_channels: [128, 256, 512, 512],
            vae_res_blocks: 2,
        }
    }

    /// FLUX.1-schnell's real architecture: 3072 wide, 19 double and 38
    /// single blocks; T5-XXL's encoder; CLIP-L's text model; the real VAE.
    pub fn real() -> Self {
        Self {
            heads: 24,
            head_dim: 128,
            axes_dims_rope: [16, 56, 56],
            double_blocks: 19,
            single_blocks: 38,
            t5_d_model: 4096,
            t5_layers: 24,
            t5_heads: 64,
            t5_d_ff: 10240,
            t5_vocab: Some(32128),
            clip_width: 768,
            clip_layers: 12,
            clip_heads: 12,
            clip_intermediate: 3072,
            clip_vocab: Some(49408),
            vae_channels: [128, 256, 512, 512],
            vae_res_blocks: 2,
        }
    }
}

/// `--size` of `schnell dev random-models`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    Tiny,
    Bench,
    Real,
}

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tiny" => Ok(Size::Tiny),
            "bench" => Ok(Size::Bench),
            "real" => Ok(Size::Real),
            other => Err(format!("unknown size {other:?}: use tiny, bench or real")),
        }
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Size::Tiny => "tiny",
            Size::Bench => "bench",
            Size::Real => "real",
        })
    }
}

/// What to write.
#[derive(Clone, Debug)]
pub struct WriteOptions {
    /// The model's sizes.
    pub sizes: ModelSizes,
    /// The transformer's files: `none` is the BF16 safetensors.
    pub quants: Vec<Quant>,
    /// T5's files: `none` is the FLUX repo's BF16 shards.
    pub t5_quants: Vec<T5Quant>,
    /// Also google's full T5 and openai's full CLIP (`--text-encoders original`).
    pub original: bool,
}

impl WriteOptions {
    /// Every type, both text-encoder sets.
    pub fn everything(sizes: ModelSizes) -> Self {
        Self {
            sizes,
            quants: Quant::all().collect(),
            t5_quants: T5Quant::all().collect(),
            original: true,
        }
    }

    /// `size`, in the types given (default: every type, but for `real` only
    /// Q4_0: each real file is gigabytes). T5 gets the type nearest each.
    /// `none` brings the safetensors, and below `real` also the
    /// `--text-encoders original` set (google's full T5 is 44.5 GB at real size).
    pub fn for_size(size: Size, quants: Option<Vec<Quant>>) -> Self {
        let sizes = match size {
            Size::Tiny => ModelSizes::tiny(),
            Size::Bench => ModelSizes::bench(),
            Size::Real => ModelSizes::real(),
        };
        let quants = match (size, quants) {
            (Size::Real, None) => vec![Quant::Q4_0],
            (_, None) => return Self::everything(sizes),
            (_, Some(quants)) => quants,
        };
        let mut t5_quants: Vec<T5Quant> = Vec::new();
        for t5 in quants.iter().map(|q| T5Quant::nearest(*q)) {
            if !t5_quants.contains(&t5) {
                t5_quants.push(t5);
            }
        }
        Self {
            sizes,
            original: size != Size::Real && quants.contains(&Quant::None),
            quants,
            t5_quants,
        }
    }
}
