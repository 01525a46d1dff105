//! Parameter counts and bytes: the transformer's and T5's by how their files store them, CLIP's and the VAE decoder's.

use crate::flux::weights::quant::{Quant, T5Quant};
use candle_core::DType;
use candle_transformers::models::clip::text_model::ClipTextConfig;
use candle_transformers::models::flux::{autoencoder, model};
use candle_transformers::models::t5;

pub(crate) const GB: f64 = 1e9;
/// The runtime, tokenizers and allocator slack.
pub(crate) const OVERHEAD: u64 = 512 << 20;
/// T5 always sees this many tokens.
pub(crate) const T5_TOKENS: u64 = crate::tokens::T5_LIMIT as u64;

/// The transformer's parameters, grouped by how city96's files store them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FluxParams {
    /// The blocks' matrices: quantized.
    pub block_matrices: u64,
    /// The embedders' and final layer's matrices: F16 in the files.
    pub top_matrices: u64,
    /// Biases and norm scales: F16 in the files.
    pub vectors: u64,
}

impl FluxParams {
    /// The counts, from the transformer's config.
    pub fn of(c: &model::Config) -> Self {
        let h = c.hidden_size as u64;
        let m = (c.hidden_size as f64 * c.mlp_ratio) as u64;
        let (ci, t, v) = (
            c.in_channels as u64,
            c.context_in_dim as u64,
            c.vec_in_dim as u64,
        );
        let d = h / c.num_heads as u64;
        let guidance = if c.guidance_embed { 1 } else { 0 };
        let top_matrices = h * ci
            + h * t
            + (1 + guidance) * (h * 256 + h * h)
            + h * v
            + h * h
            + ci * h
            + 2 * h * h;
        let top_vectors = h + h + (1 + guidance) * 2 * h + 2 * h + ci + 2 * h;
        let stream = 6 * h * h + 3 * h * h + h * h + 2 * m * h;
        let stream_vectors = 6 * h + 3 * h + h + m + h + 2 * d;
        let single = (3 * h + m) * h + h * (h + m) + 3 * h * h;
        let single_vectors = (3 * h + m) + h + 3 * h + 2 * d;
        let (double_n, single_n) = (c.depth as u64, c.depth_single_blocks as u64);
        Self {
            block_matrices: double_n * 2 * stream + single_n * single,
            top_matrices,
            vectors: top_vectors + double_n * 2 * stream_vectors + single_n * single_vectors,
        }
    }

    /// Every parameter.
    pub fn total(&self) -> u64 {
        self.block_matrices + self.top_matrices + self.vectors
    }

    /// The size of city96's GGUF of this type (tensor data, no header).
    pub fn gguf_bytes(&self, quant: Quant) -> Option<u64> {
        let bpw = quant.bits_per_weight()?;
        Some(
            (self.block_matrices as f64 * bpw / 8.0) as u64
                + (self.top_matrices + self.vectors) * 2,
        )
    }

    /// In memory: block matrices stay quantized (nothing repacks them: on
    /// the CPU the products are `cpu_ops`'), the vectors are widened to F32,
    /// and so are the F16 matrices on a GPU (counted so everywhere: 0.1 GB
    /// more than the CPU keeps); safetensors load whole in `dtype`.
    pub fn resident_bytes(&self, quant: Quant, dtype: DType) -> u64 {
        match quant.bits_per_weight() {
            Some(bpw) => {
                quantized_bytes(self.block_matrices, bpw) + (self.top_matrices + self.vectors) * 4
            }
            None => self.total() * dtype.size_in_bytes() as u64,
        }
    }
}

/// `params` weights quantized at `bits_per_weight` (of the file: mixes
/// included).
pub(crate) fn quantized_bytes(params: u64, bits_per_weight: f64) -> u64 {
    (params as f64 * bits_per_weight / 8.0) as u64
}

/// T5's encoder parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct T5Params {
    /// The token embedding's parameters.
    pub embedding: u64,
    /// Parameters in the matrices city96 quantizes.
    pub matrices: u64,
    /// Parameters in the norms (kept at full precision).
    pub vectors: u64,
    /// The attention heads.
    pub heads: u64,
}

impl T5Params {
    /// The counts, from T5's config.
    pub fn of(c: &t5::Config) -> Self {
        let (d, inner, ff) = (
            c.d_model as u64,
            (c.num_heads * c.d_kv) as u64,
            c.d_ff as u64,
        );
        let gated = if c.feed_forward_proj.gated { 3 } else { 2 };
        let layers = c.num_layers as u64;
        Self {
            embedding: c.vocab_size as u64 * d,
            matrices: layers * (4 * d * inner + gated * d * ff)
                + (c.relative_attention_num_buckets * c.num_heads) as u64,
            vectors: layers * 2 * d + d,
            heads: c.num_heads as u64,
        }
    }

    /// In memory. GGUF: the matrices and the embedding quantized (city96's
    /// real files give the bits per weight, mixes included; the embedding's
    /// rows are dequantized as they are looked up), the norms in F32.
    pub fn resident_bytes(&self, quant: T5Quant, dtype: DType) -> u64 {
        match quant.bits_per_weight() {
            Some(bpw) => quantized_bytes(self.matrices + self.embedding, bpw) + self.vectors * 4,
            None => (self.embedding + self.matrices + self.vectors) * dtype.size_in_bytes() as u64,
        }
    }

    /// Loading a GGUF with llama.cpp names holds the renamed file in memory
    /// while candle reads it (see `gguf::renamed`).
    pub fn load_extra_bytes(&self, quant: T5Quant) -> u64 {
        quant.bits_per_weight().map_or(0, |bpw| {
            ((self.matrices + self.embedding) as f64 * bpw / 8.0) as u64
        })
    }
}

/// CLIP's text model, in `dtype`.
pub fn clip_bytes(c: &ClipTextConfig, dtype: DType) -> u64 {
    let (w, i) = (c.embed_dim as u64, c.intermediate_size as u64);
    let per_layer = 4 * w * w + 4 * w + 2 * w * i + i + w + 4 * w;
    let params = c.vocab_size as u64 * w
        + c.max_position_embeddings as u64 * w
        + c.num_hidden_layers as u64 * per_layer
        + 2 * w;
    params * dtype.size_in_bytes() as u64
}

/// The VAE's decoder, in `dtype`: its 3×3 convolutions dominate.
pub fn decoder_bytes(c: &autoencoder::Config, dtype: DType) -> u64 {
    let chans: Vec<u64> = c.ch_mult.iter().map(|m| (c.ch * m) as u64).collect();
    let top = *chans.last().expect("at least one level");
    let conv = |a: u64, b: u64| 9 * a * b + b;
    let mut params = conv(c.z_channels as u64, top) + 2 * 2 * conv(top, top) + 4 * top * top;
    let mut prev = top;
    for &ch in chans.iter().rev() {
        for _ in 0..=c.num_res_blocks {
            params += conv(prev, ch) + conv(ch, ch) + prev * ch;
            prev = ch;
        }
        params += conv(ch, ch);
    }
    params += conv(chans[0], c.out_ch as u64);
    params * dtype.size_in_bytes() as u64
}
