//! One generation, start to finish, on the engine's thread: encode the prompt,
//! run the schedule one transformer pass at a time, decode the latent.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::flux::autoencoder;
use candle_transformers::models::flux::sampling::{get_schedule, unpack, State};
use rand::SeedableRng;
use rand_distr::Distribution;

use super::loaded::{LocalModel, Resident, Transformer};
use super::memory::VaeDecode;
use super::preview::latent_preview;
use super::prompt_cache::{Embeddings, PromptKey};
use super::request::{Component, GenerateEvent, GenerateRequest, Image, InitImage, Timings};
use super::text::PromptTokens;
use super::vae::Decoder;
use super::FluxError;

/// How the engine follows one generation.
pub struct Hooks<'a> {
    /// Sends an event; `false` means nobody listens any more (cancelled).
    pub emit: &'a mut dyn FnMut(GenerateEvent) -> bool,
    /// Called after each transformer pass.
    pub on_step: &'a mut dyn FnMut(),
    /// Asked inside the VAE decode, where no event goes out for seconds.
    pub cancelled: &'a dyn Fn() -> bool,
}

/// Makes one image, and says how many of the prompt's tokens T5 read. Events
/// go out as they happen; each `Step` right after its transformer pass.
pub fn generate(
    model: &LocalModel,
    resident: &mut Resident,
    request: &GenerateRequest,
    (seed, vae_decode): (u64, VaeDecode),
    hooks: Hooks,
) -> Result<(Image, Timings, usize), FluxError> {
    let Hooks {
        emit,
        on_step,
        cancelled,
    } = hooks;
    let start = Instant::now();
    let mut timings = Timings::default();
    // The transformer's dtype: F32 for GGUF weights, else CLIP's and the VAE's.
    let (device, dtype) = (&model.device, model.flux_dtype());
    let mut say = |event: GenerateEvent| {
        if emit(event) {
            Ok(())
        } else {
            Err(FluxError::Cancelled)
        }
    };
    if request.guidance.is_some() {
        say(GenerateEvent::Warning {
            message: "guidance is ignored: FLUX.1-schnell is guidance-distilled".into(),
        })?;
    }

    let tokens = resident.tokenizers.tokenize(&request.prompt)?;
    for message in tokens.warnings.clone() {
        say(GenerateEvent::Warning { message })?;
    }

    let key = PromptKey::new(&request.prompt, &model.files);
    let Embeddings {
        t5: t5_emb,
        clip: clip_emb,
    } = match resident.prompts.get(&key) {
        Some(cached) => cached,
        None => {
            let encoded = encode_prompt(model, resident, &tokens, &mut say, &mut timings)?;
            resident.prompts.put(key, encoded.clone());
            encoded
        }
    };

    let (width, height) = (request.width as usize, request.height as usize);
    let noise = seeded_noise(seed, width, height, device, dtype)?;
    let compute = FluxError::compute;
    let state = State::new(
        &t5_emb.to_dtype(dtype).map_err(compute("denoising"))?,
        &clip_emb.to_dtype(dtype).map_err(compute("denoising"))?,
        &noise,
    )
    .map_err(compute("denoising"))?;
    drop((t5_emb, clip_emb));

    let edit = match &request.init {
        None => None,
        Some(init) => Some(encode_init(
            model,
            resident,
            init,
            (width, height),
            &mut say,
            &mut timings,
            cancelled,
        )?),
    };

    let mut borrowed_flux = None;
    let flux: &Transformer = resident_or_load(
        resident.flux.as_mut(),
        &mut borrowed_flux,
        Component::Transformer,
        || model.load_flux(),
        &mut say,
        &mut timings,
    )?;

    // schnell's schedule has no resolution shift. An edit runs it from its
    // strength down: the same steps, each a shorter way.
    let strength = edit.as_ref().map_or(1.0, |e| f64::from(e.strength));
    let timesteps: Vec<f64> = get_schedule(request.steps as usize, None)
        .into_iter()
        .map(|t| t * strength)
        .collect();
    let total = request.steps;
    // The packed noise, or an edit's latent noised to its strength.
    let noised = |t: f64, x0: &Tensor| (x0 * (1.0 - t))? + (&state.img * t)?;
    let mut img = match &edit {
        None => state.img.clone(),
        Some(e) => noised(strength, &e.latent).map_err(compute("denoising"))?,
    };
    for (i, window) in timesteps.windows(2).enumerate() {
        let (t_curr, t_prev) = (window[0], window[1]);
        let t = Instant::now();
        let step = || -> candle_core::Result<(Tensor, Tensor)> {
            let t_vec = Tensor::full(t_curr as f32, img.dim(0)?, device)?;
            let velocity = flux.forward(
                &img,
                &state.img_ids,
                &state.txt,
                &state.txt_ids,
                &t_vec,
                &state.vec,
            )?;
            // Rectified flow: x_t = (1-t)·x0 + t·noise and v = noise - x0.
            let x0 = (&img - (&velocity * t_curr)?)?;
            let next = (&img + (velocity * (t_prev - t_curr))?)?;
            Ok((next, x0))
        };
        let (mut next, x0) = step().map_err(compute("denoising"))?;
        if let Some(Edit {
            latent,
            mask: Some(repaint),
            ..
        }) = &edit
        {
            // Inpainting: outside the mask, the image's own latent at the
            // next step's noise level; inside, what was denoised.
            let keep = || {
                let known = noised(t_prev, latent)?;
                &known + ((&next - &known)? * repaint)?
            };
            next = keep().map_err(compute("denoising"))?;
        }
        img = next;
        on_step();
        let preview = latent_preview(&x0, width, height)?;
        timings.steps.push(t.elapsed());
        say(GenerateEvent::Step {
            index: i as u32 + 1,
            total,
            preview,
        })?;
    }

    drop(borrowed_flux);
    let mut borrowed_decoder = None;
    let decoder = resident_or_load(
        resident.decoder.as_mut(),
        &mut borrowed_decoder,
        Component::Vae,
        || model.load_decoder(),
        &mut say,
        &mut timings,
    )?;
    let t = Instant::now();
    let image = decode(
        decoder,
        &model.vae_config,
        model.dtype,
        &img,
        (width, height),
        vae_decode,
        cancelled,
    )?;
    timings.vae_decode = t.elapsed();
    timings.total = start.elapsed();
    Ok((image, timings, tokens.t5_read))
}

/// An edit's image as the transformer sees it.
struct Edit {
    /// The image's latent, packed, in the transformer's dtype.
    latent: Tensor,
    strength: f32,
    /// Packed like the latent: 1 repaints, 0 keeps the image.
    mask: Option<Tensor>,
}

/// The image resized to the request's size, through the VAE's encoder, and
/// packed; with its mask at the latent's resolution, packed the same way.
/// The encoder stays resident from the first edit on, except in low-memory
/// mode (where nothing but the tokenizers does: no decoder either).
fn encode_init(
    model: &LocalModel,
    resident: &mut Resident,
    init: &InitImage,
    (width, height): (usize, usize),
    say: &mut impl FnMut(GenerateEvent) -> Result<(), FluxError>,
    timings: &mut Timings,
    cancelled: &dyn Fn() -> bool,
) -> Result<Edit, FluxError> {
    let (device, dtype) = (&model.device, model.flux_dtype());
    if resident.decoder.is_some() && resident.encoder.is_none() {
        let mut loaded = None;
        resident_or_load(
            None,
            &mut loaded,
            Component::VaeEncoder,
            || model.load_encoder(),
            say,
            timings,
        )?;
        resident.encoder = loaded;
    }
    let mut borrowed = None;
    let encoder = resident_or_load(
        resident.encoder.as_mut(),
        &mut borrowed,
        Component::VaeEncoder,
        || model.load_encoder(),
        say,
        timings,
    )?;
    let t = Instant::now();
    let (w, h) = (width as u32, height as u32);
    let source =
        image::RgbImage::from_raw(init.image.width, init.image.height, init.image.rgb.clone())
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
            let gray = image::GrayImage::from_raw(mask.width, mask.height, mask.repaint.clone())
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
fn pack(latent: &Tensor) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = latent.dims4()?;
    latent
        .reshape((b, c, h / 2, 2, w / 2, 2))?
        .permute((0, 2, 4, 1, 3, 5))?
        .reshape((b, h / 2 * w / 2, c * 4))
}

/// The prompt through T5 and CLIP. Every part stays resident unless memory
/// is short; then each is loaded for this request and freed before the next
/// one loads.
fn encode_prompt(
    model: &LocalModel,
    resident: &mut Resident,
    tokens: &PromptTokens,
    say: &mut impl FnMut(GenerateEvent) -> Result<(), FluxError>,
    timings: &mut Timings,
) -> Result<Embeddings, FluxError> {
    let device = &model.device;
    let mut borrowed_t5 = None;
    let t5 = resident_or_load(
        resident.t5.as_mut(),
        &mut borrowed_t5,
        Component::T5,
        || model.load_t5(),
        say,
        timings,
    )?;
    let t = Instant::now();
    let t5_emb = t5.encode(&tokens.t5, device)?;
    timings.text_encoding += t.elapsed();
    drop(borrowed_t5);
    let mut borrowed_clip = None;
    let clip = resident_or_load(
        resident.clip.as_mut(),
        &mut borrowed_clip,
        Component::Clip,
        || model.load_clip(),
        say,
        timings,
    )?;
    let t = Instant::now();
    let clip_emb = clip.encode(&tokens.clip, tokens.clip_end, device)?;
    timings.text_encoding += t.elapsed();
    Ok(Embeddings {
        t5: t5_emb,
        clip: clip_emb,
    })
}

/// A part kept loaded, or loaded now into `borrowed` (so it is freed when
/// the caller drops that), with the load announced and timed.
fn resident_or_load<'a, T>(
    resident: Option<&'a mut T>,
    borrowed: &'a mut Option<T>,
    component: Component,
    load: impl FnOnce() -> Result<T, FluxError>,
    say: &mut impl FnMut(GenerateEvent) -> Result<(), FluxError>,
    timings: &mut Timings,
) -> Result<&'a mut T, FluxError> {
    if let Some(part) = resident {
        return Ok(part);
    }
    say(GenerateEvent::Loading { component })?;
    let t = Instant::now();
    let part = borrowed.insert(load()?);
    timings.load += t.elapsed();
    Ok(part)
}

/// The initial latent noise, drawn on the CPU from a seeded ChaCha RNG (candle
/// cannot seed its CPU generator), so a seed gives the same noise everywhere.
pub fn seeded_noise(
    seed: u64,
    width: usize,
    height: usize,
    device: &Device,
    dtype: DType,
) -> Result<Tensor, FluxError> {
    let (h, w) = (height.div_ceil(16) * 2, width.div_ceil(16) * 2);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let values: Vec<f32> = rand_distr::StandardNormal
        .sample_iter(&mut rng)
        .take(16 * h * w)
        .collect();
    Tensor::from_vec(values, (1, 16, h, w), &Device::Cpu)
        .and_then(|t| t.to_device(device))
        .and_then(|t| t.to_dtype(dtype))
        .map_err(FluxError::compute("noise"))
}

/// Packed latent → RGB pixels through the VAE decoder.
fn decode(
    decoder: &Decoder,
    cfg: &autoencoder::Config,
    dtype: DType,
    img: &Tensor,
    (width, height): (usize, usize),
    mode: VaeDecode,
    cancelled: &dyn Fn() -> bool,
) -> Result<Image, FluxError> {
    let run = || -> candle_core::Result<Option<Vec<u8>>> {
        let latent = unpack(img, height, width)?;
        let latent = ((latent / cfg.scale_factor)? + cfg.shift_factor)?.to_dtype(dtype)?;
        let mut keep_going = || !cancelled();
        let decoded = match mode {
            VaeDecode::Whole => decoder.decode(&latent, &mut keep_going)?,
            VaeDecode::Tiled => decoder.decode_tiled(&latent, &mut keep_going)?,
        };
        let Some(rgb) = decoded else {
            return Ok(None);
        };
        let rgb = ((rgb.to_dtype(DType::F32)?.clamp(-1f32, 1f32)? + 1.0)? * 127.5)?.round()?;
        rgb.to_dtype(DType::U8)?
            .squeeze(0)?
            .permute((1, 2, 0))?
            .flatten_all()?
            .to_device(&Device::Cpu)?
            .to_vec1::<u8>()
            .map(Some)
    };
    let rgb = run()
        .map_err(FluxError::compute("VAE decoding"))?
        .ok_or(FluxError::Cancelled)?;
    Ok(Image {
        width: width as u32,
        height: height as u32,
        rgb,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
