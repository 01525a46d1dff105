//! The transformer's blocks: modulation, attention, the double- and single-stream blocks and the last layer.

use crate::flux::model::cpu_ops::on_cpu_f32;
use candle_core::{Result, Tensor, D};
use candle_nn::LayerNorm;
use candle_transformers::models::flux::model::Config;

use super::layers::*;

pub(super) struct ModulationOut {
    shift: Tensor,
    scale: Tensor,
    gate: Tensor,
}

impl ModulationOut {
    /// `norm(xs) · (1 + scale) + shift`: one pass on the CPU in f32.
    pub(super) fn modulate(&self, norm: &LayerNorm, xs: &Tensor) -> Result<Tensor> {
        if on_cpu_f32(xs) {
            return crate::flux::model::cpu_ops::layer_norm_modulate(
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
    pub(super) fn gated_residual(&self, xs: &Tensor, lin: &Linear, ys: &Tensor) -> Result<Tensor> {
        match lin.on_cpu(ys) {
            Some((w, b)) => {
                crate::flux::model::cpu_ops::linear_gated_residual(&[ys], w, b, &self.gate, xs)
            }
            None => xs + self.gate.broadcast_mul(&ys.apply(lin)?),
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Modulation1 {
    lin: Linear,
}

impl Modulation1 {
    pub(super) fn new(dim: usize, vb: Weights) -> Result<Self> {
        let lin = linear(dim, 3 * dim, vb.pp("lin"))?;
        Ok(Self { lin })
    }

    pub(super) fn forward(&self, vec_: &Tensor) -> Result<ModulationOut> {
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
pub(super) struct Modulation2 {
    lin: Linear,
}

impl Modulation2 {
    pub(super) fn new(dim: usize, vb: Weights) -> Result<Self> {
        let lin = linear(dim, 6 * dim, vb.pp("lin"))?;
        Ok(Self { lin })
    }

    pub(super) fn forward(&self, vec_: &Tensor) -> Result<(ModulationOut, ModulationOut)> {
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
    pub(super) fn new(dim: usize, num_heads: usize, qkv_bias: bool, vb: Weights) -> Result<Self> {
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
    pub(super) fn qkv(&self, xs: &Tensor, pe: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        self.norm.heads(&xs.apply(&self.qkv)?, self.num_heads, pe)
    }

    #[allow(unused)]
    pub(super) fn forward(&self, xs: &Tensor, pe: &Tensor) -> Result<Tensor> {
        let (q, k, v) = self.qkv(xs, pe)?;
        attention(&q, &k, &v)?.apply(&self.proj)
    }
}

#[derive(Debug, Clone)]
pub(super) struct Mlp {
    lin1: Linear,
    lin2: Linear,
}

impl Mlp {
    pub(super) fn new(in_sz: usize, mlp_sz: usize, vb: Weights) -> Result<Self> {
        let lin1 = linear(in_sz, mlp_sz, vb.pp("0"))?;
        let lin2 = linear(mlp_sz, in_sz, vb.pp("2"))?;
        Ok(Self { lin1, lin2 })
    }
}

impl Mlp {
    /// The hidden layer, `gelu(lin1(xs))`; `lin2` follows in
    /// [`ModulationOut::gated_residual`].
    pub(super) fn hidden(&self, xs: &Tensor) -> Result<Tensor> {
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
    pub(super) fn new(cfg: &Config, vb: Weights) -> Result<Self> {
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

    pub(super) fn forward(
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
    pub(super) fn new(cfg: &Config, vb: Weights) -> Result<Self> {
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

    pub(super) fn forward(&self, xs: &Tensor, vec_: &Tensor, pe: &Tensor) -> Result<Tensor> {
        let mod_ = self.modulation.forward(vec_)?;
        let x_mod = mod_.modulate(&self.pre_norm, xs)?;
        // On the CPU in f32 the MLP's columns leave `linear1` through GELU,
        // and `linear2` reads the attention and them in place, with no cat.
        let on_cpu = self.linear1.on_cpu(&x_mod).zip(self.linear2.on_cpu(&x_mod));
        let x_mod = match on_cpu {
            Some(((w, b), _)) => {
                crate::flux::model::cpu_ops::linear_gelu(&x_mod, w, b, 3 * self.h_sz)?
            }
            None => x_mod.apply(&self.linear1)?,
        };
        let qkv = x_mod.narrow(D::Minus1, 0, 3 * self.h_sz)?;
        let (q, k, v) = self.norm.heads(&qkv, self.num_heads, pe)?;
        let mlp = x_mod.narrow(D::Minus1, 3 * self.h_sz, self.mlp_sz)?;
        let attn = attention(&q, &k, &v)?;
        match on_cpu {
            Some((_, (w, b))) => crate::flux::model::cpu_ops::linear_gated_residual(
                &[&attn, &mlp],
                w,
                b,
                &mod_.gate,
                xs,
            ),
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
    pub(super) fn new(h_sz: usize, p_sz: usize, out_c: usize, vb: Weights) -> Result<Self> {
        let norm_final = layer_norm(h_sz, vb.pp("norm_final"))?;
        let linear = linear(h_sz, p_sz * p_sz * out_c, vb.pp("linear"))?;
        let ada_ln_modulation = self::linear(h_sz, 2 * h_sz, vb.pp("adaLN_modulation.1"))?;
        Ok(Self {
            norm_final,
            linear,
            ada_ln_modulation,
        })
    }

    pub(super) fn forward(&self, xs: &Tensor, vec: &Tensor) -> Result<Tensor> {
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
