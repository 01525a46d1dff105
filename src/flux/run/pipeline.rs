//! One generation, start to finish, on the engine's thread: encode the prompt,
//! run the schedule one transformer pass at a time, decode the latent.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::flux::autoencoder;
use candle_transformers::models::flux::sampling::{get_schedule, unpack, State};
use rand::SeedableRng;
use rand_distr::Distribution;

use crate::flux::error::FluxError;
use crate::flux::model::vae::Decoder;
use crate::flux::plan::memory::VaeDecode;
use crate::flux::request::generate::GenerateRequest;
use crate::flux::request::output::{Component, GenerateEvent, Image, Timings};
use crate::flux::run::edit::{encode_init, Edit};
use crate::flux::run::loaded::{resident_or_load, LocalModel, Resident, Transformer};
use crate::flux::run::preview::latent_preview;
use crate::flux::run::prompt_cache::{Embeddings, PromptKey};
use crate::flux::weights::tokenizers::PromptTokens;

/// How the engine follows one generation.
pub struct Hooks<'a> {
    /// Sends an event; `false` means nobody listens any more (cancelled).
    pub emit: &'a mut dyn FnMut(GenerateEvent) -> bool,
    /// Called after each transformer pass.
    pub on_step: &'a mut dyn FnMut(),
    /// Asked inside the VAE decode, where no event goes out for seconds.
    pub cancelled: &'a dyn Fn() -> bool,
}

/// Makes one image per seed in one batch (each transformer pass takes them
/// all), and says how many of the prompt's tokens T5 read. Events go out as
/// they happen; each `Step` right after its transformer pass, with the first
/// image's preview. Each image's timings share the batch's stages but its
/// own VAE decode, and end when it is decoded.
///
/// An edit's image is encoded into `encoded` by the first batch of a
/// request, and read from there by the rest.
pub fn generate(
    model: &LocalModel,
    resident: &mut Resident,
    request: &GenerateRequest,
    (seeds, vae_decode): (&[u64], VaeDecode),
    encoded: &mut Option<Edit>,
    hooks: Hooks,
) -> Result<(Vec<(Image, Timings)>, usize), FluxError> {
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
    let noise = seeds
        .iter()
        .map(|&seed| seeded_noise(seed, width, height, device, dtype))
        .collect::<Result<Vec<_>, _>>()?;
    let compute = FluxError::compute;
    let noise = Tensor::cat(&noise, 0).map_err(compute("noise"))?;
    let batch = seeds.len();
    let state = State::new(
        &t5_emb.to_dtype(dtype).map_err(compute("denoising"))?,
        &clip_emb.to_dtype(dtype).map_err(compute("denoising"))?,
        &noise,
    )
    .map_err(compute("denoising"))?;
    drop((t5_emb, clip_emb));

    let edit = match &request.init {
        None => None,
        Some(init) => {
            if encoded.is_none() {
                *encoded = Some(encode_init(
                    model,
                    init,
                    (width, height),
                    &mut say,
                    &mut timings,
                    cancelled,
                )?);
            }
            let once = encoded.as_ref().expect("encoded above");
            // The same image under every seed's noise.
            let each = |t: &Tensor| t.repeat(batch).map_err(compute("denoising"));
            Some(Edit {
                latent: each(&once.latent)?,
                strength: once.strength,
                mask: once.mask.as_ref().map(each).transpose()?,
            })
        }
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
        let first = x0.narrow(0, 0, 1).map_err(compute("preview"))?;
        let preview = latent_preview(&first, width, height)?;
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
    // One image at a time: the decoder's activations are the largest of all.
    let mut images = Vec::with_capacity(batch);
    for i in 0..batch {
        let t = Instant::now();
        let latent = img.narrow(0, i, 1).map_err(compute("VAE decoding"))?;
        let image = decode(
            decoder,
            &model.vae_config,
            model.dtype,
            &latent,
            (width, height),
            vae_decode,
            cancelled,
        )?;
        let mut own = timings.clone();
        own.vae_decode = t.elapsed();
        own.total = start.elapsed();
        own.shared_passes = i > 0;
        images.push((image, own));
    }
    Ok((images, tokens.t5_read))
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
