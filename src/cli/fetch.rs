//! `schnell fetch`: a model's files (or any Hub files) into the cache,
//! optionally verified.

use anyhow::{bail, Context, Result};
use clap::Args;
use schnell::flux::{FluxSchnell, ModelDescription};
use schnell::hub::{HubFile, Verification};

use super::args::{EngineArgs, HubArgs};
use super::progress;

// `schnell fetch`'s flags (a doc comment here would change clap's help text).
#[derive(Args)]
pub struct FetchArgs {
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

/// Fetches (and with `--verify` checks) the files asked for; prints each.
pub async fn run(args: FetchArgs) -> Result<()> {
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
            Some(other) => format!("{other:?}"),
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
