//! The VAE's decoder and encoder on the CPU in f32, channels-last, on
//! `crate::flux::model::cpu_ops`: the same blocks in the same order as
//! `crate::flux::model::vae`'s candle ones, from the same tensors, within f32 rounding of
//! their output (pinned there).
//!
//! Each block drops what it no longer needs as it goes, and the norm before
//! the second convolution works in place, so no more is alive at once than
//! with candle's layers.

use candle_core::{Result, Tensor};
use candle_nn::{init, Init, VarBuilder};
use candle_transformers::models::flux::autoencoder::Config;

use crate::flux::model::cpu_ops::{attention, Conv1x1, Conv3x3, FeatureMap, GroupNorm, Resample};

const GROUPS: usize = 32;
const EPS: f64 = 1e-6;

/// A tensor as f32 values. The hints are candle's `conv2d` and `group_norm`
/// ones: they only matter for a `VarMap` (tests), which makes the variable
/// the first time it is asked for.
fn values(vb: &VarBuilder, shape: &[usize], name: &str, init: Init) -> Result<Vec<f32>> {
    vb.get_with_hints(shape, name, init)?
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1()
}

fn conv(cin: usize, cout: usize, k: usize, vb: &VarBuilder) -> Result<(Vec<f32>, Vec<f32>)> {
    let weight = values(
        vb,
        &[cout, cin, k, k],
        "weight",
        init::DEFAULT_KAIMING_NORMAL,
    )?;
    let bound = 1. / ((cin * k * k) as f64).sqrt();
    let bias = values(
        vb,
        &[cout],
        "bias",
        Init::Uniform {
            lo: -bound,
            up: bound,
        },
    )?;
    Ok((weight, bias))
}

fn conv3x3(cin: usize, cout: usize, vb: VarBuilder) -> Result<Conv3x3> {
    let (weight, bias) = conv(cin, cout, 3, &vb)?;
    Ok(Conv3x3::new(cout, cin, weight, bias))
}

fn conv1x1(cin: usize, cout: usize, vb: VarBuilder) -> Result<Conv1x1> {
    let (weight, bias) = conv(cin, cout, 1, &vb)?;
    Ok(Conv1x1::new(cout, cin, weight, bias))
}

fn group_norm(c: usize, vb: VarBuilder) -> Result<GroupNorm> {
    let gamma = values(&vb, &[c], "weight", Init::Const(1.))?;
    let beta = values(&vb, &[c], "bias", Init::Const(0.))?;
    Ok(GroupNorm::new(GROUPS, EPS, gamma, beta))
}

#[derive(Debug, Clone)]
struct AttnBlock {
    norm: GroupNorm,
    q: Conv1x1,
    k: Conv1x1,
    v: Conv1x1,
    proj_out: Conv1x1,
}

impl AttnBlock {
    fn new(c: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: group_norm(c, vb.pp("norm"))?,
            q: conv1x1(c, c, vb.pp("q"))?,
            k: conv1x1(c, c, vb.pp("k"))?,
            v: conv1x1(c, c, vb.pp("v"))?,
            proj_out: conv1x1(c, c, vb.pp("proj_out"))?,
        })
    }

    fn forward(&self, x: FeatureMap) -> FeatureMap {
        let normed = self.norm.forward(&x, false);
        let (q, k, v) = (
            self.q.forward(&normed, None),
            self.k.forward(&normed, None),
            self.v.forward(&normed, None),
        );
        drop(normed);
        let mixed = attention(&q, &k, &v);
        self.proj_out.forward(&mixed, Some(&x))
    }
}

#[derive(Debug, Clone)]
struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv3x3,
    norm2: GroupNorm,
    conv2: Conv3x3,
    nin_shortcut: Option<Conv1x1>,
}

impl ResnetBlock {
    fn new(cin: usize, cout: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm1: group_norm(cin, vb.pp("norm1"))?,
            conv1: conv3x3(cin, cout, vb.pp("conv1"))?,
            norm2: group_norm(cout, vb.pp("norm2"))?,
            conv2: conv3x3(cout, cout, vb.pp("conv2"))?,
            nin_shortcut: if cin == cout {
                None
            } else {
                Some(conv1x1(cin, cout, vb.pp("nin_shortcut"))?)
            },
        })
    }

    fn forward(&self, x: FeatureMap) -> FeatureMap {
        let normed = self.norm1.forward(&x, true);
        let mut h = self.conv1.forward(&normed, Resample::Same, None);
        drop(normed);
        self.norm2.forward_in_place(&mut h, true);
        let shortcut = match &self.nin_shortcut {
            None => x,
            Some(conv) => conv.forward(&x, None),
        };
        self.conv2.forward(&h, Resample::Same, Some(&shortcut))
    }
}

#[derive(Debug, Clone)]
struct UpBlock {
    block: Vec<ResnetBlock>,
    /// Nearest-neighbour ×2, read by the convolution in place.
    upsample: Option<Conv3x3>,
}

#[derive(Debug, Clone)]
pub struct Decoder {
    conv_in: Conv3x3,
    mid_block_1: ResnetBlock,
    mid_attn_1: AttnBlock,
    mid_block_2: ResnetBlock,
    norm_out: GroupNorm,
    conv_out: Conv3x3,
    up: Vec<UpBlock>,
}

impl Decoder {
    /// From the tensors candle's decoder reads, with the same names.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let mut block_in = cfg.ch * cfg.ch_mult.last().unwrap_or(&1);
        let conv_in = conv3x3(cfg.z_channels, block_in, vb.pp("conv_in"))?;
        let mid_block_1 = ResnetBlock::new(block_in, block_in, vb.pp("mid.block_1"))?;
        let mid_attn_1 = AttnBlock::new(block_in, vb.pp("mid.attn_1"))?;
        let mid_block_2 = ResnetBlock::new(block_in, block_in, vb.pp("mid.block_2"))?;
        let mut up = Vec::with_capacity(cfg.ch_mult.len());
        for (level, mult) in cfg.ch_mult.iter().enumerate().rev() {
            let block_out = cfg.ch * mult;
            let vb = vb.pp("up").pp(level);
            let mut block = Vec::with_capacity(cfg.num_res_blocks + 1);
            for i in 0..=cfg.num_res_blocks {
                block.push(ResnetBlock::new(block_in, block_out, vb.pp("block").pp(i))?);
                block_in = block_out;
            }
            let upsample = if level != 0 {
                Some(conv3x3(block_in, block_in, vb.pp("upsample").pp("conv"))?)
            } else {
                None
            };
            up.push(UpBlock { block, upsample });
        }
        up.reverse();
        Ok(Self {
            conv_in,
            mid_block_1,
            mid_attn_1,
            mid_block_2,
            norm_out: group_norm(block_in, vb.pp("norm_out"))?,
            conv_out: conv3x3(block_in, cfg.out_ch, vb.pp("conv_out"))?,
            up,
        })
    }

    /// Decodes a `(b, z, h, w)` latent; `keep_going` is asked where candle's
    /// decoder asks it, and `None` comes back at the first no.
    pub fn decode(
        &self,
        latent: &Tensor,
        keep_going: &mut dyn FnMut() -> bool,
    ) -> Result<Option<Tensor>> {
        let (batch, ..) = latent.dims4()?;
        let mut images = Vec::with_capacity(batch);
        for i in 0..batch {
            let z = latent.get(i)?.permute((1, 2, 0))?;
            let (h, w, c) = z.dims3()?;
            let z = FeatureMap::new(h, w, c, z.flatten_all()?.to_vec1()?);
            let rgb = self.decode_one(z, keep_going);
            crate::flux::model::cpu_ops::release_scratch();
            let Some(rgb) = rgb else {
                return Ok(None);
            };
            let image = Tensor::from_vec(rgb.data, (rgb.h, rgb.w, rgb.c), latent.device())?;
            images.push(image.permute((2, 0, 1))?);
        }
        Tensor::stack(&images, 0).map(Some)
    }

    fn decode_one(
        &self,
        z: FeatureMap,
        keep_going: &mut dyn FnMut() -> bool,
    ) -> Option<FeatureMap> {
        let h = self.conv_in.forward(&z, Resample::Same, None);
        let mut h = self.mid_block_1.forward(h);
        if !keep_going() {
            return None;
        }
        h = self.mid_block_2.forward(self.mid_attn_1.forward(h));
        for block in self.up.iter().rev() {
            for b in &block.block {
                if !keep_going() {
                    return None;
                }
                h = b.forward(h);
            }
            if let Some(conv) = &block.upsample {
                h = conv.forward(&h, Resample::Up, None);
            }
        }
        self.norm_out.forward_in_place(&mut h, true);
        Some(self.conv_out.forward(&h, Resample::Same, None))
    }
}

#[derive(Debug, Clone)]
struct DownBlock {
    block: Vec<ResnetBlock>,
    /// Padded below and right, stride 2 (`Resample::Down`).
    downsample: Option<Conv3x3>,
}

/// The encoder: `crate::flux::model::vae::CandleEncoder`'s blocks, channels-last.
#[derive(Debug, Clone)]
pub struct Encoder {
    conv_in: Conv3x3,
    down: Vec<DownBlock>,
    mid_block_1: ResnetBlock,
    mid_attn_1: AttnBlock,
    mid_block_2: ResnetBlock,
    norm_out: GroupNorm,
    conv_out: Conv3x3,
    z_channels: usize,
}

impl Encoder {
    /// From the tensors candle's encoder reads, with the same names.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let conv_in = conv3x3(cfg.in_channels, cfg.ch, vb.pp("conv_in"))?;
        let mut block_in = cfg.ch;
        let mut down = Vec::with_capacity(cfg.ch_mult.len());
        for (level, mult) in cfg.ch_mult.iter().enumerate() {
            let vb = vb.pp("down").pp(level);
            block_in = cfg.ch
                * if level == 0 {
                    1
                } else {
                    cfg.ch_mult[level - 1]
                };
            let block_out = cfg.ch * mult;
            let mut block = Vec::with_capacity(cfg.num_res_blocks);
            for i in 0..cfg.num_res_blocks {
                block.push(ResnetBlock::new(block_in, block_out, vb.pp("block").pp(i))?);
                block_in = block_out;
            }
            let downsample = if level + 1 != cfg.ch_mult.len() {
                Some(conv3x3(block_in, block_in, vb.pp("downsample").pp("conv"))?)
            } else {
                None
            };
            down.push(DownBlock { block, downsample });
        }
        Ok(Self {
            conv_in,
            down,
            mid_block_1: ResnetBlock::new(block_in, block_in, vb.pp("mid.block_1"))?,
            mid_attn_1: AttnBlock::new(block_in, vb.pp("mid.attn_1"))?,
            mid_block_2: ResnetBlock::new(block_in, block_in, vb.pp("mid.block_2"))?,
            norm_out: group_norm(block_in, vb.pp("norm_out"))?,
            conv_out: conv3x3(block_in, 2 * cfg.z_channels, vb.pp("conv_out"))?,
            z_channels: cfg.z_channels,
        })
    }

    /// The latent's mean for a `(b, 3, h, w)` image, as
    /// `crate::flux::model::vae::Encoder::encode`; `keep_going` is asked where it asks.
    pub fn encode(
        &self,
        image: &Tensor,
        keep_going: &mut dyn FnMut() -> bool,
    ) -> Result<Option<Tensor>> {
        let (batch, ..) = image.dims4()?;
        let mut latents = Vec::with_capacity(batch);
        for i in 0..batch {
            let x = image.get(i)?.permute((1, 2, 0))?;
            let (h, w, c) = x.dims3()?;
            let x = FeatureMap::new(h, w, c, x.flatten_all()?.to_vec1()?);
            let moments = self.encode_one(x, keep_going);
            crate::flux::model::cpu_ops::release_scratch();
            let Some(moments) = moments else {
                return Ok(None);
            };
            let moments = Tensor::from_vec(
                moments.data,
                (moments.h, moments.w, moments.c),
                image.device(),
            )?;
            latents.push(moments.narrow(2, 0, self.z_channels)?.permute((2, 0, 1))?);
        }
        Tensor::stack(&latents, 0).map(Some)
    }

    fn encode_one(
        &self,
        x: FeatureMap,
        keep_going: &mut dyn FnMut() -> bool,
    ) -> Option<FeatureMap> {
        let mut h = self.conv_in.forward(&x, Resample::Same, None);
        drop(x);
        for block in &self.down {
            for b in &block.block {
                if !keep_going() {
                    return None;
                }
                h = b.forward(h);
            }
            if let Some(conv) = &block.downsample {
                h = conv.forward(&h, Resample::Down, None);
            }
        }
        h = self.mid_block_1.forward(h);
        h = self.mid_block_2.forward(self.mid_attn_1.forward(h));
        self.norm_out.forward_in_place(&mut h, true);
        Some(self.conv_out.forward(&h, Resample::Same, None))
    }
}
