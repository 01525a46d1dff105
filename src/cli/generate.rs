//! `schnell generate`: one prompt to one PNG, with progress bars.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use schnell::flux::{FluxSchnell, GenerateEvent, GenerateRequest};

use super::{progress::DownloadBars, EngineArgs, HubArgs};

#[derive(Args)]
pub struct GenerateArgs {
    /// What the image shows.
    prompt: String,
    /// Where to write the PNG.
    #[arg(short, long, default_value = "schnell.png")]
    output: PathBuf,
    /// Multiple of 16, 256 to 2048.
    #[arg(long, default_value_t = 1024)]
    width: u32,
    /// Multiple of 16, 256 to 2048.
    #[arg(long, default_value_t = 1024)]
    height: u32,
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

pub async fn run(args: GenerateArgs) -> Result<()> {
    let bars = DownloadBars::new();
    let engine = FluxSchnell::new(args.hub.client(&bars)?, args.engine.options()?);
    let mut request = GenerateRequest::new(&args.prompt)
        .size(args.width, args.height)
        .steps(args.steps);
    request.seed = args.seed;

    request.validate()?;
    // What runs, and why: auto's pick depends on free memory and the size.
    let plan = engine
        .plan(args.width, args.height)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    bars.println(format!("weights: {}", plan.reason));

    let steps = bars.add(ProgressBar::new(args.steps as u64));
    steps.set_style(
        ProgressStyle::with_template("{msg:40!} {bar:30} {pos}/{len} steps {elapsed}")
            .expect("valid template"),
    );
    steps.set_message("waiting for the model");
    let mut events = std::pin::pin!(engine.generate(request));
    while let Some(event) = events.next().await {
        match event {
            GenerateEvent::Download(e) => bars.on(e),
            GenerateEvent::Loading { component } => {
                steps.set_message(format!("loading {component:?}"))
            }
            GenerateEvent::Warning { message } => bars.println(format!("warning: {message}")),
            GenerateEvent::Step { index, .. } => {
                steps.set_message("denoising");
                steps.set_position(index as u64);
            }
            GenerateEvent::Done {
                image,
                seed,
                timings,
                ..
            } => {
                steps.finish_with_message("done");
                bars.finish();
                let png = image.to_png()?;
                tokio::fs::write(&args.output, png)
                    .await
                    .with_context(|| format!("writing {}", args.output.display()))?;
                let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1e3);
                println!("{}", args.output.display());
                println!("seed: {seed}");
                println!(
                    "timings: load {}, text encoding {}, {} steps {} ({} each), VAE decode {}, total {}",
                    ms(timings.load),
                    ms(timings.text_encoding),
                    timings.steps.len(),
                    ms(timings.steps.iter().sum()),
                    ms(timings.steps.iter().sum::<Duration>() / timings.steps.len().max(1) as u32),
                    ms(timings.vae_decode),
                    ms(timings.total)
                );
                return Ok(());
            }
            GenerateEvent::Failed { error } => {
                steps.abandon();
                bars.finish();
                bail!("{error}");
            }
        }
    }
    bail!("the engine stopped without an image")
}
