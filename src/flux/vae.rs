//! The VAE's decoder, owned so that its mid-block attention is bounded in
//! memory (`super::attention`) and a decode can stop between blocks when its
//! client has gone; and its encoder (image edits), owned for the same
//! bounded attention.
//!
//! On the CPU in f32 it is `super::vae_cpu`'s channels-last decoder, several
//! times faster there than candle's layers. Elsewhere it is the decoder half
//! of candle-transformers 0.11's `models/flux/autoencoder.rs` (MIT or
//! Apache-2.0, by the candle authors), line for line; in F32 it computes
//! what candle's does (pinned below). The encoder is likewise
//! `super::vae_cpu`'s on the CPU in f32, elsewhere that file's encoder half,
//! line for line. The config type is candle's.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{conv2d, group_norm, Conv2d, GroupNorm, VarBuilder};
use candle_transformers::models::flux::autoencoder::Config;

#[derive(Debug, Clone)]
struct AttnBlock {
    q: Conv2d,
    k: Conv2d,
    v: Conv2d,
    proj_out: Conv2d,
    norm: GroupNorm,
}

impl AttnBlock {
    fn new(in_c: usize, vb: VarBuilder) -> Result<Self> {
        let q = conv2d(in_c, in_c, 1, Default::default(), vb.pp("q"))?;
        let k = conv2d(in_c, in_c, 1, Default::default(), vb.pp("k"))?;
        let v = conv2d(in_c, in_c, 1, Default::default(), vb.pp("v"))?;
        let proj_out = conv2d(in_c, in_c, 1, Default::default(), vb.pp("proj_out"))?;
        let norm = group_norm(32, in_c, 1e-6, vb.pp("norm"))?;
        Ok(Self {
            q,
            k,
            v,
            proj_out,
            norm,
        })
    }
}

impl Module for AttnBlock {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let init_xs = xs;
        let xs = xs.apply(&self.norm)?;
        let q = xs.apply(&self.q)?;
        let k = xs.apply(&self.k)?;
        let v = xs.apply(&self.v)?;
        let (b, c, h, w) = q.dims4()?;
        let q = q.flatten_from(2)?.t()?.unsqueeze(1)?;
        let k = k.flatten_from(2)?.t()?.unsqueeze(1)?;
        let v = v.flatten_from(2)?.t()?.unsqueeze(1)?;
        // In row blocks: at 2048² the whole score matrix would be 17 GB.
        let xs = super::attention::attention(&q, &k, &v)?;
        let xs = xs.squeeze(1)?.t()?.reshape((b, c, h, w))?;
        xs.apply(&self.proj_out)? + init_xs
    }
}

#[derive(Debug, Clone)]
struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    nin_shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    fn new(in_c: usize, out_c: usize, vb: VarBuilder) -> Result<Self> {
        let conv_cfg = candle_nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let norm1 = group_norm(32, in_c, 1e-6, vb.pp("norm1"))?;
        let conv1 = conv2d(in_c, out_c, 3, conv_cfg, vb.pp("conv1"))?;
        let norm2 = group_norm(32, out_c, 1e-6, vb.pp("norm2"))?;
        let conv2 = conv2d(out_c, out_c, 3, conv_cfg, vb.pp("conv2"))?;
        let nin_shortcut = if in_c == out_c {
            None
        } else {
            Some(conv2d(
                in_c,
                out_c,
                1,
                Default::default(),
                vb.pp("nin_shortcut"),
            )?)
        };
        Ok(Self {
            norm1,
            conv1,
            norm2,
            conv2,
            nin_shortcut,
        })
    }
}

impl Module for ResnetBlock {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let h = xs
            .apply(&self.norm1)?
            .apply(&candle_nn::Activation::Swish)?
            .apply(&self.conv1)?
            .apply(&self.norm2)?
            .apply(&candle_nn::Activation::Swish)?
            .apply(&self.conv2)?;
        match self.nin_shortcut.as_ref() {
            None => xs + h,
            Some(c) => xs.apply(c)? + h,
        }
    }
}

#[derive(Debug, Clone)]
struct Upsample {
    conv: Conv2d,
}

impl Upsample {
    fn new(in_c: usize, vb: VarBuilder) -> Result<Self> {
        let conv_cfg = candle_nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let conv = conv2d(in_c, in_c, 3, conv_cfg, vb.pp("conv"))?;
        Ok(Self { conv })
    }
}

impl Module for Upsample {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = xs.dims4()?;
        xs.upsample_nearest2d(h * 2, w * 2)?.apply(&self.conv)
    }
}

#[derive(Debug, Clone)]
struct UpBlock {
    block: Vec<ResnetBlock>,
    upsample: Option<Upsample>,
}

/// The decoder, on whichever layers suit its device and dtype.
#[derive(Debug, Clone)]
pub enum Decoder {
    Candle(Box<CandleDecoder>),
    Cpu(Box<super::vae_cpu::Decoder>),
}

impl Decoder {
    /// The owned channels-last decoder on the CPU in f32; candle's layers
    /// elsewhere (GPUs, and bf16, which keep candle's kernels).
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        if vb.device().is_cpu() && vb.dtype() == DType::F32 {
            Ok(Self::Cpu(Box::new(super::vae_cpu::Decoder::new(cfg, vb)?)))
        } else {
            Self::candle(cfg, vb)
        }
    }

    /// candle's layers, whatever the device.
    pub fn candle(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Ok(Self::Candle(Box::new(CandleDecoder::new(cfg, vb)?)))
    }

    /// Decodes a latent; `keep_going` is asked between blocks, and `None`
    /// comes back as soon as it says no (the client went away).
    pub fn decode(
        &self,
        xs: &Tensor,
        keep_going: &mut dyn FnMut() -> bool,
    ) -> Result<Option<Tensor>> {
        match self {
            Self::Candle(d) => d.decode(xs, keep_going),
            Self::Cpu(d) => d.decode(xs, keep_going),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CandleDecoder {
    conv_in: Conv2d,
    mid_block_1: ResnetBlock,
    mid_attn_1: AttnBlock,
    mid_block_2: ResnetBlock,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    up: Vec<UpBlock>,
}

impl CandleDecoder {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let conv_cfg = candle_nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let mut block_in = cfg.ch * cfg.ch_mult.last().unwrap_or(&1);
        let conv_in = conv2d(cfg.z_channels, block_in, 3, conv_cfg, vb.pp("conv_in"))?;
        let mid_block_1 = ResnetBlock::new(block_in, block_in, vb.pp("mid.block_1"))?;
        let mid_attn_1 = AttnBlock::new(block_in, vb.pp("mid.attn_1"))?;
        let mid_block_2 = ResnetBlock::new(block_in, block_in, vb.pp("mid.block_2"))?;

        let mut up = Vec::with_capacity(cfg.ch_mult.len());
        let vb_u = vb.pp("up");
        for (i_level, ch_mult) in cfg.ch_mult.iter().enumerate().rev() {
            let block_out = cfg.ch * ch_mult;
            let vb_u = vb_u.pp(i_level);
            let vb_b = vb_u.pp("block");
            let mut block = Vec::with_capacity(cfg.num_res_blocks + 1);
            for i_block in 0..=cfg.num_res_blocks {
                let b = ResnetBlock::new(block_in, block_out, vb_b.pp(i_block))?;
                block.push(b);
                block_in = block_out;
            }
            let upsample = if i_level != 0 {
                Some(Upsample::new(block_in, vb_u.pp("upsample"))?)
            } else {
                None
            };
            let block = UpBlock { block, upsample };
            up.push(block)
        }
        up.reverse();

        let norm_out = group_norm(32, block_in, 1e-6, vb.pp("norm_out"))?;
        let conv_out = conv2d(block_in, cfg.out_ch, 3, conv_cfg, vb.pp("conv_out"))?;
        Ok(Self {
            conv_in,
            mid_block_1,
            mid_attn_1,
            mid_block_2,
            norm_out,
            conv_out,
            up,
        })
    }
}

impl CandleDecoder {
    fn decode(&self, xs: &Tensor, keep_going: &mut dyn FnMut() -> bool) -> Result<Option<Tensor>> {
        let h = xs.apply(&self.conv_in)?;
        let mut h = h.apply(&self.mid_block_1)?;
        if !keep_going() {
            return Ok(None);
        }
        h = h.apply(&self.mid_attn_1)?.apply(&self.mid_block_2)?;
        for block in self.up.iter().rev() {
            for b in block.block.iter() {
                if !keep_going() {
                    return Ok(None);
                }
                h = h.apply(b)?
            }
            if let Some(us) = block.upsample.as_ref() {
                h = h.apply(us)?
            }
        }
        h.apply(&self.norm_out)?
            .apply(&candle_nn::Activation::Swish)?
            .apply(&self.conv_out)
            .map(Some)
    }
}

#[derive(Debug, Clone)]
struct Downsample {
    conv: Conv2d,
}

impl Downsample {
    fn new(in_c: usize, vb: VarBuilder) -> Result<Self> {
        let conv_cfg = candle_nn::Conv2dConfig {
            stride: 2,
            ..Default::default()
        };
        let conv = conv2d(in_c, in_c, 3, conv_cfg, vb.pp("conv"))?;
        Ok(Self { conv })
    }
}

impl Module for Downsample {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        // Padded right and below only, as the original model was trained.
        let xs = xs.pad_with_zeros(candle_core::D::Minus1, 0, 1)?;
        let xs = xs.pad_with_zeros(candle_core::D::Minus2, 0, 1)?;
        xs.apply(&self.conv)
    }
}

#[derive(Debug, Clone)]
struct DownBlock {
    block: Vec<ResnetBlock>,
    downsample: Option<Downsample>,
}

/// The VAE's encoder (image edits), on whichever layers suit its device and
/// dtype, as [`Decoder`].
#[derive(Debug, Clone)]
pub enum Encoder {
    Candle(Box<CandleEncoder>),
    Cpu(Box<super::vae_cpu::Encoder>),
}

impl Encoder {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        if vb.device().is_cpu() && vb.dtype() == DType::F32 {
            Ok(Self::Cpu(Box::new(super::vae_cpu::Encoder::new(cfg, vb)?)))
        } else {
            Self::candle(cfg, vb)
        }
    }

    /// candle's layers, whatever the device.
    pub fn candle(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Ok(Self::Candle(Box::new(CandleEncoder::new(cfg, vb)?)))
    }

    /// The latent distribution's mean for a `(b, 3, h, w)` image in
    /// [-1, 1], before the model's shift and scale. candle's autoencoder
    /// samples from the distribution instead; its spread is tiny, and the
    /// mean keeps an edit reproducible from its seed alone. `keep_going` is
    /// asked between blocks, and `None` comes back at the first no.
    pub fn encode(
        &self,
        xs: &Tensor,
        keep_going: &mut dyn FnMut() -> bool,
    ) -> Result<Option<Tensor>> {
        match self {
            Self::Candle(e) => e.encode(xs, keep_going),
            Self::Cpu(e) => e.encode(xs, keep_going),
        }
    }
}

/// The encoder on candle's layers.
#[derive(Debug, Clone)]
pub struct CandleEncoder {
    conv_in: Conv2d,
    mid_block_1: ResnetBlock,
    mid_attn_1: AttnBlock,
    mid_block_2: ResnetBlock,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    down: Vec<DownBlock>,
    z_channels: usize,
}

impl CandleEncoder {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let conv_cfg = candle_nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let mut block_in = cfg.ch;
        let conv_in = conv2d(cfg.in_channels, block_in, 3, conv_cfg, vb.pp("conv_in"))?;
        let mut down = Vec::with_capacity(cfg.ch_mult.len());
        for (i_level, ch_mult) in cfg.ch_mult.iter().enumerate() {
            let vb_d = vb.pp("down").pp(i_level);
            let in_ch_mult = if i_level == 0 {
                1
            } else {
                cfg.ch_mult[i_level - 1]
            };
            block_in = cfg.ch * in_ch_mult;
            let block_out = cfg.ch * ch_mult;
            let mut block = Vec::with_capacity(cfg.num_res_blocks);
            for i_block in 0..cfg.num_res_blocks {
                block.push(ResnetBlock::new(
                    block_in,
                    block_out,
                    vb_d.pp("block").pp(i_block),
                )?);
                block_in = block_out;
            }
            let downsample = if i_level != cfg.ch_mult.len() - 1 {
                Some(Downsample::new(block_in, vb_d.pp("downsample"))?)
            } else {
                None
            };
            down.push(DownBlock { block, downsample });
        }
        let mid_block_1 = ResnetBlock::new(block_in, block_in, vb.pp("mid.block_1"))?;
        let mid_attn_1 = AttnBlock::new(block_in, vb.pp("mid.attn_1"))?;
        let mid_block_2 = ResnetBlock::new(block_in, block_in, vb.pp("mid.block_2"))?;
        let conv_out = conv2d(block_in, 2 * cfg.z_channels, 3, conv_cfg, vb.pp("conv_out"))?;
        let norm_out = group_norm(32, block_in, 1e-6, vb.pp("norm_out"))?;
        Ok(Self {
            conv_in,
            mid_block_1,
            mid_attn_1,
            mid_block_2,
            norm_out,
            conv_out,
            down,
            z_channels: cfg.z_channels,
        })
    }

    fn encode(&self, xs: &Tensor, keep_going: &mut dyn FnMut() -> bool) -> Result<Option<Tensor>> {
        let mut h = xs.apply(&self.conv_in)?;
        for block in self.down.iter() {
            for b in block.block.iter() {
                if !keep_going() {
                    return Ok(None);
                }
                h = h.apply(b)?
            }
            if let Some(ds) = block.downsample.as_ref() {
                h = h.apply(ds)?
            }
        }
        let moments = h
            .apply(&self.mid_block_1)?
            .apply(&self.mid_attn_1)?
            .apply(&self.mid_block_2)?
            .apply(&self.norm_out)?
            .apply(&candle_nn::Activation::Swish)?
            .apply(&self.conv_out)?;
        moments.narrow(1, 0, self.z_channels).map(Some)
    }
}

/// Latent pixels per side of a tile in [`Decoder::decode_tiled`] (512 image
/// pixels), and of the overlap between neighbouring tiles.
pub const TILE: usize = 64;
pub const OVERLAP: usize = 8;

/// Where tiles of `TILE` start along a side of `len` latent pixels: every
/// `TILE - OVERLAP`, the last one flush with the end.
fn tile_starts(len: usize) -> Vec<usize> {
    if len <= TILE {
        return vec![0];
    }
    let mut starts: Vec<usize> = (0..len - TILE).step_by(TILE - OVERLAP).collect();
    starts.push(len - TILE);
    starts
}

/// A tile pixel's weight along one axis: rising over the overlap from an
/// edge shared with a neighbour, 1 elsewhere; never 0.
fn ramp(p: usize, len: usize, neighbour_before: bool, neighbour_after: bool) -> f32 {
    let o = (OVERLAP * 8) as f32;
    let up = if neighbour_before {
        ((p as f32 + 0.5) / o).min(1.0)
    } else {
        1.0
    };
    let down = if neighbour_after {
        ((len - p) as f32 - 0.5) / o
    } else {
        1.0
    };
    up.min(down.min(1.0))
}

impl Decoder {
    /// Decodes in overlapping tiles of [`TILE`] latent pixels, blended
    /// linearly where they overlap: the activations of one tile instead of
    /// the whole image's, for images that would not fit otherwise. Each
    /// tile's attention and group norms see only that tile, so the result is
    /// close to a whole decode but not the same (as with diffusers' tiled
    /// decoding). One tile is a whole decode.
    pub fn decode_tiled(
        &self,
        xs: &Tensor,
        keep_going: &mut dyn FnMut() -> bool,
    ) -> Result<Option<Tensor>> {
        let (_, _, h, w) = xs.dims4()?;
        if h <= TILE && w <= TILE {
            return self.decode(xs, keep_going);
        }
        let (oh, ow) = (h * 8, w * 8);
        let mut sum = vec![0f32; 3 * oh * ow];
        let mut weights = vec![0f32; oh * ow];
        let (ys, xs_) = (tile_starts(h), tile_starts(w));
        for &y0 in &ys {
            for &x0 in &xs_ {
                let (th, tw) = (TILE.min(h), TILE.min(w));
                let tile = xs.narrow(2, y0, th)?.narrow(3, x0, tw)?.contiguous()?;
                let Some(image) = self.decode(&tile, keep_going)? else {
                    return Ok(None);
                };
                let pixels = image
                    .to_dtype(candle_core::DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let (ph, pw) = (th * 8, tw * 8);
                for yy in 0..ph {
                    let wy = ramp(yy, ph, y0 > 0, y0 + th < h);
                    for xx in 0..pw {
                        let wgt = wy * ramp(xx, pw, x0 > 0, x0 + tw < w);
                        let at = (y0 * 8 + yy) * ow + x0 * 8 + xx;
                        weights[at] += wgt;
                        for c in 0..3 {
                            sum[c * oh * ow + at] += wgt * pixels[(c * ph + yy) * pw + xx];
                        }
                    }
                }
            }
        }
        for c in 0..3 {
            for (v, wgt) in sum[c * oh * ow..(c + 1) * oh * ow].iter_mut().zip(&weights) {
                *v /= wgt;
            }
        }
        Tensor::from_vec(sum, (1, 3, oh, ow), &candle_core::Device::Cpu)?
            .to_device(xs.device())?
            .to_dtype(xs.dtype())
            .map(Some)
    }
}

impl Module for Decoder {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(self.decode(xs, &mut || true)?.expect("never cancelled"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;
    use candle_transformers::models::flux::autoencoder as candle_vae;

    use crate::flux::test_util::max_abs_diff;

    fn config() -> Config {
        Config {
            resolution: 256,
            in_channels: 3,
            ch: 32,
            out_ch: 3,
            ch_mult: vec![1, 1, 2, 2],
            num_res_blocks: 1,
            z_channels: 16,
            scale_factor: 0.3611,
            shift_factor: 0.1159,
        }
    }

    #[test]
    fn decodes_as_candle_does_and_stops_when_asked() {
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
        let theirs = candle_vae::AutoEncoder::new(&config(), vb.clone()).unwrap();
        let on_candle = Decoder::candle(&config(), vb.pp("decoder")).unwrap();
        let owned = Decoder::new(&config(), vb.pp("decoder")).unwrap();
        assert!(
            matches!(owned, Decoder::Cpu(_)),
            "f32 on the CPU is the owned one"
        );
        let z = Tensor::randn(0f32, 1., (1, 16, 12, 10), &Device::Cpu).unwrap();
        // candle decodes (z / scale + shift); give ours the same input.
        let shifted = ((&z / 0.3611).unwrap() + 0.1159).unwrap();
        let expected = theirs.decode(&z).unwrap();
        let top = expected
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        // candle's layers (the attention's softmax is `cpu_ops`' on the
        // CPU), and the channels-last decoder: within f32 rounding.
        for (decoder, what) in [
            (&on_candle, "on candle's layers"),
            (&owned, "channels-last"),
        ] {
            let ours = decoder.forward(&shifted).unwrap();
            assert_eq!(ours.dims(), &[1, 3, 96, 80]);
            let err = max_abs_diff(&ours, &expected);
            assert!(
                err < 1e-4 * top,
                "{what}: off by {err} (values up to {top})"
            );
        }

        for decoder in [&on_candle, &owned] {
            let mut asked = 0;
            let stopped = decoder
                .decode(&shifted, &mut || {
                    asked += 1;
                    asked < 3
                })
                .unwrap();
            assert!(stopped.is_none());
            assert_eq!(asked, 3, "stops at the first no");
        }
    }

    #[test]
    fn encodes_to_the_mean_of_candles_encoder() {
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
        let theirs = candle_vae::Encoder::new(&config(), vb.pp("encoder")).unwrap();
        let on_candle = Encoder::candle(&config(), vb.pp("encoder")).unwrap();
        let owned = Encoder::new(&config(), vb.pp("encoder")).unwrap();
        assert!(
            matches!(owned, Encoder::Cpu(_)),
            "f32 on the CPU is the owned one"
        );
        // Two images: each its own latent.
        let image = Tensor::rand(-1f32, 1., (2, 3, 72, 56), &Device::Cpu).unwrap();
        let moments = theirs.forward(&image).unwrap();
        assert_eq!(moments.dims(), &[2, 32, 9, 7]);
        let mean = moments.narrow(1, 0, 16).unwrap();
        let top = mean
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        for (encoder, what) in [
            (&on_candle, "on candle's layers"),
            (&owned, "channels-last"),
        ] {
            let latent = encoder.encode(&image, &mut || true).unwrap().unwrap();
            assert_eq!(latent.dims(), mean.dims());
            let err = max_abs_diff(&latent, &mean);
            assert!(
                err < 1e-4 * top,
                "{what}: off by {err} (values up to {top})"
            );
            let mut asked = 0;
            let stopped = encoder
                .encode(&image, &mut || {
                    asked += 1;
                    asked < 2
                })
                .unwrap();
            assert!(
                stopped.is_none() && asked == 2,
                "{what}: stops at the first no"
            );
        }
    }

    #[test]
    fn tiles_cover_the_side_and_their_weights_blend() {
        assert_eq!(tile_starts(64), [0]);
        assert_eq!(tile_starts(100), [0, 36]);
        assert_eq!(tile_starts(256), [0, 56, 112, 168, 192]);
        // Across an overlap the two tiles' weights rise and fall, never 0.
        let len = TILE * 8;
        assert_eq!(ramp(0, len, false, true), 1.0);
        assert!(ramp(0, len, true, true) > 0.0 && ramp(0, len, true, true) < 0.05);
        assert_eq!(ramp(len / 2, len, true, true), 1.0);
        assert!(ramp(len - 1, len, true, true) > 0.0);
    }

    #[test]
    fn a_tiled_decode_is_a_whole_one_for_one_tile_and_close_for_many() {
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
        let ours = Decoder::new(&config(), vb.pp("decoder")).unwrap();
        let small = Tensor::randn(0f32, 0.5, (1, 16, 40, 24), &Device::Cpu).unwrap();
        let whole = ours.forward(&small).unwrap();
        let tiled = ours.decode_tiled(&small, &mut || true).unwrap().unwrap();
        assert_eq!(max_abs_diff(&whole, &tiled), 0.0);

        // 80 latent pixels wide: two tiles side by side, 48 pixels shared.
        let wide = Tensor::randn(0f32, 0.5, (1, 16, 16, 80), &Device::Cpu).unwrap();
        let whole = ours.forward(&wide).unwrap();
        let tiled = ours.decode_tiled(&wide, &mut || true).unwrap().unwrap();
        assert_eq!(tiled.dims(), whole.dims());
        let scale = whole
            .abs()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let err = (&whole - &tiled)
            .unwrap()
            .abs()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            err < 0.5 * scale,
            "tiles differ by {err} on average (values {scale})"
        );
        // The blend is seamless: no jump at a tile's edge beyond the image's own.
        let row = tiled.get(0).unwrap().get(0).unwrap().get(64).unwrap();
        let row: Vec<f32> = row.to_vec1().unwrap();
        let steps: Vec<f32> = row.windows(2).map(|p| (p[1] - p[0]).abs()).collect();
        let typical = steps.iter().sum::<f32>() / steps.len() as f32;
        let edge = 64 * 8 - 1; // the first tile ends here
        assert!(steps[edge] < 10.0 * typical, "a seam at the tile's edge");
    }
}
