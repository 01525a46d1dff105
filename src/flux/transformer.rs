//! The FLUX transformer, owned so that its rotary position embedding is
//! computed in F32 on every device (see `rope`).
//!
//! Apart from `rope`, `EmbedNd` and the attention (bounded in memory, see
//! `super::attention`), this is candle-transformers 0.11's
//! `models/flux/model.rs` (MIT or Apache-2.0, by the candle authors), kept
//! close to upstream so that it can be diffed against it, but for q and k:
//! they are normed and rotated per stream, before the double blocks join
//! text and image (the same values). On the CPU in f32 the layers are
//! `super::cpu_ops`': linear layers with their bias, GELU or gated residual
//! in one pass (see [`Linear`], [`ModulationOut`]), each layer norm with
//! its modulation, q and k's norm and rotation, and the attention; so there
//! it computes what candle's does within f32 rounding (pinned by the tests
//! below). Elsewhere the layers are candle's. The config type is candle's.

use candle_core::{DType, IndexOp, Module, Result, Tensor, D};
use candle_nn::{LayerNorm, RmsNorm, VarBuilder};
use candle_transformers::models::flux::model::Config;
use candle_transformers::models::flux::WithForward;

use super::cpu_ops::on_cpu_f32;

/// candle-nn's `Linear`. On the CPU in f32 the product is `cpu_ops`', which
/// adds the bias (and GELU, or a gated residual) as it goes, where candle
/// takes a pass and a new tensor for each.
#[derive(Debug, Clone)]
struct Linear(candle_nn::Linear);

impl Linear {
    /// The weight and bias, where `cpu_ops` takes the product.
    fn on_cpu(&self, x: &Tensor) -> Option<(&Tensor, &Tensor)> {
        let bias = self.0.bias()?;
        (on_cpu_f32(x) && on_cpu_f32(self.0.weight())).then(|| (self.0.weight(), bias))
    }

    /// `gelu(x · wᵀ + b)`, GELU's tanh approximation.
    fn forward_gelu(&self, x: &Tensor) -> Result<Tensor> {
        match self.on_cpu(x) {
            Some((w, b)) => super::cpu_ops::linear_gelu(x, w, b, 0),
            None => x.apply(&self.0)?.gelu(),
        }
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self.on_cpu(x) {
            Some((w, b)) => super::cpu_ops::linear(x, w, b),
            None => self.0.forward(x),
        }
    }
}

/// `candle_nn::linear_b`, but on the CPU the weight is kept transposed: the
/// same `(out, in)` tensor as a view over `(in, out)` row-major storage. So
/// `x·wᵀ` multiplies by a row-major matrix, which gemm packs faster: 5–35%
/// less time per product at this model's shapes.
fn linear_b(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Linear> {
    let linear = candle_nn::linear_b(in_dim, out_dim, bias, vb)?;
    if !linear.weight().device().is_cpu() {
        return Ok(Linear(linear));
    }
    let weight = linear.weight().t()?.contiguous()?.t()?;
    Ok(Linear(candle_nn::Linear::new(
        weight,
        linear.bias().cloned(),
    )))
}

fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    linear_b(in_dim, out_dim, true, vb)
}

/// FLUX's layer norms have no weights, and each is followed by a
/// modulation (see [`ModulationOut::modulate`]).
const LAYER_NORM_EPS: f64 = 1e-6;

fn layer_norm(dim: usize, vb: VarBuilder) -> Result<LayerNorm> {
    let ws = Tensor::ones(dim, vb.dtype(), vb.device())?;
    Ok(LayerNorm::new_no_bias(ws, LAYER_NORM_EPS))
}

/// candle's RMS norm is fused only for contiguous input; q and k are
/// strided views of the qkv projection. On the CPU in f32 they are copied
/// first (copy and fused norm: 0.9 ms at 1280 tokens; the unfused norm: 3.5).
fn rms_norm(x: &Tensor, norm: &RmsNorm) -> Result<Tensor> {
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
fn rope(pos: &Tensor, dim: usize, theta: usize, dtype: DType) -> Result<Tensor> {
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

fn apply_rope(x: &Tensor, freq_cis: &Tensor) -> Result<Tensor> {
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
fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    if on_cpu_f32(q) {
        return super::cpu_ops::attention_merged_heads(q, k, v);
    }
    let (b, h, l, d) = k.dims4()?;
    let v = v.reshape((b, l, h, d))?.transpose(1, 2)?;
    // In row blocks at large sizes (see `super::attention`): the same values.
    let x = super::attention::attention(q, k, &v)?;
    x.transpose(1, 2)?.flatten_from(2)
}

fn timestep_embedding(t: &Tensor, dim: usize, dtype: DType) -> Result<Tensor> {
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
    fn new(in_sz: usize, h_sz: usize, vb: VarBuilder) -> Result<Self> {
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

const QK_NORM_EPS: f64 = 1e-6;

impl QkNorm {
    fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        let query_scale = vb.get(dim, "query_norm.scale")?;
        let query_norm = RmsNorm::new(query_scale.clone(), QK_NORM_EPS);
        let key_scale = vb.get(dim, "key_norm.scale")?;
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
    fn heads(
        &self,
        qkv: &Tensor,
        num_heads: usize,
        pe: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, l, width) = qkv.dims3()?;
        let d = width / 3 / num_heads;
        let fused = |first: usize, scale: &Tensor| {
            super::cpu_ops::heads_norm_rope(qkv, first, num_heads, scale, QK_NORM_EPS, pe)
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

struct ModulationOut {
    shift: Tensor,
    scale: Tensor,
    gate: Tensor,
}

impl ModulationOut {
    /// `norm(xs) · (1 + scale) + shift`: one pass on the CPU in f32.
    fn modulate(&self, norm: &LayerNorm, xs: &Tensor) -> Result<Tensor> {
        if on_cpu_f32(xs) {
            return super::cpu_ops::layer_norm_modulate(
                xs,
                &self.shift,
                &self.scale,
                LAYER_NORM_EPS,
            );
        }
        xs.apply(norm)?
            .broadcast_mul(&(&self.scale + 1.)?)?
            .broadcast_add(&self.shift)
    }

    /// `xs + gate · lin(ys)`: the gated residual add is part of the
    /// product's pass on the CPU in f32.
    fn gated_residual(&self, xs: &Tensor, lin: &Linear, ys: &Tensor) -> Result<Tensor> {
        match lin.on_cpu(ys) {
            Some((w, b)) => super::cpu_ops::linear_gated_residual(&[ys], w, b, &self.gate, xs),
            None => xs + self.gate.broadcast_mul(&ys.apply(lin)?),
        }
    }
}

#[derive(Debug, Clone)]
struct Modulation1 {
    lin: Linear,
}

impl Modulation1 {
    fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        let lin = linear(dim, 3 * dim, vb.pp("lin"))?;
        Ok(Self { lin })
    }

    fn forward(&self, vec_: &Tensor) -> Result<ModulationOut> {
        let ys = vec_
            .silu()?
            .apply(&self.lin)?
            .unsqueeze(1)?
            .chunk(3, D::Minus1)?;
        if ys.len() != 3 {
            candle_core::bail!("unexpected len from chunk {ys:?}")
        }
        Ok(ModulationOut {
            shift: ys[0].clone(),
            scale: ys[1].clone(),
            gate: ys[2].clone(),
        })
    }
}

#[derive(Debug, Clone)]
struct Modulation2 {
    lin: Linear,
}

impl Modulation2 {
    fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        let lin = linear(dim, 6 * dim, vb.pp("lin"))?;
        Ok(Self { lin })
    }

    fn forward(&self, vec_: &Tensor) -> Result<(ModulationOut, ModulationOut)> {
        let ys = vec_
            .silu()?
            .apply(&self.lin)?
            .unsqueeze(1)?
            .chunk(6, D::Minus1)?;
        if ys.len() != 6 {
            candle_core::bail!("unexpected len from chunk {ys:?}")
        }
        let mod1 = ModulationOut {
            shift: ys[0].clone(),
            scale: ys[1].clone(),
            gate: ys[2].clone(),
        };
        let mod2 = ModulationOut {
            shift: ys[3].clone(),
            scale: ys[4].clone(),
            gate: ys[5].clone(),
        };
        Ok((mod1, mod2))
    }
}

#[derive(Debug, Clone)]
pub struct SelfAttention {
    qkv: Linear,
    norm: QkNorm,
    proj: Linear,
    num_heads: usize,
}

impl SelfAttention {
    fn new(dim: usize, num_heads: usize, qkv_bias: bool, vb: VarBuilder) -> Result<Self> {
        let head_dim = dim / num_heads;
        let qkv = linear_b(dim, dim * 3, qkv_bias, vb.pp("qkv"))?;
        let norm = QkNorm::new(head_dim, vb.pp("norm"))?;
        let proj = linear(dim, dim, vb.pp("proj"))?;
        Ok(Self {
            qkv,
            norm,
            proj,
            num_heads,
        })
    }

    /// See [`QkNorm::heads`]: `pe` is this stream's rows' rotations.
    fn qkv(&self, xs: &Tensor, pe: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        self.norm.heads(&xs.apply(&self.qkv)?, self.num_heads, pe)
    }

    #[allow(unused)]
    fn forward(&self, xs: &Tensor, pe: &Tensor) -> Result<Tensor> {
        let (q, k, v) = self.qkv(xs, pe)?;
        attention(&q, &k, &v)?.apply(&self.proj)
    }
}

#[derive(Debug, Clone)]
struct Mlp {
    lin1: Linear,
    lin2: Linear,
}

impl Mlp {
    fn new(in_sz: usize, mlp_sz: usize, vb: VarBuilder) -> Result<Self> {
        let lin1 = linear(in_sz, mlp_sz, vb.pp("0"))?;
        let lin2 = linear(mlp_sz, in_sz, vb.pp("2"))?;
        Ok(Self { lin1, lin2 })
    }
}

impl Mlp {
    /// The hidden layer, `gelu(lin1(xs))`; `lin2` follows in
    /// [`ModulationOut::gated_residual`].
    fn hidden(&self, xs: &Tensor) -> Result<Tensor> {
        self.lin1.forward_gelu(xs)
    }
}

#[derive(Debug, Clone)]
pub struct DoubleStreamBlock {
    img_mod: Modulation2,
    img_norm1: LayerNorm,
    img_attn: SelfAttention,
    img_norm2: LayerNorm,
    img_mlp: Mlp,
    txt_mod: Modulation2,
    txt_norm1: LayerNorm,
    txt_attn: SelfAttention,
    txt_norm2: LayerNorm,
    txt_mlp: Mlp,
}

impl DoubleStreamBlock {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let h_sz = cfg.hidden_size;
        let mlp_sz = (h_sz as f64 * cfg.mlp_ratio) as usize;
        let img_mod = Modulation2::new(h_sz, vb.pp("img_mod"))?;
        let img_norm1 = layer_norm(h_sz, vb.pp("img_norm1"))?;
        let img_attn = SelfAttention::new(h_sz, cfg.num_heads, cfg.qkv_bias, vb.pp("img_attn"))?;
        let img_norm2 = layer_norm(h_sz, vb.pp("img_norm2"))?;
        let img_mlp = Mlp::new(h_sz, mlp_sz, vb.pp("img_mlp"))?;
        let txt_mod = Modulation2::new(h_sz, vb.pp("txt_mod"))?;
        let txt_norm1 = layer_norm(h_sz, vb.pp("txt_norm1"))?;
        let txt_attn = SelfAttention::new(h_sz, cfg.num_heads, cfg.qkv_bias, vb.pp("txt_attn"))?;
        let txt_norm2 = layer_norm(h_sz, vb.pp("txt_norm2"))?;
        let txt_mlp = Mlp::new(h_sz, mlp_sz, vb.pp("txt_mlp"))?;
        Ok(Self {
            img_mod,
            img_norm1,
            img_attn,
            img_norm2,
            img_mlp,
            txt_mod,
            txt_norm1,
            txt_attn,
            txt_norm2,
            txt_mlp,
        })
    }

    fn forward(
        &self,
        img: &Tensor,
        txt: &Tensor,
        vec_: &Tensor,
        pe: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (img_mod1, img_mod2) = self.img_mod.forward(vec_)?; // shift, scale, gate
        let (txt_mod1, txt_mod2) = self.txt_mod.forward(vec_)?; // shift, scale, gate
        let img_modulated = img_mod1.modulate(&self.img_norm1, img)?;
        // The rows are text then image (see `Flux::forward`).
        let (l_txt, l_img) = (txt.dim(1)?, img.dim(1)?);
        let (img_q, img_k, img_v) = self
            .img_attn
            .qkv(&img_modulated, &pe.narrow(2, l_txt, l_img)?)?;

        let txt_modulated = txt_mod1.modulate(&self.txt_norm1, txt)?;
        let (txt_q, txt_k, txt_v) = self
            .txt_attn
            .qkv(&txt_modulated, &pe.narrow(2, 0, l_txt)?)?;

        let q = Tensor::cat(&[txt_q, img_q], 2)?;
        let k = Tensor::cat(&[txt_k, img_k], 2)?;
        let v = Tensor::cat(&[txt_v, img_v], 1)?;

        let attn = attention(&q, &k, &v)?;
        let txt_attn = attn.narrow(1, 0, txt.dim(1)?)?;
        let img_attn = attn.narrow(1, txt.dim(1)?, attn.dim(1)? - txt.dim(1)?)?;

        let img = img_mod1.gated_residual(img, &self.img_attn.proj, &img_attn)?;
        let img_mlp = self
            .img_mlp
            .hidden(&img_mod2.modulate(&self.img_norm2, &img)?)?;
        let img = img_mod2.gated_residual(&img, &self.img_mlp.lin2, &img_mlp)?;

        let txt = txt_mod1.gated_residual(txt, &self.txt_attn.proj, &txt_attn)?;
        let txt_mlp = self
            .txt_mlp
            .hidden(&txt_mod2.modulate(&self.txt_norm2, &txt)?)?;
        let txt = txt_mod2.gated_residual(&txt, &self.txt_mlp.lin2, &txt_mlp)?;

        Ok((img, txt))
    }
}

#[derive(Debug, Clone)]
pub struct SingleStreamBlock {
    linear1: Linear,
    linear2: Linear,
    norm: QkNorm,
    pre_norm: LayerNorm,
    modulation: Modulation1,
    h_sz: usize,
    mlp_sz: usize,
    num_heads: usize,
}

impl SingleStreamBlock {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let h_sz = cfg.hidden_size;
        let mlp_sz = (h_sz as f64 * cfg.mlp_ratio) as usize;
        let head_dim = h_sz / cfg.num_heads;
        let linear1 = linear(h_sz, h_sz * 3 + mlp_sz, vb.pp("linear1"))?;
        let linear2 = linear(h_sz + mlp_sz, h_sz, vb.pp("linear2"))?;
        let norm = QkNorm::new(head_dim, vb.pp("norm"))?;
        let pre_norm = layer_norm(h_sz, vb.pp("pre_norm"))?;
        let modulation = Modulation1::new(h_sz, vb.pp("modulation"))?;
        Ok(Self {
            linear1,
            linear2,
            norm,
            pre_norm,
            modulation,
            h_sz,
            mlp_sz,
            num_heads: cfg.num_heads,
        })
    }

    fn forward(&self, xs: &Tensor, vec_: &Tensor, pe: &Tensor) -> Result<Tensor> {
        let mod_ = self.modulation.forward(vec_)?;
        let x_mod = mod_.modulate(&self.pre_norm, xs)?;
        // On the CPU in f32 the MLP's columns leave `linear1` through GELU,
        // and `linear2` reads the attention and them in place, with no cat.
        let on_cpu = self.linear1.on_cpu(&x_mod).zip(self.linear2.on_cpu(&x_mod));
        let x_mod = match on_cpu {
            Some(((w, b), _)) => super::cpu_ops::linear_gelu(&x_mod, w, b, 3 * self.h_sz)?,
            None => x_mod.apply(&self.linear1)?,
        };
        let qkv = x_mod.narrow(D::Minus1, 0, 3 * self.h_sz)?;
        let (q, k, v) = self.norm.heads(&qkv, self.num_heads, pe)?;
        let mlp = x_mod.narrow(D::Minus1, 3 * self.h_sz, self.mlp_sz)?;
        let attn = attention(&q, &k, &v)?;
        match on_cpu {
            Some((_, (w, b))) => {
                super::cpu_ops::linear_gated_residual(&[&attn, &mlp], w, b, &mod_.gate, xs)
            }
            None => {
                let hidden = Tensor::cat(&[&attn, &mlp.gelu()?], 2)?;
                mod_.gated_residual(xs, &self.linear2, &hidden)
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct LastLayer {
    norm_final: LayerNorm,
    linear: Linear,
    ada_ln_modulation: Linear,
}

impl LastLayer {
    fn new(h_sz: usize, p_sz: usize, out_c: usize, vb: VarBuilder) -> Result<Self> {
        let norm_final = layer_norm(h_sz, vb.pp("norm_final"))?;
        let linear = linear(h_sz, p_sz * p_sz * out_c, vb.pp("linear"))?;
        let ada_ln_modulation = self::linear(h_sz, 2 * h_sz, vb.pp("adaLN_modulation.1"))?;
        Ok(Self {
            norm_final,
            linear,
            ada_ln_modulation,
        })
    }

    fn forward(&self, xs: &Tensor, vec: &Tensor) -> Result<Tensor> {
        let chunks = vec.silu()?.apply(&self.ada_ln_modulation)?.chunk(2, 1)?;
        let (shift, scale) = (&chunks[0], &chunks[1]);
        let modulation = ModulationOut {
            shift: shift.unsqueeze(1)?,
            scale: scale.unsqueeze(1)?,
            gate: Tensor::ones(1, xs.dtype(), xs.device())?,
        };
        modulation
            .modulate(&self.norm_final, xs)?
            .apply(&self.linear)
    }
}

#[derive(Debug, Clone)]
pub struct Flux {
    img_in: Linear,
    txt_in: Linear,
    time_in: MlpEmbedder,
    vector_in: MlpEmbedder,
    guidance_in: Option<MlpEmbedder>,
    pe_embedder: EmbedNd,
    double_blocks: Vec<DoubleStreamBlock>,
    single_blocks: Vec<SingleStreamBlock>,
    final_layer: LastLayer,
}

impl Flux {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let img_in = linear(cfg.in_channels, cfg.hidden_size, vb.pp("img_in"))?;
        let txt_in = linear(cfg.context_in_dim, cfg.hidden_size, vb.pp("txt_in"))?;
        let mut double_blocks = Vec::with_capacity(cfg.depth);
        let vb_d = vb.pp("double_blocks");
        for idx in 0..cfg.depth {
            let db = DoubleStreamBlock::new(cfg, vb_d.pp(idx))?;
            double_blocks.push(db)
        }
        let mut single_blocks = Vec::with_capacity(cfg.depth_single_blocks);
        let vb_s = vb.pp("single_blocks");
        for idx in 0..cfg.depth_single_blocks {
            let sb = SingleStreamBlock::new(cfg, vb_s.pp(idx))?;
            single_blocks.push(sb)
        }
        let time_in = MlpEmbedder::new(256, cfg.hidden_size, vb.pp("time_in"))?;
        let vector_in = MlpEmbedder::new(cfg.vec_in_dim, cfg.hidden_size, vb.pp("vector_in"))?;
        let guidance_in = if cfg.guidance_embed {
            let mlp = MlpEmbedder::new(256, cfg.hidden_size, vb.pp("guidance_in"))?;
            Some(mlp)
        } else {
            None
        };
        let final_layer =
            LastLayer::new(cfg.hidden_size, 1, cfg.in_channels, vb.pp("final_layer"))?;
        let pe_dim = cfg.hidden_size / cfg.num_heads;
        let pe_embedder = EmbedNd::new(pe_dim, cfg.theta, cfg.axes_dim.to_vec());
        Ok(Self {
            img_in,
            txt_in,
            time_in,
            vector_in,
            guidance_in,
            pe_embedder,
            double_blocks,
            single_blocks,
            final_layer,
        })
    }
}

impl WithForward for Flux {
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        img: &Tensor,
        img_ids: &Tensor,
        txt: &Tensor,
        txt_ids: &Tensor,
        timesteps: &Tensor,
        y: &Tensor,
        guidance: Option<&Tensor>,
    ) -> Result<Tensor> {
        if txt.rank() != 3 {
            candle_core::bail!("unexpected shape for txt {:?}", txt.shape())
        }
        if img.rank() != 3 {
            candle_core::bail!("unexpected shape for img {:?}", img.shape())
        }
        let dtype = img.dtype();
        let pe = {
            let ids = Tensor::cat(&[txt_ids, img_ids], 1)?;
            self.pe_embedder.forward(&ids, dtype)?
        };
        let mut txt = txt.apply(&self.txt_in)?;
        let mut img = img.apply(&self.img_in)?;
        let vec_ = timestep_embedding(timesteps, 256, dtype)?.apply(&self.time_in)?;
        let vec_ = match (self.guidance_in.as_ref(), guidance) {
            (Some(g_in), Some(guidance)) => {
                (vec_ + timestep_embedding(guidance, 256, dtype)?.apply(g_in))?
            }
            _ => vec_,
        };
        let vec_ = (vec_ + y.apply(&self.vector_in))?;

        // Double blocks
        for block in self.double_blocks.iter() {
            (img, txt) = block.forward(&img, &txt, &vec_, &pe)?
        }
        // Single blocks
        let mut img = Tensor::cat(&[&txt, &img], 1)?;
        for block in self.single_blocks.iter() {
            img = block.forward(&img, &vec_, &pe)?;
        }
        let img = img.i((.., txt.dim(1)?..))?;
        self.final_layer.forward(&img, &vec_)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::{VarBuilder, VarMap};
    use candle_transformers::models::flux::model as candle_flux;

    use crate::flux::test_util::max_abs_diff;

    /// FLUX's real rotary layout: head dim 128 over axes (16, 56, 56).
    fn real_embedder() -> (EmbedNd, candle_flux::EmbedNd) {
        (
            EmbedNd::new(128, 10_000, vec![16, 56, 56]),
            candle_flux::EmbedNd::new(128, 10_000, vec![16, 56, 56]),
        )
    }

    /// The ids `State::new` makes for a `side`² image: (0, row, col) per patch.
    fn image_ids(side: usize) -> Tensor {
        let patches = side / 16;
        let ids: Vec<f32> = (0..patches * patches)
            .flat_map(|i| [0.0, (i / patches) as f32, (i % patches) as f32])
            .collect();
        Tensor::from_vec(ids, (1, patches * patches, 3), &Device::Cpu).unwrap()
    }

    #[test]
    fn bf16_positions_match_f32_ones_at_2048px() {
        let (ours, candles) = real_embedder();
        let ids = image_ids(2048);
        let reference = ours.forward(&ids, DType::F32).unwrap();
        // The F32 path is candle's, unchanged.
        assert_eq!(max_abs_diff(&reference, &ids.apply(&candles).unwrap()), 0.0);

        let bf16_ids = ids.to_dtype(DType::BF16).unwrap();
        let ours_bf16 = ours.forward(&bf16_ids, DType::BF16).unwrap();
        assert_eq!(ours_bf16.dtype(), DType::BF16);
        // Only the final rounding to bf16 remains: half an ulp of values in [-1, 1].
        let err = max_abs_diff(&ours_bf16, &reference);
        assert!(err <= 1.0 / 256.0, "bf16 positions off by {err}");
        // candle's own bf16 path, for scale: angles rounded to bf16 first.
        let candle_err = max_abs_diff(&bf16_ids.apply(&candles).unwrap(), &reference);
        assert!(
            candle_err > 0.1,
            "candle's bf16 error was only {candle_err}"
        );
    }

    /// A small FLUX with random weights shared by both implementations.
    fn tiny_pair_in(dtype: DType) -> (Flux, candle_flux::Flux) {
        let cfg = Config {
            in_channels: 64,
            vec_in_dim: 24,
            context_in_dim: 40,
            hidden_size: 64,
            mlp_ratio: 4.0,
            num_heads: 2,
            depth: 2,
            depth_single_blocks: 2,
            axes_dim: vec![8, 12, 12],
            theta: 10_000,
            qkv_bias: true,
            guidance_embed: false,
        };
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, dtype, &Device::Cpu);
        let theirs = candle_flux::Flux::new(&cfg, vb.clone()).unwrap();
        // A VarMap makes norm scales of zero, which would zero q and k and
        // leave the attention (and RoPE) untested: give them values.
        for (name, var) in vars.data().lock().unwrap().iter() {
            if name.ends_with("_norm.scale") {
                let scale = Tensor::randn(1f64, 0.5, var.dims(), &Device::Cpu).unwrap();
                var.set(&scale.to_dtype(dtype).unwrap()).unwrap();
            }
        }
        // The second model reads the tensors the first created.
        let ours = Flux::new(&cfg, vb).unwrap();
        (ours, theirs)
    }

    /// Both models' outputs for one random input in `dtype`, and the
    /// largest output value.
    fn both_forwards(dtype: DType) -> (Tensor, Tensor, f32) {
        let (ours, theirs) = tiny_pair_in(dtype);
        let dev = Device::Cpu;
        let randn = |shape: (usize, usize, usize)| {
            let t = Tensor::randn(0f32, 1., shape, &dev).unwrap();
            t.to_dtype(dtype).unwrap()
        };
        let img = randn((1, 16, 64));
        let img_ids = image_ids(64).to_dtype(dtype).unwrap();
        let txt = randn((1, 7, 40));
        let txt_ids = Tensor::zeros((1, 7, 3), dtype, &dev).unwrap();
        let t = Tensor::new(&[0.75f32], &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let y = randn((1, 1, 24)).squeeze(0).unwrap();
        let a = ours
            .forward(&img, &img_ids, &txt, &txt_ids, &t, &y, None)
            .unwrap();
        let b = theirs
            .forward(&img, &img_ids, &txt, &txt_ids, &t, &y, None)
            .unwrap();
        assert_eq!(a.dims(), &[1, 16, 64]);
        assert_eq!(a.dtype(), dtype);
        let top = max_abs_diff(&a, &Tensor::zeros_like(&a).unwrap());
        assert!(top > 0.0);
        (a, b, top)
    }

    #[test]
    fn f32_forward_is_candles_within_f32_rounding() {
        let (a, b, top) = both_forwards(DType::F32);
        // GELU, softmax, q/k norm + RoPE and attention are `cpu_ops`' on
        // the CPU; the rest is candle's.
        let err = max_abs_diff(&a, &b);
        assert!(err < 1e-5 * top, "off by {err} (values up to {top})");
    }

    /// The path GPUs take (candle's layers, q and k rotated per stream
    /// before the streams join), run here in f64, where `cpu_ops` steps
    /// aside: candle's values, within the f32 rounding of the comparison
    /// (`max_abs_diff` subtracts in f32).
    #[test]
    fn the_other_devices_path_is_candles() {
        let (a, b, top) = both_forwards(DType::F64);
        let err = max_abs_diff(&a, &b);
        assert!(
            err <= 2.0 * f32::EPSILON * top,
            "off by {err} (values up to {top})"
        );
    }
}
