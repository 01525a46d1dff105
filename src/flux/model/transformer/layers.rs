//! The transformer's small layers: linear layers, norms, the rotary position embedding, the timestep and position embedders.

use crate::flux::model::cpu_ops::on_cpu_f32;
pub(super) use crate::flux::model::linear::{linear, linear_b, Linear, Weights};
use candle_core::{DType, IndexOp, Module, Result, Tensor, D};
use candle_nn::{LayerNorm, RmsNorm};

/// FLUX's layer norms have no weights, and each is followed by a
/// modulation (see [`ModulationOut::modulate`]).
pub(super) const LAYER_NORM_EPS: f64 = 1e-6;

pub(super) fn layer_norm(dim: usize, vb: Weights) -> Result<LayerNorm> {
    let ws = Tensor::ones(dim, vb.dtype(), vb.device())?;
    Ok(LayerNorm::new_no_bias(ws, LAYER_NORM_EPS))
}

/// candle's RMS norm is fused only for contiguous input; q and k are
/// strided views of the qkv projection. On the CPU in f32 they are copied
/// first (copy and fused norm: 0.9 ms at 1280 tokens; the unfused norm: 3.5).
pub(super) fn rms_norm(x: &Tensor, norm: &RmsNorm) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply(norm)
    } else {
        x.apply(norm)
    }
}

/// The rotary angles of one position axis, as `(b, n, dim/2, 2, 2)` rotation
/// matrices in `dtype`. The angles and their cos/sin are computed in F32
/// whatever the model's dtype: in bf16 a position of 64 times a frequency
/// near 1 is off by up to 0.25 rad, which blurs large images. candle computes
/// them in the ids' dtype; diffusers and BFL in f32/f64, as here.
pub(super) fn rope(pos: &Tensor, dim: usize, theta: usize, dtype: DType) -> Result<Tensor> {
    if dim % 2 == 1 {
        candle_core::bail!("dim {dim} is odd")
    }
    let dev = pos.device();
    let theta = theta as f64;
    let inv_freq: Vec<_> = (0..dim)
        .step_by(2)
        .map(|i| 1f32 / theta.powf(i as f64 / dim as f64) as f32)
        .collect();
    let inv_freq_len = inv_freq.len();
    let inv_freq = Tensor::from_vec(inv_freq, (1, 1, inv_freq_len), dev)?;
    let freqs = pos
        .to_dtype(DType::F32)?
        .unsqueeze(2)?
        .broadcast_mul(&inv_freq)?;
    let cos = freqs.cos()?;
    let sin = freqs.sin()?;
    let out = Tensor::stack(&[&cos, &sin.neg()?, &sin, &cos], 3)?;
    let (b, n, d, _ij) = out.dims4()?;
    out.reshape((b, n, d, 2, 2))?.to_dtype(dtype)
}

pub(super) fn apply_rope(x: &Tensor, freq_cis: &Tensor) -> Result<Tensor> {
    let dims = x.dims();
    let (b_sz, n_head, seq_len, n_embd) = x.dims4()?;
    let x = x.reshape((b_sz, n_head, seq_len, n_embd / 2, 2))?;
    let x0 = x.narrow(D::Minus1, 0, 1)?;
    let x1 = x.narrow(D::Minus1, 1, 1)?;
    let fr0 = freq_cis.get_on_dim(D::Minus1, 0)?;
    let fr1 = freq_cis.get_on_dim(D::Minus1, 1)?;
    (fr0.broadcast_mul(&x0)? + fr1.broadcast_mul(&x1)?)?.reshape(dims.to_vec())
}

/// Attention over `(b, h, L, d)` heads, q and k already rotated and v
/// with its heads merged, `(b, L, h·d)` ([`QkNorm::heads`]), as
/// `(b, L, h·d)`.
pub(super) fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    if on_cpu_f32(q) {
        return crate::flux::model::cpu_ops::attention_merged_heads(q, k, v);
    }
    let (b, h, l, d) = k.dims4()?;
    let v = v.reshape((b, l, h, d))?.transpose(1, 2)?;
    // In row blocks at large sizes (see `crate::flux::model::attention`): the same values.
    let x = crate::flux::model::attention::attention(q, k, &v)?;
    x.transpose(1, 2)?.flatten_from(2)
}

pub(super) fn timestep_embedding(t: &Tensor, dim: usize, dtype: DType) -> Result<Tensor> {
    const TIME_FACTOR: f64 = 1000.;
    const MAX_PERIOD: f64 = 10000.;
    if dim % 2 == 1 {
        candle_core::bail!("{dim} is odd")
    }
    let dev = t.device();
    let half = dim / 2;
    let t = (t * TIME_FACTOR)?;
    let arange = Tensor::arange(0, half as u32, dev)?.to_dtype(DType::F32)?;
    let freqs = (arange * (-MAX_PERIOD.ln() / half as f64))?.exp()?;
    let args = t
        .unsqueeze(1)?
        .to_dtype(DType::F32)?
        .broadcast_mul(&freqs.unsqueeze(0)?)?;
    let emb = Tensor::cat(&[args.cos()?, args.sin()?], D::Minus1)?.to_dtype(dtype)?;
    Ok(emb)
}

#[derive(Debug, Clone)]
pub struct EmbedNd {
    #[allow(unused)]
    dim: usize,
    theta: usize,
    axes_dim: Vec<usize>,
}

impl EmbedNd {
    pub fn new(dim: usize, theta: usize, axes_dim: Vec<usize>) -> Self {
        Self {
            dim,
            theta,
            axes_dim,
        }
    }
}

impl EmbedNd {
    /// The position embedding of `ids` (`(b, n, axes)`, any dtype), in `dtype`.
    pub fn forward(&self, ids: &Tensor, dtype: DType) -> Result<Tensor> {
        let n_axes = ids.dim(D::Minus1)?;
        let mut emb = Vec::with_capacity(n_axes);
        for idx in 0..n_axes {
            let r = rope(
                &ids.get_on_dim(D::Minus1, idx)?,
                self.axes_dim[idx],
                self.theta,
                dtype,
            )?;
            emb.push(r)
        }
        let emb = Tensor::cat(&emb, 2)?;
        emb.unsqueeze(1)
    }
}

#[derive(Debug, Clone)]
pub struct MlpEmbedder {
    in_layer: Linear,
    out_layer: Linear,
}

impl MlpEmbedder {
    pub(super) fn new(in_sz: usize, h_sz: usize, vb: Weights) -> Result<Self> {
        let in_layer = linear(in_sz, h_sz, vb.pp("in_layer"))?;
        let out_layer = linear(h_sz, h_sz, vb.pp("out_layer"))?;
        Ok(Self {
            in_layer,
            out_layer,
        })
    }
}

impl Module for MlpEmbedder {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        xs.apply(&self.in_layer)?.silu()?.apply(&self.out_layer)
    }
}

#[derive(Debug, Clone)]
pub struct QkNorm {
    query_norm: RmsNorm,
    key_norm: RmsNorm,
    /// The norms' scales (the same tensors), for `cpu_ops::heads_norm_rope`.
    query_scale: Tensor,
    key_scale: Tensor,
}

pub(super) const QK_NORM_EPS: f64 = 1e-6;

impl QkNorm {
    pub(super) fn new(dim: usize, vb: Weights) -> Result<Self> {
        let query_scale = vb.vector(dim, "query_norm.scale")?;
        let query_norm = RmsNorm::new(query_scale.clone(), QK_NORM_EPS);
        let key_scale = vb.vector(dim, "key_norm.scale")?;
        let key_norm = RmsNorm::new(key_scale.clone(), QK_NORM_EPS);
        Ok(Self {
            query_norm,
            key_norm,
            query_scale,
            key_scale,
        })
    }

    /// `(q, k, v)` from the `(b, L, 3·h·d)` projection `qkv`: q and k
    /// `(b, h, L, d)`, RMS-normed and rotated by `pe` (these rows'
    /// rotations), and v `(b, L, h·d)`, a view of `qkv`. On the CPU in f32
    /// each of q and k takes one pass.
    pub(super) fn heads(
        &self,
        qkv: &Tensor,
        num_heads: usize,
        pe: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, l, width) = qkv.dims3()?;
        let d = width / 3 / num_heads;
        let fused = |first: usize, scale: &Tensor| {
            crate::flux::model::cpu_ops::heads_norm_rope(
                qkv,
                first,
                num_heads,
                scale,
                QK_NORM_EPS,
                pe,
            )
        };
        let v = qkv.narrow(D::Minus1, 2 * width / 3, width / 3)?;
        if let (Some(q), Some(k)) = (
            fused(0, &self.query_scale),
            fused(width / 3, &self.key_scale),
        ) {
            return Ok((q?, k?, v));
        }
        let qkv = qkv.reshape((b, l, 3, num_heads, d))?;
        let q = qkv.i((.., .., 0))?.transpose(1, 2)?;
        let k = qkv.i((.., .., 1))?.transpose(1, 2)?;
        let q = apply_rope(&rms_norm(&q, &self.query_norm)?, pe)?.contiguous()?;
        let k = apply_rope(&rms_norm(&k, &self.key_norm)?, pe)?.contiguous()?;
        Ok((q, k, v))
    }
}
