//! Subcommands; each is a thin shell over the library.

mod generate;
mod progress;
mod serve;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use schnell::dev::{Size, WriteOptions};
use schnell::flux::{
    parse_dtype, DeviceChoice, EngineOptions, FluxSchnell, ModelDescription, Quant, QuantChoice,
    T5Quant, TextEncoders,
};
use schnell::hub::{HubClient, HubClientBuilder, HubFile, Verification};
use schnell::mirror::Mirror;

#[derive(Parser)]
#[command(
    name = "schnell",
    version = version_line(),
    about = "FLUX.1-schnell text-to-image: generate, fetch and mirror models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make an image from a prompt.
    Generate(generate::GenerateArgs),
    /// Serve the OpenAI-style images API and the web UI.
    Serve(serve::ServeArgs),
    /// Download a model's files (or any Hub files) into the standard cache.
    Fetch(FetchArgs),
    /// Serve a folder of model files over the Hub's resolve protocol.
    Mirror(MirrorArgs),
    /// The back ends this build has (cpu, cuda, metal) and the devices each sees.
    Devices,
    /// Developer tools.
    #[command(subcommand)]
    Dev(DevCommand),
}

#[derive(Subcommand)]
enum DevCommand {
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

/// Where files come from and go to.
#[derive(Args, Clone)]
struct HubArgs {
    /// Hub or mirror to fetch from (default: $HF_ENDPOINT, else https://huggingface.co).
    #[arg(long)]
    endpoint: Option<String>,
    /// Cache folder (default: $HF_HUB_CACHE, else $HF_HOME/hub).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

impl HubArgs {
    /// The environment's settings, overridden by the flags.
    fn builder(&self) -> HubClientBuilder {
        let mut builder = HubClientBuilder::from_env();
        if let Some(endpoint) = &self.endpoint {
            builder = builder.endpoint(endpoint);
        }
        if let Some(dir) = &self.cache_dir {
            builder = builder.cache_dir(dir);
        }
        builder
    }

    /// A client that draws progress bars.
    fn client(&self, bars: &progress::DownloadBars) -> Result<HubClient> {
        Ok(self.builder().on_event(bars.sink()).build()?)
    }
}

/// How the engine runs.
#[derive(Args, Clone)]
struct EngineArgs {
    /// cpu, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// bf16 or f32 (default: bf16 on GPUs, f32 on the CPU; f16 is refused).
    #[arg(long)]
    dtype: Option<String>,
    /// flux-repo (about 34 GB) or original (about 70 GB, candle's file list).
    #[arg(long, default_value_t = TextEncoders::FluxRepo)]
    text_encoders: TextEncoders,
    /// Keep only the tokenizers loaded: load T5, CLIP, the transformer and
    /// the VAE in turn for every image, each freed before the next.
    #[arg(long)]
    low_memory: bool,
    /// The transformer's weights: auto (the largest that fits free memory),
    /// none (safetensors), or a GGUF type: q8_0, q6_k, q5_k_s, q5_1, q5_0,
    /// q4_1, q4_k_s, q4_0, q3_k_s, q2_k.
    #[arg(long, default_value_t = QuantChoice::Auto)]
    quant: QuantChoice,
    /// T5's weights: none (safetensors) or q8_0, q6_k, q5_k_m, q5_k_s, q4_k_m,
    /// q4_k_s, q3_k_l, q3_k_m, q3_k_s (default: the nearest to --quant's).
    #[arg(long)]
    t5_quant: Option<T5Quant>,
    /// Plan --quant auto for this much memory (e.g. 12GB, 16GiB) instead of
    /// what the device has free.
    #[arg(long, value_parser = parse_bytes)]
    memory_budget: Option<u64>,
}

impl EngineArgs {
    fn options(&self) -> Result<EngineOptions> {
        let options = EngineOptions::default()
            .device(self.device)
            .dtype(self.dtype.as_deref().map(parse_dtype).transpose()?)
            .text_encoders(self.text_encoders)
            .low_memory(self.low_memory)
            .quant(self.quant)
            .t5_quant(self.t5_quant)
            .memory_budget(self.memory_budget);
        // A dtype the device cannot run is refused before anything starts.
        options.resolved_dtype()?;
        Ok(options)
    }
}

/// A number and a unit (`12GB`, `30s`): the number times the unit's scale,
/// from `units` (`""` is the unit-less case). `what` names the quantity in
/// errors, with an `example`.
fn parse_quantity(
    s: &str,
    units: &[(&[&str], f64)],
    what: &str,
    example: &str,
) -> Result<f64, String> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a {what}: use e.g. {example}"))?;
    let unit = unit.to_ascii_lowercase();
    let Some((_, scale)) = units
        .iter()
        .find(|(names, _)| names.contains(&unit.as_str()))
    else {
        let known: Vec<&str> = units
            .iter()
            .flat_map(|(n, _)| n.iter().copied())
            .filter(|n| !n.is_empty())
            .collect();
        return Err(format!(
            "unknown unit {unit:?} in {s:?}: use {}",
            known.join(", ")
        ));
    };
    if number < 0.0 || !number.is_finite() {
        return Err(format!("{s:?} is not a {what}"));
    }
    Ok(number * scale)
}

/// `12GB`, `16GiB`, `800MB` or plain bytes.
fn parse_bytes(s: &str) -> Result<u64, String> {
    const UNITS: &[(&[&str], f64)] = &[
        (&["", "b"], 1.0),
        (&["kb", "k"], 1e3),
        (&["mb", "m"], 1e6),
        (&["gb", "g"], 1e9),
        (&["tb", "t"], 1e12),
        (&["kib"], 1024.0),
        (&["mib"], 1048576.0),
        (&["gib"], 1073741824.0),
        (&["tib"], 1099511627776.0),
    ];
    parse_quantity(s, UNITS, "size", "12GB or 16GiB").map(|bytes| bytes as u64)
}

/// `30s`, `2m`, `500ms`, `1h` or plain seconds.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    const UNITS: &[(&[&str], f64)] = &[
        (&["", "s"], 1.0),
        (&["ms"], 1e-3),
        (&["m", "min"], 60.0),
        (&["h"], 3600.0),
    ];
    let seconds = parse_quantity(s, UNITS, "duration", "30s, 2m or 500ms")?;
    // A zero timeout would close every connection before its first request.
    if seconds == 0.0 {
        return Err(format!("{s:?}: a duration must be more than zero"));
    }
    std::time::Duration::try_from_secs_f64(seconds).map_err(|_| format!("{s:?} is too long"))
}

#[derive(Args)]
struct FetchArgs {
    /// Every file of a model: `flux-schnell`, as `generate` or `serve` with
    /// the same flags would run it (--quant auto plans for 1024×1024).
    #[arg(long, conflicts_with_all = ["repo", "files"])]
    model: Option<String>,
    /// With --model: what `generate` or `serve` would run.
    #[command(flatten)]
    engine: EngineArgs,
    /// Repository, `org/name`, for ad-hoc files.
    #[arg(long, requires = "files")]
    repo: Option<String>,
    /// Branch, tag, `refs/pr/N` or commit.
    #[arg(long, default_value = "main")]
    revision: String,
    /// Files of --repo to fetch.
    #[arg(long = "file", num_args = 1.., requires = "repo")]
    files: Vec<String>,
    /// Hash the cached files against the names of their blobs (sha256, or
    /// git blob sha1), as `hf cache verify` does, and download again any
    /// that do not match.
    #[arg(long)]
    verify: bool,
    #[command(flatten)]
    hub: HubArgs,
}

#[derive(Args)]
struct MirrorArgs {
    /// `DIR/<org>/<name>/<path>`, or a Hugging Face cache folder.
    #[arg(long)]
    dir: PathBuf,
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:8090")]
    addr: SocketAddr,
}

/// `schnell 0.1.0 (back ends: cpu, cuda)`, without the name clap prefixes.
fn version_line() -> &'static str {
    // Once per process; clap wants a 'static string.
    Box::leak(
        format!(
            "{} (back ends: {})",
            env!("CARGO_PKG_VERSION"),
            schnell::flux::COMPILED_BACKENDS
        )
        .into_boxed_str(),
    )
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before any thread starts: candle reads this once.
    schnell::flux::memory::keep_q8_0_compact();
    let default_log = match cli.command {
        Command::Mirror(_) | Command::Serve(_) => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_log)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Generate(args) => generate::run(args).await,
            Command::Serve(args) => serve::run(args).await,
            Command::Fetch(args) => fetch(args).await,
            Command::Mirror(args) => mirror(args).await,
            Command::Devices => devices().await,
            Command::Dev(DevCommand::Noise {
                out,
                seed,
                width,
                height,
            }) => {
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
            Command::Dev(DevCommand::TinyModels { dir }) => {
                random_models(dir, WriteOptions::for_size(Size::Tiny, None)).await
            }
            Command::Dev(DevCommand::RandomModels {
                dir,
                size,
                quant,
                t5_quant,
            }) => {
                let mut options = WriteOptions::for_size(size, quant);
                for q in t5_quant {
                    if !options.t5_quants.contains(&q) {
                        options.t5_quants.push(q);
                    }
                }
                random_models(dir, options).await
            }
        }
    });
    // A blocking task (hashing a large file, say) must not hold the exit up.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints each back end; fails when a compiled-in GPU back end sees no
/// device, so scripts can test for a usable GPU.
async fn devices() -> Result<()> {
    // Opening a driver can block for seconds: not on the runtime's threads.
    let reports = tokio::task::spawn_blocking(schnell::flux::backend_reports).await?;
    for report in &reports {
        println!("{report}");
    }
    let unusable: Vec<&str> = reports
        .iter()
        .filter(|r| {
            r.compiled && r.backend != "cpu" && !matches!(&r.devices, Ok(d) if !d.is_empty())
        })
        .map(|r| r.backend)
        .collect();
    if !unusable.is_empty() {
        bail!("compiled in but no device: {}", unusable.join(", "));
    }
    Ok(())
}

async fn fetch(args: FetchArgs) -> Result<()> {
    let bars = progress::DownloadBars::new();
    let files: Vec<HubFile> = match (&args.model, &args.repo) {
        (Some(name), _) => {
            let model = ModelDescription::find(name)
                .with_context(|| format!("unknown model {name:?}: try flux-schnell"))?;
            let engine =
                FluxSchnell::for_model(model, args.hub.client(&bars)?, args.engine.options()?);
            let plan = engine
                .plan(schnell::flux::PLANNED_SIDE, schnell::flux::PLANNED_SIDE)
                .await?;
            bars.println(format!("weights: {}", plan.reason));
            model
                .files(args.engine.text_encoders, plan.transformer, plan.t5)
                .all()
        }
        (None, Some(repo)) => args
            .files
            .iter()
            .map(|f| HubFile::new(repo, f).at_revision(&args.revision))
            .collect(),
        (None, None) => bail!("say what to fetch: --model flux-schnell, or --repo R --file F…"),
    };
    let client = args.hub.client(&bars)?;
    let verified = if args.verify {
        bars.println(format!("verifying {} file(s) in the cache…", files.len()));
        let verified = client.verify(&files).await;
        if verified.is_err() {
            bars.finish();
        }
        let verified = verified.context("verify failed")?;
        let damaged: Vec<String> = files
            .iter()
            .zip(&verified)
            .filter_map(|(f, v)| match v {
                Verification::Damaged { reason } => Some(format!("{f}: {reason}")),
                _ => None,
            })
            .collect();
        if !damaged.is_empty() {
            bars.finish();
            bail!(
                "damaged in the cache, and not downloaded again while offline \
                 (HF_HUB_OFFLINE is set): {}",
                damaged.join("; ")
            );
        }
        Some(verified)
    } else {
        None
    };
    let fetched = client.files(&files).await;
    bars.finish();
    let fetched = fetched.context("fetch failed")?;
    for (i, f) in fetched.iter().enumerate() {
        let how = match verified.as_ref().map(|v| &v[i]) {
            Some(Verification::Intact) => "verified".to_string(),
            Some(Verification::Repaired { reason }) => format!("repaired ({reason})"),
            Some(Verification::SizeOnly) => "cached, size checked (no hash to check)".into(),
            Some(Verification::Unchecked) => "cached, not checked (no hash to check)".into(),
            Some(Verification::Damaged { reason }) => format!("damaged ({reason})"),
            Some(Verification::NotCached) | None if f.from_cache() => "cached".into(),
            Some(Verification::NotCached) | None => "downloaded".into(),
        };
        println!(
            "{}\t{}\t{} bytes\t{how}",
            f.file.path,
            f.path().display(),
            f.size()
        );
    }
    if fetched.len() != files.len() {
        bail!("{} of {} files arrived", fetched.len(), files.len());
    }
    Ok(())
}

async fn mirror(args: MirrorArgs) -> Result<()> {
    let mirror = Mirror::open(&args.dir)
        .await
        .with_context(|| format!("cannot serve {}", args.dir.display()))?;
    let (root, layout) = (mirror.root().to_path_buf(), mirror.layout());
    schnell::mirror::serve(mirror, args.addr, |addr| {
        // A closed stdout must not take the server down with it.
        let mut out = std::io::stdout();
        let _ = writeln!(
            out,
            "serving {} ({layout:?} layout) at http://{addr}",
            root.display()
        );
        let _ = writeln!(out, "use it with: HF_ENDPOINT=http://{addr}");
    })
    .await
    .with_context(|| format!("mirror on {}", args.addr))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_bytes("12GB"), Ok(12_000_000_000));
        assert_eq!(parse_bytes("16GiB"), Ok(16 << 30));
        assert_eq!(parse_bytes(" 800 mb "), Ok(800_000_000));
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert!(parse_bytes("-1GB").is_err());
        assert!(parse_bytes("12 parsecs")
            .unwrap_err()
            .contains("unknown unit"));
    }

    #[test]
    fn durations_parse_with_units() {
        use std::time::Duration;
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("0s").unwrap_err().contains("more than zero"));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
