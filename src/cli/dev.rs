//! `schnell dev`: developer tools (random-weight models, seeded noise).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use schnell::dev::{Size, WriteOptions};
use schnell::flux::{Quant, T5Quant};

// `schnell dev`'s subcommands (a doc comment here would change clap's help text).
#[derive(Subcommand)]
pub enum DevCommand {
    /// Write random-weight models (real file names, tensor names, dtypes and
    /// configs; their images are noise) for `schnell mirror --dir DIR`.
    RandomModels {
        /// Folder to write `<org>/<name>/<path>` into.
        dir: PathBuf,
        /// tiny (toy, for tests), bench (mid-size) or real (the real
        /// architecture: gigabytes per file).
        #[arg(long, default_value = "tiny")]
        size: Size,
        /// The transformer's types, comma-separated (none = safetensors).
        /// Default: all of them, but for `real` only q4_0. T5 gets the
        /// nearest type to each.
        #[arg(long, value_delimiter = ',')]
        quant: Option<Vec<Quant>>,
        /// More T5 types to write, comma-separated.
        #[arg(long, value_delimiter = ',')]
        t5_quant: Vec<T5Quant>,
    },
    /// The same as `random-models --size tiny`.
    TinyModels {
        /// Folder to write `<org>/<name>/<path>` into.
        dir: PathBuf,
    },
    /// Write the initial latent noise `generate --seed` starts from, as a
    /// safetensors file holding `noise` (1, 16, H/8, W/8, f32): for running
    /// another implementation from the same start.
    Noise {
        /// The safetensors file to write.
        out: PathBuf,
        #[arg(long)]
        seed: u64,
        #[arg(long, default_value_t = 1024)]
        width: u32,
        #[arg(long, default_value_t = 1024)]
        height: u32,
    },
}

/// Runs a developer tool.
pub async fn run(command: DevCommand) -> Result<()> {
    match command {
        DevCommand::Noise {
            out,
            seed,
            width,
            height,
        } => {
            let noise = schnell::flux::seeded_noise(
                seed,
                width as usize,
                height as usize,
                &candle_core::Device::Cpu,
                candle_core::DType::F32,
            )?;
            tokio::task::spawn_blocking(move || {
                noise
                    .save_safetensors("noise", &out)
                    .with_context(|| format!("writing {}", out.display()))
            })
            .await?
        }
        DevCommand::TinyModels { dir } => {
            random_models(dir, WriteOptions::for_size(Size::Tiny, None)).await
        }
        DevCommand::RandomModels {
            dir,
            size,
            quant,
            t5_quant,
        } => {
            let mut options = WriteOptions::for_size(size, quant);
            for q in t5_quant {
                if !options.t5_quants.contains(&q) {
                    options.t5_quants.push(q);
                }
            }
            random_models(dir, options).await
        }
    }
}

/// Writes the models with a spinner; says how to serve them.
async fn random_models(dir: PathBuf, options: WriteOptions) -> Result<()> {
    let target = dir.clone();
    let spinner = indicatif::ProgressBar::new_spinner().with_message(format!(
        "writing random-weight models into {}",
        dir.display()
    ));
    spinner.enable_steady_tick(std::time::Duration::from_millis(200));
    let written = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&target)?;
        schnell::dev::write_models(&target, &options)
    })
    .await?
    .map_err(|e| anyhow::anyhow!("writing random models into {}: {e}", dir.display()))?;
    spinner.finish_and_clear();
    println!(
        "wrote {} files of random-weight models into {} (their images are noise)",
        written.len(),
        dir.display()
    );
    println!("serve them with: schnell mirror --dir {}", dir.display());
    Ok(())
}
