//! Flags several subcommands share: where files come from ([`HubArgs`]) and
//! how the engine runs ([`EngineArgs`]).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use schnell::flux::{parse_dtype, DeviceChoice, EngineOptions, QuantChoice, T5Quant, TextEncoders};
use schnell::hub::{HubClient, HubClientBuilder};

use super::progress;
use super::units::parse_bytes;

/// Where files come from and go to.
#[derive(Args, Clone)]
pub struct HubArgs {
    /// Hub or mirror to fetch from (default: $HF_ENDPOINT, else https://huggingface.co).
    #[arg(long)]
    endpoint: Option<String>,
    /// Cache folder (default: $HF_HUB_CACHE, else $HF_HOME/hub).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

impl HubArgs {
    /// The environment's settings, overridden by the flags.
    pub fn builder(&self) -> HubClientBuilder {
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
    pub fn client(&self, bars: &progress::DownloadBars) -> Result<HubClient> {
        Ok(self.builder().on_event(bars.sink()).build()?)
    }
}

/// How the engine runs.
#[derive(Args, Clone)]
pub struct EngineArgs {
    /// cpu, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// bf16 or f32 (default: bf16 on GPUs, f32 on the CPU; f16 is refused).
    #[arg(long)]
    dtype: Option<String>,
    /// flux-repo (about 34 GB) or original (about 70 GB, candle's file list).
    #[arg(long, default_value_t = TextEncoders::FluxRepo)]
    pub text_encoders: TextEncoders,
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
    /// The engine's options; a dtype the device cannot run is refused here.
    pub fn options(&self) -> Result<EngineOptions> {
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
