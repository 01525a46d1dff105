//! `schnell generate`: one prompt to one PNG, with progress bars; with
//! `--image`, an edit of that image.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use schnell::flux::{FluxSchnell, GenerateEvent, GenerateRequest, Image, InitImage, Mask};
use schnell::limits::{MAX_SIDE, MIN_SIDE};

use super::args::{EngineArgs, HubArgs};
use super::progress::DownloadBars;

#[derive(Args)]
// `schnell generate`'s flags (a doc comment here would change clap's help text).
pub struct GenerateArgs {
    /// What the image shows.
    prompt: String,
    /// Where to write the PNG.
    #[arg(short, long, default_value = "schnell.png")]
    output: PathBuf,
    /// Multiple of 16, 256 to 2048 [default: 1024; with --image its
    /// proportions, the longer side at most 1024, or to go with --height].
    #[arg(long)]
    width: Option<u32>,
    /// Multiple of 16, 256 to 2048 [default: as for --width].
    #[arg(long)]
    height: Option<u32>,
    /// Edit this image (png, jpeg or webp) instead of starting from noise.
    #[arg(long)]
    image: Option<PathBuf>,
    /// With --image: how much of it to repaint, above 0 to 1.
    #[arg(long, requires = "image", default_value_t = schnell::limits::DEFAULT_STRENGTH)]
    strength: f32,
    /// With --image: repaint only where this image is transparent (or, with
    /// no alpha channel, white); the same size as --image.
    #[arg(long, requires = "image")]
    mask: Option<PathBuf>,
    /// Denoising steps, 1 to 50 (schnell is made for 4).
    #[arg(long, default_value_t = 4)]
    steps: u32,
    /// Random if absent; printed either way.
    #[arg(long)]
    seed: Option<u64>,
    #[command(flatten)]
    engine: EngineArgs,
    #[command(flatten)]
    hub: HubArgs,
}

/// Makes the image, with progress bars; writes the PNG.
pub async fn run(args: GenerateArgs) -> Result<()> {
    let bars = DownloadBars::new();
    let engine = FluxSchnell::new(args.hub.client(&bars)?, args.engine.options()?);
    let mut request = GenerateRequest::new(&args.prompt).steps(args.steps);
    if let Some(path) = &args.image {
        let image = read_image(path, Image::decode).await?;
        let mask = match &args.mask {
            Some(path) => Some(read_image(path, Mask::decode).await?),
            None => None,
        };
        let strength = args.strength;
        let init =
            tokio::task::spawn_blocking(move || InitImage::new(image, mask, strength)).await??;
        let (w, h) = (init.image.width, init.image.height);
        request = request.edit(init);
        // One side given: the other keeps the image's proportions.
        let other = |given: u32, a: u32, b: u32| {
            let side = f64::from(given) * f64::from(b) / f64::from(a);
            (((side / 16.0).round() as u32) * 16).clamp(MIN_SIDE, MAX_SIDE)
        };
        match (args.width, args.height) {
            (Some(width), None) => request.height = other(width, w, h),
            (None, Some(height)) => request.width = other(height, h, w),
            _ => {}
        }
    }
    request.width = args.width.unwrap_or(request.width);
    request.height = args.height.unwrap_or(request.height);
    request.seed = args.seed;

    request.validate()?;
    // What runs, and why: auto's pick depends on free memory and the size.
    let plan = engine
        .plan(request.width, request.height)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    bars.println(format!("weights: {}", plan.reason));

    let steps = bars.add(ProgressBar::new(u64::from(args.steps)));
    steps.set_style(
        ProgressStyle::with_template("{msg:40!} {bar:30} {pos}/{len} steps {elapsed}")
            .expect("valid template"),
    );
    steps.set_message("waiting for the model");
    let made = engine
        .generate_images_with(request, |event| match event {
            GenerateEvent::Download(e) => bars.on(e.clone()),
            GenerateEvent::Loading { component } => {
                steps.set_message(format!("loading {component:?}"))
            }
            GenerateEvent::Warning { message } => bars.println(format!("warning: {message}")),
            GenerateEvent::Step { index, .. } => {
                steps.set_message("denoising");
                steps.set_position(u64::from(*index));
            }
            _ => {}
        })
        .await;
    let made = match made {
        Ok(mut generation) => generation.images.swap_remove(0),
        Err(error) => {
            steps.abandon();
            bars.finish();
            bail!("{error}");
        }
    };
    steps.finish_with_message("done");
    bars.finish();
    let (timings, seed) = (&made.timings, made.seed);
    let png = made.image.to_png()?;
    tokio::fs::write(&args.output, png)
        .await
        .with_context(|| format!("writing {}", args.output.display()))?;
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1e3);
    println!("{}", args.output.display());
    println!("seed: {seed}");
    let encode = if args.image.is_some() {
        format!(", VAE encode {}", ms(timings.vae_encode))
    } else {
        String::new()
    };
    println!(
        "timings: load {}, text encoding {}{encode}, {} steps {} ({} each), VAE decode {}, total {}",
        ms(timings.load),
        ms(timings.text_encoding),
        timings.steps.len(),
        ms(timings.steps.iter().sum()),
        ms(timings.steps.iter().sum::<Duration>() / timings.steps.len().max(1) as u32),
        ms(timings.vae_decode),
        ms(timings.total)
    );
    Ok(())
}

/// An image file, read off the runtime's threads and decoded on the blocking
/// pool; errors name the file.
async fn read_image<T: Send + 'static>(
    path: &std::path::Path,
    decode: fn(&[u8]) -> Result<T, String>,
) -> Result<T> {
    let bytes = tokio::fs::read(path)
        .await
        .with_context(|| format!("reading {}", path.display()))?;
    let decoded = tokio::task::spawn_blocking(move || decode(&bytes)).await?;
    decoded.map_err(|reason| anyhow::anyhow!("{} {reason}", path.display()))
}
