//! How much memory a choice of weights needs, how much the device has, and
//! `--quant auto`'s pick.
//!
//! Needs are computed from the configs (parameter counts by how each file
//! stores them) and the requested image size (attention scores, the VAE's
//! full-resolution activations). They are estimates, planned on the high
//! side; the benchmark in BENCHMARKS.md measures the real peaks.

use candle_core::quantized::GgmlDType;
use candle_core::DType;
use candle_transformers::models::clip::text_model::ClipTextConfig;
use candle_transformers::models::flux::{autoencoder, model};
use candle_transformers::models::t5;

use super::attention::SCORE_BYTES;
use super::config::{self, ConfigSource};
use super::device::DeviceChoice;
use super::quant::{Quant, QuantPlan, T5Quant};
use super::vae;
use super::FluxError;

const GB: f64 = 1e9;
/// The runtime, tokenizers and allocator slack.
const OVERHEAD: u64 = 512 << 20;
/// T5 always sees this many tokens.
const T5_TOKENS: u64 = crate::tokens::T5_LIMIT as u64;

/// The transformer's parameters, grouped by how city96's files store them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FluxParams {
    /// The blocks' matrices: quantized.
    pub block_matrices: u64,
    /// The embedders' and final layer's matrices: F16 in the files.
    pub top_matrices: u64,
    /// Biases and norm scales: F16 in the files.
    pub vectors: u64,
}

impl FluxParams {
    pub fn of(c: &model::Config) -> Self {
        let h = c.hidden_size as u64;
        let m = (c.hidden_size as f64 * c.mlp_ratio) as u64;
        let (ci, t, v) = (
            c.in_channels as u64,
            c.context_in_dim as u64,
            c.vec_in_dim as u64,
        );
        let d = h / c.num_heads as u64;
        let guidance = if c.guidance_embed { 1 } else { 0 };
        let top_matrices = h * ci
            + h * t
            + (1 + guidance) * (h * 256 + h * h)
            + h * v
            + h * h
            + ci * h
            + 2 * h * h;
        let top_vectors = h + h + (1 + guidance) * 2 * h + 2 * h + ci + 2 * h;
        let stream = 6 * h * h + 3 * h * h + h * h + 2 * m * h;
        let stream_vectors = 6 * h + 3 * h + h + m + h + 2 * d;
        let single = (3 * h + m) * h + h * (h + m) + 3 * h * h;
        let single_vectors = (3 * h + m) + h + 3 * h + 2 * d;
        let (double_n, single_n) = (c.depth as u64, c.depth_single_blocks as u64);
        Self {
            block_matrices: double_n * 2 * stream + single_n * single,
            top_matrices,
            vectors: top_vectors + double_n * 2 * stream_vectors + single_n * single_vectors,
        }
    }

    pub fn total(&self) -> u64 {
        self.block_matrices + self.top_matrices + self.vectors
    }

    /// The size of city96's GGUF of this type (tensor data, no header).
    pub fn gguf_bytes(&self, quant: Quant) -> Option<u64> {
        let bpw = quant.bits_per_weight()?;
        Some(
            (self.block_matrices as f64 * bpw / 8.0) as u64
                + (self.top_matrices + self.vectors) * 2,
        )
    }

    /// In memory: candle keeps block matrices quantized (plus, on the CPU,
    /// the copy it repacks some types into) and widens the F16 tensors to
    /// F32; safetensors load whole in `dtype`.
    pub fn resident_bytes(&self, quant: Quant, dtype: DType, cpu: bool) -> u64 {
        match quant.ggml() {
            Some(ggml) => {
                quantized_bytes(self.block_matrices, ggml, quant.bits_per_weight(), cpu)
                    + (self.top_matrices + self.vectors) * 4
            }
            None => self.total() * dtype.size_in_bytes() as u64,
        }
    }
}

/// `params` weights quantized at `bits_per_weight` (of the file: mixes
/// included), plus on the CPU the copy candle repacks `ggml` into.
fn quantized_bytes(params: u64, ggml: GgmlDType, bits_per_weight: Option<f64>, cpu: bool) -> u64 {
    let bytes = params as f64 * bits_per_weight.expect("a GGUF type has bits per weight") / 8.0;
    (bytes * (1.0 + cpu_repack_overhead(ggml, cpu))) as u64
}

/// T5's encoder parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct T5Params {
    pub embedding: u64,
    pub matrices: u64,
    pub vectors: u64,
    pub heads: u64,
}

impl T5Params {
    pub fn of(c: &t5::Config) -> Self {
        let (d, inner, ff) = (
            c.d_model as u64,
            (c.num_heads * c.d_kv) as u64,
            c.d_ff as u64,
        );
        let gated = if c.feed_forward_proj.gated { 3 } else { 2 };
        let layers = c.num_layers as u64;
        Self {
            embedding: c.vocab_size as u64 * d,
            matrices: layers * (4 * d * inner + gated * d * ff)
                + (c.relative_attention_num_buckets * c.num_heads) as u64,
            vectors: layers * 2 * d + d,
            heads: c.num_heads as u64,
        }
    }

    /// In memory. GGUF: the matrices quantized (city96's real files give the
    /// bits per weight, mixes included; on the CPU, plus candle's repacked
    /// copy), the embedding widened to F32.
    pub fn resident_bytes(&self, quant: T5Quant, dtype: DType, cpu: bool) -> u64 {
        match quant.ggml() {
            Some(ggml) => {
                quantized_bytes(self.matrices, ggml, quant.bits_per_weight(), cpu)
                    + (self.embedding + self.vectors) * 4
            }
            None => (self.embedding + self.matrices + self.vectors) * dtype.size_in_bytes() as u64,
        }
    }

    /// Loading a GGUF with llama.cpp names holds the renamed file in memory
    /// while candle reads it (see `gguf::renamed`).
    pub fn load_extra_bytes(&self, quant: T5Quant) -> u64 {
        quant.bits_per_weight().map_or(0, |bpw| {
            ((self.matrices + self.embedding) as f64 * bpw / 8.0) as u64
        })
    }
}

/// What candle 0.11's CPU matmul adds to a quantized weight, per byte of it.
///
/// On x86_64 with AVX2, candle repacks Q4K weights (into tiles 4/3 their
/// size), Q6K weights used in batched matmuls (FLUX's and T5's always are;
/// 1.52×) and, on CPUs with AVX-VNNI unless `MISTRALRS_FORCE_AVX2=1`, Q8_0
/// weights (1×), on first use, and keeps the copy beside the original
/// (candle-core `quantized/repack_x86.rs`). aarch64 repacks Q4_0, Q4K, Q5K,
/// Q6K and Q8_0 likewise; its sizes are assumed equal to the originals'.
pub fn cpu_repack_overhead(dtype: GgmlDType, cpu: bool) -> f64 {
    if !cpu {
        return 0.0;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return 0.0;
        }
        let env = |k: &str| std::env::var(k).as_deref() == Ok("1");
        let avx512_vnni = std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vnni");
        let vnni = !env("MISTRALRS_FORCE_AVX2")
            && (avx512_vnni
                || env("MISTRALRS_FORCE_AVXVNNI")
                || std::arch::is_x86_feature_detected!("avxvnni"));
        match dtype {
            GgmlDType::Q4K => 3072.0 / 2304.0,
            GgmlDType::Q6K => 5120.0 / 3360.0,
            GgmlDType::Q8_0 if vnni => 1.0,
            _ => 0.0,
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        match dtype {
            GgmlDType::Q4_0
            | GgmlDType::Q4K
            | GgmlDType::Q5K
            | GgmlDType::Q6K
            | GgmlDType::Q8_0 => 1.0,
            _ => 0.0,
        }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = dtype;
        0.0
    }
}

/// Asks candle to keep Q8_0 weights compact on the CPU: on CPUs with
/// AVX-VNNI candle 0.11 keeps a repacked copy of them beside the originals,
/// doubling their memory (12.7 GB more for FLUX's transformer), while its
/// AVX2 tier does not. candle reads the switch (`MISTRALRS_FORCE_AVX2`) from
/// the environment once, so call this first thing in `main`, before any
/// thread starts. A choice already in the environment stays.
pub fn keep_q8_0_compact() {
    #[cfg(target_arch = "x86_64")]
    if std::env::var_os("MISTRALRS_FORCE_AVX2").is_none()
        && std::env::var_os("MISTRALRS_FORCE_AVXVNNI").is_none()
    {
        std::env::set_var("MISTRALRS_FORCE_AVX2", "1");
    }
}

/// CLIP's text model, in `dtype`.
pub fn clip_bytes(c: &ClipTextConfig, dtype: DType) -> u64 {
    let (w, i) = (c.embed_dim as u64, c.intermediate_size as u64);
    let per_layer = 4 * w * w + 4 * w + 2 * w * i + i + w + 4 * w;
    let params = c.vocab_size as u64 * w
        + c.max_position_embeddings as u64 * w
        + c.num_hidden_layers as u64 * per_layer
        + 2 * w;
    params * dtype.size_in_bytes() as u64
}

/// The VAE's decoder, in `dtype`: its 3×3 convolutions dominate.
pub fn decoder_bytes(c: &autoencoder::Config, dtype: DType) -> u64 {
    let chans: Vec<u64> = c.ch_mult.iter().map(|m| (c.ch * m) as u64).collect();
    let top = *chans.last().expect("at least one level");
    let conv = |a: u64, b: u64| 9 * a * b + b;
    let mut params = conv(c.z_channels as u64, top) + 2 * 2 * conv(top, top) + 4 * top * top;
    let mut prev = top;
    for &ch in chans.iter().rev() {
        for _ in 0..=c.num_res_blocks {
            params += conv(prev, ch) + conv(ch, ch) + prev * ch;
            prev = ch;
        }
        params += conv(ch, ch);
    }
    params += conv(chans[0], c.out_ch as u64);
    params * dtype.size_in_bytes() as u64
}

/// The model's sizes, from its configs.
#[derive(Clone, Debug)]
pub struct ModelSize {
    pub flux: FluxParams,
    pub flux_heads: u64,
    pub flux_width: u64,
    pub t5: T5Params,
    pub clip_params_bytes_f32: u64,
    pub decoder_bytes_f32: u64,
    pub vae_top_channels: u64,
    pub vae_first_channels: u64,
}

impl ModelSize {
    pub fn of(
        flux: &model::Config,
        t5: &t5::Config,
        clip: &ClipTextConfig,
        vae: &autoencoder::Config,
    ) -> Self {
        Self {
            flux: FluxParams::of(flux),
            flux_heads: flux.num_heads as u64,
            flux_width: flux.hidden_size as u64,
            t5: T5Params::of(t5),
            clip_params_bytes_f32: clip_bytes(clip, DType::F32),
            decoder_bytes_f32: decoder_bytes(vae, DType::F32),
            vae_top_channels: (vae.ch * vae.ch_mult.last().copied().unwrap_or(1)) as u64,
            vae_first_channels: (vae.ch * vae.ch_mult.first().copied().unwrap_or(1)) as u64,
        }
    }
}

impl ModelSize {
    /// From the config files' bytes, in the order transformer, T5, CLIP, VAE;
    /// each named by its source in errors.
    pub fn from_configs(files: [(&ConfigSource, &[u8]); 4]) -> Result<Self, FluxError> {
        let [flux, t5, clip, vae] = files;
        Ok(Self::of(
            &config::flux_config(flux.0, flux.1)?,
            &config::t5_config(t5.0, t5.1)?,
            &config::clip_text_config(clip.0, clip.1)?,
            &config::vae_config(vae.0, vae.1)?,
        ))
    }
}

/// The real FLUX.1-schnell's config files under `tests/fixtures` (verbatim
/// copies; CLIP's reconstructed), in `from_configs`' order.
pub const REAL_CONFIGS: [&str; 4] = [
    "hub/black-forest-labs/FLUX.1-schnell/transformer/config.json",
    "hub/google/t5-v1_1-xxl/config.json",
    "reconstructed/flux-text_encoder-config.json",
    "hub/black-forest-labs/FLUX.1-schnell/vae/config.json",
];

/// What an engine will do, for the estimate.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    /// CLIP's and the VAE's dtype (and the full-precision transformer's).
    pub dtype: DType,
    pub width: u32,
    pub height: u32,
    pub low_memory: bool,
    /// On the CPU (candle repacks some quantized types there).
    pub cpu: bool,
    /// The VAE decodes in tiles (`vae::Decoder::decode_tiled`).
    pub tiled_vae: bool,
    /// An edit: the VAE's encoder runs on the image first.
    pub edit: bool,
    /// Images in each transformer pass (at least 1).
    pub batch: u32,
}

/// The peak memory of one choice of weights, in bytes.
pub fn estimate_peak(size: &ModelSize, plan: (Quant, T5Quant), work: &Workload) -> u64 {
    let (quant, t5q) = plan;
    let s = work.dtype.size_in_bytes() as u64;
    let scale = |bytes_f32: u64| bytes_f32 / 4 * s;
    let always = scale(size.clip_params_bytes_f32) + scale(size.decoder_bytes_f32);
    let flux = size.flux.resident_bytes(quant, work.dtype, work.cpu);
    // T5 while it encodes (candle repacks on first use), and while it loads
    // (the renamed file in memory; nothing repacked yet).
    let t5 = size.t5.resident_bytes(t5q, work.dtype, work.cpu);
    let t5_load = size.t5.resident_bytes(t5q, work.dtype, false) + size.t5.load_extra_bytes(t5q);

    // The quantized transformer computes in F32.
    let flux_s = if quant == Quant::None { s } else { 4 };
    let (w, h) = (work.width as u64, work.height as u64);
    let tokens = (w / 16) * (h / 16) + T5_TOKENS;
    // The attention's scores and their softmax live together, in row blocks
    // of at most `SCORE_BYTES` each (`super::attention`); beside them a few
    // of the single blocks' widest activations (linear1: 3h for q, k, v and
    // 4h for the MLP).
    let scores = |bytes: u64| 2 * bytes.min(SCORE_BYTES as u64);
    let mlp_wide = 7 * size.flux_width;
    // A batch's images each have their own activations; the scores' row
    // blocks span every image and head, under the same cap.
    let batch = u64::from(work.batch.max(1));
    let flux_act = scores(batch * size.flux_heads * tokens * tokens * flux_s)
        + batch * 4 * tokens * mlp_wide * flux_s;
    let t5_act = 3 * size.t5.heads * T5_TOKENS * T5_TOKENS * 4;
    // The VAE: its mid-block attention at latent size, or about eight
    // full-resolution tensors as wide as its last block (norms, activations
    // and convolutions each make one; the tiny model at 2048², 32 channels,
    // peaked at 4.4 GB RSS). Tiled, that of one tile, plus the blended
    // image's sums and weights in F32.
    let vae_act = if work.tiled_vae {
        let tile = (vae::TILE * 8) as u64;
        let (tw, th) = (w.min(tile), h.min(tile));
        vae_activations(size, tw, th, s) + 4 * 4 * w * h
    } else {
        vae_activations(size, w, h, s)
    };

    // An edit loads the encoder for its image, beside everything else, and
    // frees it: its weights (fewer than the decoder's: 34 M parameters
    // against 50 M in FLUX's; planned as many) and activations. On the CPU
    // in f32 the encoder is `vae_cpu`'s, which, as its decoder, makes no
    // unfolded copies.
    let encode = if work.edit {
        let owned = work.cpu && work.dtype == DType::F32;
        scale(size.decoder_bytes_f32)
            + encoder_activations(size, w, h, s, if owned { 8 } else { 12 })
    } else {
        0
    };

    let peak = if work.low_memory {
        // One part at a time: T5, CLIP, an edit's encoder, the
        // transformer, the decoder.
        let clip = scale(size.clip_params_bytes_f32);
        let decoder = scale(size.decoder_bytes_f32);
        [
            t5_load.max(t5 + t5_act),
            clip,
            flux + flux_act,
            decoder + vae_act,
            encode,
        ]
        .into_iter()
        .max()
        .expect("not empty")
    } else {
        let loading = always + t5_load;
        let running = always + t5 + flux + flux_act.max(t5_act).max(vae_act).max(encode);
        loading.max(running)
    };
    peak + OVERHEAD
}

/// The VAE decoder's activations for a `w`×`h` image in `s`-byte elements.
fn vae_activations(size: &ModelSize, w: u64, h: u64, s: u64) -> u64 {
    let latent = (w / 8) * (h / 8);
    let scores = 2 * (latent * latent * s).min(SCORE_BYTES as u64);
    (scores + latent * size.vae_top_channels * 4 * s).max(8 * size.vae_first_channels * w * h * s)
        + 2 * size.vae_top_channels * latent * s
}

/// The VAE encoder's activations for a `w`×`h` image: `maps` full-resolution
/// tensors as wide as its first block (candle's 3×3 convolutions unfold
/// their input ninefold (im2col) beside their input and output: 12; the
/// channels-last encoder's, as the decoder's: 8); or the mid-block attention
/// at latent size, as the decoder's.
fn encoder_activations(size: &ModelSize, w: u64, h: u64, s: u64, maps: u64) -> u64 {
    let latent = (w / 8) * (h / 8);
    let scores = 2 * (latent * latent * s).min(SCORE_BYTES as u64);
    (scores + latent * size.vae_top_channels * 4 * s)
        .max(maps * size.vae_first_channels * w * h * s)
}

/// Memory the device has to give, and where that figure came from.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryBudget {
    pub bytes: u64,
    /// "available RAM", "free memory on cuda:0", "--memory-budget".
    pub source: String,
}

impl MemoryBudget {
    /// Measures the device: free GPU memory on CUDA, available RAM on the CPU
    /// and on Metal (whose memory is the system's). Blocking.
    pub fn measure(device: DeviceChoice) -> Result<Self, FluxError> {
        match device {
            DeviceChoice::Cpu | DeviceChoice::Metal => {
                let mut sys = sysinfo::System::new();
                sys.refresh_memory();
                let available = sys.available_memory();
                // In a container with a memory limit, that limit is what the
                // kernel enforces: the headroom is the limit less the group's
                // resident memory (its page cache can be reclaimed).
                let in_cgroup = sys
                    .cgroup_limits()
                    .filter(|c| c.total_memory < sys.total_memory())
                    .map(|c| c.total_memory.saturating_sub(c.rss));
                Ok(match in_cgroup {
                    Some(headroom) if headroom < available => Self {
                        bytes: headroom,
                        source: "the container's memory limit".into(),
                    },
                    _ => Self {
                        bytes: available,
                        source: "available RAM".into(),
                    },
                })
            }
            DeviceChoice::Cuda(_) => cuda_free(device),
        }
    }
}

#[cfg(feature = "cuda")]
fn cuda_free(device: DeviceChoice) -> Result<MemoryBudget, FluxError> {
    let opened = device.open()?;
    let cuda = opened
        .as_cuda_device()
        .map_err(|e| FluxError::Device(format!("{device}: {e}")))?;
    let (free, _total) = cuda
        .cuda_stream()
        .context()
        .mem_get_info()
        .map_err(|e| FluxError::Device(format!("{device}: cannot read free memory: {e}")))?;
    Ok(MemoryBudget {
        bytes: free as u64,
        source: format!("free memory on {device}"),
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda_free(device: DeviceChoice) -> Result<MemoryBudget, FluxError> {
    // Says how to build with CUDA.
    device.open().map(|_| unreachable!("no CUDA in this build"))
}

fn gb(bytes: u64) -> String {
    format!("{:.1} GB", bytes as f64 / GB)
}

/// `--quant auto`: full precision if it fits, else the largest GGUF type
/// that does. T5's type is `t5` if given, else the nearest to the
/// transformer's.
pub fn choose(
    size: &ModelSize,
    work: &Workload,
    budget: &MemoryBudget,
    t5: Option<T5Quant>,
) -> Result<QuantPlan, FluxError> {
    let t5_for = |q: Quant| t5.unwrap_or_else(|| T5Quant::nearest(q));
    let at = format!("at {}×{}", work.width, work.height);
    let mode = if work.low_memory { ", low-memory" } else { "" };
    let candidates = Quant::all();
    let mut larger: Option<(Quant, u64)> = None;
    for quant in candidates {
        let need = estimate_peak(size, (quant, t5_for(quant)), work);
        if need <= budget.bytes {
            let beaten = larger
                .map(|(q, n)| format!("; {q} would need {}", gb(n)))
                .unwrap_or_default();
            return Ok(QuantPlan {
                transformer: quant,
                t5: t5_for(quant),
                reason: format!(
                    "auto: {quant} (T5 {}) needs about {} {at}{mode}, and {} has {}{beaten}",
                    t5_for(quant),
                    gb(need),
                    budget.source,
                    gb(budget.bytes)
                ),
            });
        }
        larger = Some((quant, need));
    }
    let (smallest, need) = larger.expect("candidates are not empty");
    let hint = if work.low_memory {
        " Try"
    } else {
        " Try --low-memory,"
    };
    Err(FluxError::Memory(format!(
        "no weights fit: even {smallest} needs about {} {at}{mode}, but {} has {}.{hint} a smaller image, or an explicit --quant",
        gb(need),
        budget.source,
        gb(budget.bytes)
    )))
}

/// An explicit choice, with its estimate for the record.
pub fn fixed(size: &ModelSize, work: &Workload, quant: Quant, t5: Option<T5Quant>) -> QuantPlan {
    let t5 = t5.unwrap_or_else(|| T5Quant::nearest(quant));
    let need = estimate_peak(size, (quant, t5), work);
    QuantPlan {
        transformer: quant,
        t5,
        reason: format!(
            "--quant {quant} (T5 {t5}) as asked; it needs about {} at {}×{}",
            gb(need),
            work.width,
            work.height
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

    /// FLUX.1-schnell's own configs (verbatim copies; CLIP's reconstructed).
    fn real() -> ModelSize {
        let read = |p: &str| std::fs::read(format!("{FIXTURES}/{p}")).unwrap();
        let paths = REAL_CONFIGS.map(|p| (ConfigSource(p.into()), read(p)));
        let [a, b, c, d] = &paths;
        ModelSize::from_configs([(&a.0, &a.1), (&b.0, &b.1), (&c.0, &c.1), (&d.0, &d.1)]).unwrap()
    }

    fn work(width: u32, low_memory: bool) -> Workload {
        Workload {
            dtype: DType::F32,
            width,
            height: width,
            low_memory,
            // Planned as for a GPU with F32 activations: the CPU's repacked
            // copies depend on the machine's instruction set.
            cpu: false,
            tiled_vae: false,
            edit: false,
            batch: 1,
        }
    }

    fn budget(gb: f64) -> MemoryBudget {
        MemoryBudget {
            bytes: (gb * GB) as u64,
            source: "a test budget".into(),
        }
    }

    #[test]
    fn parameter_counts_match_the_real_files() {
        let size = real();
        // 776 tensors, 11.89 B parameters (shared/reference/gguf.md §1.2).
        assert_eq!(size.flux.total(), 11_891_178_560);
        assert_eq!(size.flux.block_matrices, 11_834_228_736);
        assert_eq!(size.flux.top_matrices, 53_870_592);
        // city96's Q8_0 and Q4_1 files hold exactly this much tensor data
        // (their sizes less the 54,048-byte header).
        assert_eq!(size.flux.gguf_bytes(Quant::Q8_0), Some(12_687_767_680));
        assert_eq!(size.flux.gguf_bytes(Quant::Q4_1), Some(7_510_292_608));
        // T5-XXL's 2-D weights, embedding included, bias table not (§2.1).
        let t5 = size.t5;
        assert_eq!(t5.matrices - 32 * 64 + t5.embedding, 4_762_107_904);
        // CLIP-L's text model: about 123 M parameters; the VAE decoder about 50 M.
        let clip = size.clip_params_bytes_f32 / 4;
        assert!((120_000_000..126_000_000).contains(&clip), "{clip}");
        let decoder = size.decoder_bytes_f32 / 4;
        assert!((45_000_000..56_000_000).contains(&decoder), "{decoder}");
    }

    #[test]
    fn auto_takes_full_precision_where_it_fits_else_the_largest_type_that_does() {
        let size = real();
        let pick = |gb: f64, side: u32, low: bool| {
            choose(&size, &work(side, low), &budget(gb), None).map(|p| (p.transformer, p.t5))
        };
        // F32 on the CPU needs some 75 GB: a big server runs it.
        assert_eq!(
            pick(128.0, 1024, false).unwrap(),
            (Quant::None, T5Quant::None)
        );
        // This project's 24 GB machines: Q8_0 at 512², less at 1024².
        let at_512 = pick(22.0, 512, false).unwrap();
        let at_1024 = pick(22.0, 1024, false).unwrap();
        assert_eq!(at_512.0, Quant::Q8_0);
        let order = |q: Quant| Quant::GGUF.iter().position(|g| *g == q).unwrap();
        assert!(order(at_1024.0) >= order(at_512.0), "{at_1024:?}");
        // A 16 GB laptop: low-memory mode affords a larger type.
        let resident = pick(12.0, 512, false).unwrap();
        let low = pick(12.0, 512, true).unwrap();
        assert!(order(low.0) < order(resident.0), "{low:?} vs {resident:?}");
        assert_eq!(low.1, T5Quant::nearest(low.0));
        // Nothing fits: the error says what the smallest needs and what there is.
        let err = pick(3.0, 1024, false).unwrap_err().to_string();
        assert!(
            err.contains("q2_k") && err.contains("3.0 GB") && err.contains("--low-memory"),
            "{err}"
        );
        // A T5 type given by hand is kept.
        let plan = choose(&size, &work(512, false), &budget(22.0), Some(T5Quant::Q3KS)).unwrap();
        assert_eq!(plan.t5, T5Quant::Q3KS);
        assert!(plan.reason.contains("a test budget"), "{}", plan.reason);
    }

    #[test]
    fn repacked_copies_count_on_the_cpu_only() {
        for dtype in [
            GgmlDType::Q4_1,
            GgmlDType::Q5_1,
            GgmlDType::Q3K,
            GgmlDType::Q2K,
        ] {
            assert_eq!(cpu_repack_overhead(dtype, true), 0.0, "{dtype:?}");
        }
        assert_eq!(cpu_repack_overhead(GgmlDType::Q4K, false), 0.0);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            assert_eq!(cpu_repack_overhead(GgmlDType::Q4K, true), 4.0 / 3.0);
            let size = real();
            let on = |cpu| size.t5.resident_bytes(T5Quant::Q4KS, DType::F32, cpu);
            assert!(
                on(true) > on(false) + 3_000_000_000,
                "{} {}",
                on(true),
                on(false)
            );
        }
    }

    #[test]
    fn the_peak_grows_with_the_image_and_shrinks_with_low_memory() {
        let size = real();
        let plan = (Quant::Q4_0, T5Quant::Q4KS);
        let small = estimate_peak(&size, plan, &work(256, false));
        let large = estimate_peak(&size, plan, &work(1024, false));
        let low = estimate_peak(&size, plan, &work(256, true));
        assert!(large > small + 2_000_000_000, "{small} {large}");
        assert!(low + 2_000_000_000 < small, "{low} {small}");
        // Q4_0 resident at 256²: the transformer (6.8 GB), T5 (2.7 GB + its
        // F32 embedding), CLIP and the VAE: between 10 and 13 GB.
        assert!((10e9..13e9).contains(&(small as f64)), "{small}");
    }

    #[test]
    fn a_batch_takes_as_many_images_as_fit_and_an_edit_plans_its_encoder() {
        let plan = (Quant::Q4_0, T5Quant::Q4KS);
        let sizing = |gb: f64| Sizing {
            size: real(),
            plan,
            work: work(1024, false),
            budget: budget(gb),
        };
        let s = sizing(0.0);
        let need: Vec<u64> = (1..=4)
            .map(|b| s.need(1024, 1024, false, false, b))
            .collect();
        // Until the transformer's activations outgrow the VAE's (decoded one
        // image at a time), a batch costs nothing more; then each image does.
        assert!(
            need.windows(2).all(|p| p[1] >= p[0]) && need[2] > need[1],
            "{need:?}"
        );
        // A budget between two images' need and three's: batches of two.
        let between = (need[1] + need[2]) as f64 / 2.0 / GB;
        let s = sizing(between);
        assert_eq!(s.batch(1024, 1024, false, 4, VaeDecode::Whole), 2);
        assert_eq!(s.batch(1024, 1024, false, 1, VaeDecode::Whole), 1);
        assert_eq!(
            sizing(1e3).batch(1024, 1024, false, 10, VaeDecode::Whole),
            10
        );
        // An edit runs the encoder at full resolution: it needs more.
        assert!(s.need(1024, 1024, false, true, 1) > s.need(1024, 1024, false, false, 1));
    }
}

/// What the engine planned for: the model, the weights, and the memory
/// measured before anything loaded. Requests are checked against it.
#[derive(Clone, Debug)]
pub struct Sizing {
    pub size: ModelSize,
    pub plan: (Quant, T5Quant),
    pub work: Workload,
    pub budget: MemoryBudget,
}

impl Sizing {
    /// The estimated peak for `batch` `width`×`height` images in each pass
    /// (an edit's, with `edit`).
    pub fn need(&self, width: u32, height: u32, tiled_vae: bool, edit: bool, batch: u32) -> u64 {
        let work = Workload {
            width,
            height,
            tiled_vae,
            edit,
            batch,
            ..self.work
        };
        estimate_peak(&self.size, self.plan, &work)
    }

    /// The most a request may need: the budget, or what the planned size
    /// needs if that is more (an explicit `--quant` may plan beyond the
    /// budget; requests up to the planned size then run as asked).
    pub fn limit(&self) -> u64 {
        self.budget
            .bytes
            .max(self.need(self.work.width, self.work.height, false, false, 1))
    }

    /// How an image will be decoded: whole if it fits, else in tiles if
    /// that fits; an image that fits neither way is refused, before it runs.
    pub fn check(&self, width: u32, height: u32, edit: bool) -> Result<VaeDecode, FluxError> {
        if let Some(decode) = self.fits(width, height, edit) {
            return Ok(decode);
        }
        let need = self.need(width, height, true, edit, 1);
        let largest = match self.largest_square() {
            Some(side) => format!("the largest square image that fits is {side}×{side}"),
            None => "no image size fits".into(),
        };
        Err(FluxError::TooLarge {
            width,
            height,
            reason: format!(
                "it needs about {}, more than the {} limit ({} when the model was planned); {largest}",
                gb(need),
                gb(self.limit()),
                self.budget.source,
            ),
        })
    }

    /// The largest side (a multiple of 16) of a square image that fits,
    /// decoded in tiles if need be.
    pub fn largest_square(&self) -> Option<u32> {
        (super::MIN_SIDE..=super::MAX_SIDE)
            .step_by(16)
            .take_while(|&side| self.fits(side, side, false).is_some())
            .last()
    }

    /// How many of `n` images may share each transformer pass: as many as
    /// fit, decoded as `decode` says (at least one: that one was checked).
    pub fn batch(&self, width: u32, height: u32, edit: bool, n: u32, decode: VaeDecode) -> u32 {
        let tiled = decode == VaeDecode::Tiled;
        (1..=n.max(1))
            .rev()
            .find(|&b| self.need(width, height, tiled, edit, b) <= self.limit())
            .unwrap_or(1)
    }

    fn fits(&self, width: u32, height: u32, edit: bool) -> Option<VaeDecode> {
        let limit = self.limit();
        if self.need(width, height, false, edit, 1) <= limit {
            Some(VaeDecode::Whole)
        } else if self.need(width, height, true, edit, 1) <= limit {
            Some(VaeDecode::Tiled)
        } else {
            None
        }
    }
}

/// How the VAE decodes one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VaeDecode {
    Whole,
    /// In overlapping tiles, when the whole would not fit.
    Tiled,
}
