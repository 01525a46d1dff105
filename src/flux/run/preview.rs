//! A cheap look at a latent: each latent pixel projected linearly to RGB.

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::flux::sampling::unpack;

use crate::flux::error::FluxError;
use crate::flux::request::output::Preview;

/// FLUX latent channel → RGB factors and bias, as published by ComfyUI for its
/// latent previews (fitted against the real VAE).
const LATENT_RGB: [[f32; 3]; 16] = [
    [-0.0346, 0.0244, 0.0681],
    [0.0034, 0.0210, 0.0687],
    [0.0275, -0.0668, -0.0433],
    [-0.0174, 0.0160, 0.0617],
    [0.0859, 0.0721, 0.0329],
    [0.0004, 0.0383, 0.0115],
    [0.0405, 0.0861, 0.0915],
    [-0.0236, -0.0185, -0.0259],
    [-0.0245, 0.0250, 0.1180],
    [0.1008, 0.0755, -0.0421],
    [-0.0515, 0.0201, 0.0011],
    [0.0428, -0.0012, -0.0036],
    [0.0817, 0.0765, 0.0749],
    [-0.1264, -0.0522, -0.1103],
    [-0.0280, -0.0881, -0.0499],
    [-0.1262, -0.0982, -0.0778],
];
const LATENT_RGB_BIAS: [f32; 3] = [-0.0329, -0.0718, -0.0851];

/// `packed`: the (1, seq, 64) latent of a `width`×`height` image. The preview
/// is 1/8 of the image's size.
pub fn latent_preview(packed: &Tensor, width: usize, height: usize) -> Result<Preview, FluxError> {
    let run = || -> candle_core::Result<(usize, usize, Vec<f32>)> {
        let latent = unpack(packed, height, width)?
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?;
        let (_, _, h, w) = latent.dims4()?;
        // (h·w, 16): one row of channels per pixel.
        let pixels = latent
            .squeeze(0)?
            .permute((1, 2, 0))?
            .flatten_to(1)?
            .to_vec2::<f32>()?;
        Ok((w, h, pixels.into_iter().flat_map(project).collect()))
    };
    let (w, h, rgb) = run().map_err(FluxError::compute("preview"))?;
    Ok(Preview {
        width: w as u32,
        height: h as u32,
        rgb: rgb
            .into_iter()
            .map(|v| ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8)
            .collect(),
    })
}

fn project(channels: Vec<f32>) -> [f32; 3] {
    let mut rgb = LATENT_RGB_BIAS;
    for (c, factors) in channels.iter().zip(LATENT_RGB.iter()) {
        for k in 0..3 {
            rgb[k] += c * factors[k];
        }
    }
    rgb
}
