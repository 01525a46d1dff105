//! The VAE's decoder and encoder, each on whichever layers suit its device
//! and dtype: the channels-last ones on the CPU in f32, candle's elsewhere.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::flux::autoencoder::Config;

use super::candle::{CandleDecoder, CandleEncoder};
use super::cpu;

/// The decoder, on whichever layers suit its device and dtype.
#[derive(Debug, Clone)]
pub enum Decoder {
    Candle(Box<CandleDecoder>),
    Cpu(Box<cpu::Decoder>),
}

impl Decoder {
    /// The owned channels-last decoder on the CPU in f32; candle's layers
    /// elsewhere (GPUs, and bf16, which keep candle's kernels).
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        if vb.device().is_cpu() && vb.dtype() == DType::F32 {
            Ok(Self::Cpu(Box::new(cpu::Decoder::new(cfg, vb)?)))
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

/// The VAE's encoder (image edits), on whichever layers suit its device and
/// dtype, as [`Decoder`].
#[derive(Debug, Clone)]
pub enum Encoder {
    Candle(Box<CandleEncoder>),
    Cpu(Box<cpu::Encoder>),
}

impl Encoder {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        if vb.device().is_cpu() && vb.dtype() == DType::F32 {
            Ok(Self::Cpu(Box::new(cpu::Encoder::new(cfg, vb)?)))
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

impl Module for Decoder {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(self.decode(xs, &mut || true)?.expect("never cancelled"))
    }
}
