//! T5's encoder on GGUF weights, whose products are the transformer's
//! ([`Linear`]): on the CPU the matrices stay quantized and are multiplied a
//! dequantized panel at a time, where candle's `quantized_t5` takes a dot
//! product per output element (a new prompt's encoding is most of a
//! minute that way at 256 tokens).
//!
//! The computation is candle-transformers 0.11's `quantized_t5` encoder
//! (MIT or Apache-2.0, by the candle authors), without the decoder, the KV
//! cache and the masks only a decoder uses: RMS norms, attention with no
//! scaling and the first layer's relative position bias shared by all,
//! and the gated feed-forward of T5 v1.1. Token embeddings are dequantized
//! row by row as they are looked up, not as a whole table (half a GB for
//! T5-XXL in f32).

use candle_core::quantized::QTensor;
use candle_core::{Device, Module, Result, Tensor};
use candle_nn::Activation;
use candle_transformers::models::t5::Config;
use candle_transformers::quantized_var_builder::VarBuilder;
use std::sync::Arc;

use crate::flux::model::cpu_ops::dequantize_rows;
use crate::flux::model::linear::{linear_b, Linear, Weights};

/// T5's RMS norm with a learned scale.
struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    fn load(dim: usize, eps: f64, vb: &VarBuilder) -> Result<Self> {
        let weight = vb.get(dim, "weight")?.dequantize(vb.device())?;
        Ok(Self {
            weight,
            eps: eps as f32,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        candle_nn::ops::rms_norm(&xs.contiguous()?, &self.weight, self.eps)
    }
}

fn matrix(in_dim: usize, out_dim: usize, vb: &VarBuilder) -> Result<Linear> {
    linear_b(in_dim, out_dim, false, Weights::Quantized(vb.clone()))
}

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
    d_kv: usize,
    /// The first layer's `(buckets, heads)` table.
    relative_bias: Option<Tensor>,
}

impl Attention {
    fn load(first: bool, vb: &VarBuilder, cfg: &Config) -> Result<Self> {
        let inner = cfg.num_heads * cfg.d_kv;
        let relative_bias = first
            .then(|| {
                let shape = (cfg.relative_attention_num_buckets, cfg.num_heads);
                vb.get(shape, "relative_attention_bias.weight")?
                    .dequantize(vb.device())
            })
            .transpose()?;
        Ok(Self {
            q: matrix(cfg.d_model, inner, &vb.pp("q"))?,
            k: matrix(cfg.d_model, inner, &vb.pp("k"))?,
            v: matrix(cfg.d_model, inner, &vb.pp("v"))?,
            o: matrix(inner, cfg.d_model, &vb.pp("o"))?,
            heads: cfg.num_heads,
            d_kv: cfg.d_kv,
            relative_bias,
        })
    }

    /// The attention's output, and the position bias (made here in the
    /// first layer, passed on to the others).
    fn forward(
        &self,
        xs: &Tensor,
        bias: Option<&Tensor>,
        cfg: &Config,
    ) -> Result<(Tensor, Tensor)> {
        let (b, l, _) = xs.dims3()?;
        let heads = |t: Tensor| -> Result<Tensor> {
            t.reshape((b, l, self.heads, self.d_kv))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = heads(self.q.forward(xs)?)?;
        let k = heads(self.k.forward(xs)?)?;
        let v = heads(self.v.forward(xs)?)?;
        let bias = match (bias, &self.relative_bias) {
            (Some(bias), _) => bias.clone(),
            (None, Some(table)) => position_bias(table, l, cfg, xs.device())?,
            (None, None) => candle_core::bail!("T5: no relative attention bias in the first layer"),
        };
        let scores = q.matmul(&k.t()?)?.broadcast_add(&bias)?;
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = weights
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, l, self.heads * self.d_kv))?;
        Ok((self.o.forward(&out)?, bias))
    }
}

/// `(1, heads, l, l)`: each head's bias for each query and key position,
/// from T5's bidirectional relative position buckets. Keys more than
/// `relative_attention_max_distance` before the query share the last
/// bucket of their half, as in transformers and candle's `t5`; candle's
/// `quantized_t5` lets them run into the other half's buckets (from 128
/// tokens apart: FLUX's prompts have 256).
fn position_bias(table: &Tensor, l: usize, cfg: &Config, device: &Device) -> Result<Tensor> {
    let buckets = cfg.relative_attention_num_buckets as u32 / 2;
    let exact = buckets / 2;
    let log_span = (cfg.relative_attention_max_distance as f32 / exact as f32).ln();
    let far = |distance: u32| {
        let b = ((distance as f32 / exact as f32).ln() / log_span) * (buckets - exact) as f32;
        exact + b as u32
    };
    let ids: Vec<u32> = (0..l as u32)
        .flat_map(|i| {
            (0..l as u32).map(move |j| match i < j {
                true if j - i < exact => j - i + buckets,
                true => (far(j - i) + buckets).min(cfg.relative_attention_num_buckets as u32 - 1),
                false if i - j < exact => i - j,
                false => far(i - j).min(buckets - 1),
            })
        })
        .collect();
    let ids = Tensor::from_vec(ids, l * l, device)?;
    table
        .index_select(&ids, 0)?
        .reshape((l, l, cfg.num_heads))?
        .permute((2, 0, 1))?
        .unsqueeze(0)
}

/// T5 v1.1's gated feed-forward: `wo(act(wi_0 x) ⊙ wi_1 x)`.
struct FeedForward {
    wi_0: Linear,
    wi_1: Linear,
    wo: Linear,
    act: Activation,
}

impl FeedForward {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let gate = self.act.forward(&self.wi_0.forward(xs)?)?;
        let hidden = (gate * self.wi_1.forward(xs)?)?;
        self.wo.forward(&hidden)
    }
}

struct Block {
    attention_norm: RmsNorm,
    attention: Attention,
    ff_norm: RmsNorm,
    ff: FeedForward,
}

impl Block {
    fn load(first: bool, vb: &VarBuilder, cfg: &Config) -> Result<Self> {
        let (attn, ff) = (vb.pp("layer.0"), vb.pp("layer.1"));
        let dense = ff.pp("DenseReluDense");
        Ok(Self {
            attention_norm: RmsNorm::load(
                cfg.d_model,
                cfg.layer_norm_epsilon,
                &attn.pp("layer_norm"),
            )?,
            attention: Attention::load(first, &attn.pp("SelfAttention"), cfg)?,
            ff_norm: RmsNorm::load(cfg.d_model, cfg.layer_norm_epsilon, &ff.pp("layer_norm"))?,
            ff: FeedForward {
                wi_0: matrix(cfg.d_model, cfg.d_ff, &dense.pp("wi_0"))?,
                wi_1: matrix(cfg.d_model, cfg.d_ff, &dense.pp("wi_1"))?,
                wo: matrix(cfg.d_ff, cfg.d_model, &dense.pp("wo"))?,
                act: cfg.feed_forward_proj.activation,
            },
        })
    }
}

/// T5's encoder (v1.1, gated feed-forward) on GGUF weights in candle's
/// names.
pub struct QuantizedT5Encoder {
    embeddings: Arc<QTensor>,
    blocks: Vec<Block>,
    final_norm: RmsNorm,
    config: Config,
}

impl QuantizedT5Encoder {
    /// From a GGUF file in transformers' names (`encoder.block.N.…`,
    /// `shared.weight`).
    pub fn load(vb: VarBuilder, config: &Config) -> Result<Self> {
        if !config.feed_forward_proj.gated {
            candle_core::bail!("T5: only v1.1's gated feed-forward is supported");
        }
        // The table's names in the files seen: candle's `t5` reads all three.
        let table = ["shared", "encoder.embed_tokens", "decoder.embed_tokens"]
            .into_iter()
            .find(|name| vb.contains_key(&format!("{name}.weight")))
            .unwrap_or("shared");
        let embeddings = vb
            .pp(table)
            .get((config.vocab_size, config.d_model), "weight")?;
        let encoder = vb.pp("encoder");
        let blocks = (0..config.num_layers)
            .map(|i| Block::load(i == 0, &encoder.pp(format!("block.{i}")), config))
            .collect::<Result<Vec<_>>>()?;
        let final_norm = RmsNorm::load(
            config.d_model,
            config.layer_norm_epsilon,
            &encoder.pp("final_layer_norm"),
        )?;
        Ok(Self {
            embeddings,
            blocks,
            final_norm,
            config: config.clone(),
        })
    }

    /// `(1, ids, d_model)` in f32. The products stay on f32 panels, never
    /// in 8 bits: T5 v1.1's activations have outliers hundreds of times
    /// the rest (why it overflows in f16), and a block of 32 rounded to 8
    /// bits around one loses its neighbours (on the tiny random model 8
    /// bits put the output off by 14% of its largest value). An encoding is
    /// once per prompt, so it costs little.
    pub fn forward(&self, ids: &[u32], device: &Device) -> Result<Tensor> {
        use crate::flux::model::cpu_ops::{with_quantized_product, QuantizedProduct};
        with_quantized_product(QuantizedProduct::F32Panels, || self.encode(ids, device))
    }

    fn encode(&self, ids: &[u32], device: &Device) -> Result<Tensor> {
        let mut xs = dequantize_rows(&self.embeddings, ids, device)?.unsqueeze(0)?;
        let mut bias = None;
        for block in &self.blocks {
            let (ys, b) = block.attention.forward(
                &block.attention_norm.forward(&xs)?,
                bias.as_ref(),
                &self.config,
            )?;
            bias = Some(b);
            xs = (xs + ys)?;
            xs = (&xs + block.ff.forward(&block.ff_norm.forward(&xs)?)?)?;
        }
        self.final_norm.forward(&xs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{gguf_file, GgmlDType};
    use candle_core::DType;
    use candle_nn::{VarBuilder as FloatVarBuilder, VarMap};
    use candle_transformers::models::t5;

    /// On Q8_0 weights, with more tokens than the position buckets reach
    /// exactly, the encoder computes what candle's full-precision T5
    /// computes on the same weights dequantized, within f32 rounding: every
    /// product here has enough rows to dequantize its weight rather than
    /// round its input.
    #[test]
    fn encoder_is_candles_t5_on_the_dequantized_weights() {
        let config: Config = serde_json::from_value(serde_json::json!({
            "vocab_size": 50, "d_model": 64, "d_kv": 16, "d_ff": 96, "num_layers": 2,
            "num_heads": 4, "relative_attention_num_buckets": 8,
            "relative_attention_max_distance": 6, "dropout_rate": 0.0,
            "layer_norm_epsilon": 1e-6, "initializer_factor": 1.0,
            "feed_forward_proj": "gated-gelu", "is_encoder_decoder": true,
            "pad_token_id": 0, "eos_token_id": 1
        }))
        .unwrap();
        let cpu = Device::Cpu;
        let vars = VarMap::new();
        t5::T5EncoderModel::load(
            FloatVarBuilder::from_varmap(&vars, DType::F32, &cpu),
            &config,
        )
        .unwrap();
        let mut quantized = Vec::new();
        for (name, var) in vars.data().lock().unwrap().iter() {
            let t = var.as_tensor();
            // Norm scales of one would hide a swapped norm.
            let t = match name.ends_with("layer_norm.weight") {
                true => Tensor::randn(1f32, 0.3, t.dims(), &cpu).unwrap(),
                false => t.clone(),
            };
            let dtype = match t.rank() == 2 && t.dim(1).unwrap() % 32 == 0 {
                true => GgmlDType::Q8_0,
                false => GgmlDType::F32,
            };
            quantized.push((name.clone(), QTensor::quantize(&t, dtype).unwrap()));
        }
        let dequantized = quantized
            .iter()
            .map(|(name, q)| (name.clone(), q.dequantize(&cpu).unwrap()))
            .collect();
        let named: Vec<(&str, &QTensor)> = quantized.iter().map(|(n, q)| (n.as_str(), q)).collect();
        let mut file = std::io::Cursor::new(Vec::new());
        gguf_file::write(&mut file, &[], &named).unwrap();
        let vb = VarBuilder::from_gguf_buffer(file.get_ref(), &cpu).unwrap();
        let ours = QuantizedT5Encoder::load(vb, &config).unwrap();
        let mut theirs = t5::T5EncoderModel::load(
            FloatVarBuilder::from_tensors(dequantized, DType::F32, &cpu),
            &config,
        )
        .unwrap();

        let ids: Vec<u32> = (0..20).map(|i| (i * 7 + 3) % 50).collect();
        let a = ours.forward(&ids, &cpu).unwrap();
        let b = theirs
            .forward(
                &Tensor::new(ids.as_slice(), &cpu)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap(),
            )
            .unwrap();
        let err = crate::flux::test_util::max_abs_diff(&a, &b);
        let top = crate::flux::test_util::max_abs_diff(&b, &b.zeros_like().unwrap());
        assert!(
            top > 0.0 && err <= 1e-4 * top,
            "off by {err} (values up to {top})"
        );
    }
}
