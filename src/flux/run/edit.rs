//! An edit's image as the transformer reads it: resized, through the VAE's
//! encoder, packed; and its mask at the latent's resolution. The
//! denoising from it is `crate::flux::run::pipeline`'s.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use crate::flux::error::FluxError;
use crate::flux::request::init_image::InitImage;
use crate::flux::request::output::{Component, GenerateEvent, Timings};
use crate::flux::run::loaded::{resident_or_load, LocalModel};

/// An edit's image as the transformer sees it.
pub struct Edit {
    /// The image's latent, packed, in the transformer's dtype.
    pub latent: Tensor,
    pub strength: f32,
    /// Packed like the latent: 1 repaints, 0 keeps the image.
    pub mask: Option<Tensor>,
}

/// The image resized to the request's size, through the VAE's encoder, and
/// packed; with its mask at the latent's resolution, packed the same way.
/// The encoder is loaded for this (from the mapped file: about 0.1 GB, a
/// fraction of a second) and freed after it, so that it costs no memory to
/// those who never edit.
pub fn encode_init(
    model: &LocalModel,
    init: &InitImage,
    (width, height): (usize, usize),
    say: &mut impl FnMut(GenerateEvent) -> Result<(), FluxError>,
    timings: &mut Timings,
    cancelled: &dyn Fn() -> bool,
) -> Result<Edit, FluxError> {
    let (device, dtype) = (&model.device, model.flux_dtype());
    let mut borrowed = None;
    let encoder = resident_or_load(
        None,
        &mut borrowed,
        Component::VaeEncoder,
        || model.load_encoder(),
        say,
        timings,
    )?;
    let t = Instant::now();
    let (w, h) = (width as u32, height as u32);
    let source =
        // The pixels read in place: a queued edit's image is not copied.
        image::ImageBuffer::<image::Rgb<u8>, &[u8]>::from_raw(
            init.image.width,
            init.image.height,
            &init.image.rgb[..],
        )
            .ok_or_else(|| FluxError::InvalidRequest {
                field: "image",
                reason: "is not an RGB image of its size".into(),
            })?;
    // Lanczos, as diffusers' image processor resizes.
    let pixels = image::imageops::resize(&source, w, h, image::imageops::FilterType::Lanczos3);
    let cfg = &model.vae_config;
    let run = || -> candle_core::Result<Option<Tensor>> {
        let values: Vec<f32> = pixels
            .as_raw()
            .iter()
            .map(|&v| f32::from(v) / 127.5 - 1.0)
            .collect();
        let x = Tensor::from_vec(values, (height, width, 3), &Device::Cpu)?
            .permute((2, 0, 1))?
            .unsqueeze(0)?
            .to_device(device)?
            .to_dtype(model.dtype)?;
        let mut keep_going = || !cancelled();
        let Some(mean) = encoder.encode(&x, &mut keep_going)? else {
            return Ok(None);
        };
        let latent = ((mean.to_dtype(DType::F32)? - cfg.shift_factor)? * cfg.scale_factor)?;
        pack(&latent)?.to_dtype(dtype).map(Some)
    };
    let latent = run()
        .map_err(FluxError::compute("VAE encoding"))?
        .ok_or(FluxError::Cancelled)?;
    let mask = init
        .mask
        .as_ref()
        .map(|mask| {
            let gray = image::ImageBuffer::<image::Luma<u8>, &[u8]>::from_raw(
                mask.width,
                mask.height,
                &mask.repaint[..],
            )
            .ok_or_else(|| FluxError::InvalidRequest {
                field: "mask",
                reason: "is not a mask of its size".into(),
            })?;
            let (lw, lh) = (w / 8, h / 8);
            let small =
                image::imageops::resize(&gray, lw, lh, image::imageops::FilterType::Triangle);
            let weights: Vec<f32> = small
                .as_raw()
                .iter()
                .map(|&v| f32::from(v) / 255.0)
                .collect();
            let packed = || {
                let m = Tensor::from_vec(weights, (1, 1, lh as usize, lw as usize), &Device::Cpu)?
                    .broadcast_as((1, 16, lh as usize, lw as usize))?
                    .contiguous()?;
                pack(&m)?.to_device(device)?.to_dtype(dtype)
            };
            packed().map_err(FluxError::compute("mask"))
        })
        .transpose()?;
    timings.vae_encode = t.elapsed();
    Ok(Edit {
        latent,
        strength: init.strength,
        mask,
    })
}

/// `(b, c, h, w)` → `(b, h/2 · w/2, 4c)`: 2×2 patches, as the transformer
/// reads latents (the inverse of candle's `unpack`).
pub fn pack(latent: &Tensor) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = latent.dims4()?;
    latent
        .reshape((b, c, h / 2, 2, w / 2, 2))?
        .permute((0, 2, 4, 1, 3, 5))?
        .reshape((b, h / 2 * w / 2, c * 4))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_transformers::models::flux::sampling::{unpack, State};

    #[test]
    fn packing_is_the_states_and_unpack_undoes_it() {
        let latent = Tensor::randn(0f32, 1., (2, 16, 8, 12), &Device::Cpu).unwrap();
        let packed = pack(&latent).unwrap();
        assert_eq!(packed.dims(), &[2, 4 * 6, 64]);
        // The transformer reads the noise as `State` packs it; an edit's
        // latent must be packed the same way.
        let t5 = Tensor::zeros((1, 3, 8), DType::F32, &Device::Cpu).unwrap();
        let clip = Tensor::zeros((1, 4), DType::F32, &Device::Cpu).unwrap();
        let state = State::new(&t5, &clip, &latent).unwrap();
        let same = |a: &Tensor, b: &Tensor| {
            (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert_eq!(same(&packed, &state.img), 0.0);
        assert_eq!(same(&unpack(&packed, 64, 96).unwrap(), &latent), 0.0);
    }
}
