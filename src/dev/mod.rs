//! Random-weight FLUX.1-schnell models: a developer tool for tests, offline
//! demos and benchmarks, not part of the library's API.
//!
//! The files have the real repositories, file names, tensor names, dtypes and
//! config keys, so they load through exactly the code path of the real
//! weights: safetensors as the FLUX repo has them, and GGUF as city96's repos
//! have them (per-tensor types included). Three sizes: `tiny` (toy, for
//! tests), `bench` (mid-size, for CPU benchmarks) and `real` (the real
//! architecture and sizes, for honest memory and speed figures). Their images
//! are noise. The weights are seeded, so the files are the same every time.

mod gguf;
mod random;
mod safetensors;
pub(crate) mod tokenizers;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::DType;
use candle_nn::Init;
use candle_transformers::models::clip::{self, text_model::ClipTextTransformer};
use candle_transformers::models::flux::autoencoder::AutoEncoder;
use candle_transformers::models::t5;
use serde_json::json;

use crate::flux::transformer::Flux;
use crate::flux::{
    clip_text_config, flux_config, t5_config, vae_config, ConfigSource, Quant, T5Quant,
    TextEncoders, FLUX_SCHNELL,
};
use crate::hub::HubFile;

/// The writer's errors: I/O, candle, tokenizers and serialisation alike.
pub type DevResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The sizes of a random-weight model. Some couplings are fixed by candle's
/// sampler: 64 input channels (16 latent channels in 2×2 patches),
/// `vec_in_dim` = CLIP width, `context_in_dim` = T5 `d_model`, rotary axes
/// summing to the head size, and VAE channels in multiples of 32 (group
/// norm). K-quant GGUF types need every quantized matrix's input width to be
/// a multiple of 256: the transformer's width and T5's `d_model`, inner
/// width and `d_ff`.
#[derive(Clone, Debug)]
pub struct ModelSizes {
    pub heads: usize,
    pub head_dim: usize,
    pub axes_dims_rope: [usize; 3],
    pub double_blocks: usize,
    pub single_blocks: usize,
    pub t5_d_model: usize,
    pub t5_layers: usize,
    pub t5_heads: usize,
    pub t5_d_ff: usize,
    /// T5's vocabulary; by default the tiny tokenizer's.
    pub t5_vocab: Option<usize>,
    pub clip_width: usize,
    pub clip_layers: usize,
    pub clip_heads: usize,
    pub clip_intermediate: usize,
    /// CLIP's vocabulary; by default the tiny tokenizer's.
    pub clip_vocab: Option<usize>,
    pub vae_channels: [usize; 4],
    pub vae_res_blocks: usize,
}

impl ModelSizes {
    /// Toy sizes (a 256-wide transformer, one block of each kind): a
    /// generation at 256×256 takes well under a second.
    pub fn tiny() -> Self {
        Self {
            heads: 2,
            head_dim: 128,
            axes_dims_rope: [16, 56, 56],
            double_blocks: 1,
            single_blocks: 1,
            t5_d_model: 256,
            t5_layers: 2,
            t5_heads: 4,
            t5_d_ff: 512,
            t5_vocab: None,
            clip_width: 32,
            clip_layers: 2,
            clip_heads: 4,
            clip_intermediate: 64,
            clip_vocab: None,
            vae_channels: [32, 32, 32, 32],
            vae_res_blocks: 1,
        }
    }

    /// For CPU benchmarks: a 768-wide transformer with 2 double and 4 single
    /// blocks, a T5-small-sized encoder, CLIP-L's text model and the real VAE.
    pub fn bench() -> Self {
        Self {
            heads: 12,
            head_dim: 64,
            axes_dims_rope: [8, 28, 28],
            double_blocks: 2,
            single_blocks: 4,
            t5_d_model: 512,
            t5_layers: 6,
            t5_heads: 8,
            t5_d_ff: 1024,
            t5_vocab: None,
            clip_width: 768,
            clip_layers: 12,
            clip_heads: 12,
            clip_intermediate: 3072,
            clip_vocab: None,
            vae_channels: [128, 256, 512, 512],
            vae_res_blocks: 2,
        }
    }

    /// FLUX.1-schnell's real architecture: 3072 wide, 19 double and 38
    /// single blocks; T5-XXL's encoder; CLIP-L's text model; the real VAE.
    pub fn real() -> Self {
        Self {
            heads: 24,
            head_dim: 128,
            axes_dims_rope: [16, 56, 56],
            double_blocks: 19,
            single_blocks: 38,
            t5_d_model: 4096,
            t5_layers: 24,
            t5_heads: 64,
            t5_d_ff: 10240,
            t5_vocab: Some(32128),
            clip_width: 768,
            clip_layers: 12,
            clip_heads: 12,
            clip_intermediate: 3072,
            clip_vocab: Some(49408),
            vae_channels: [128, 256, 512, 512],
            vae_res_blocks: 2,
        }
    }
}

/// `--size` of `schnell dev random-models`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    Tiny,
    Bench,
    Real,
}

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tiny" => Ok(Size::Tiny),
            "bench" => Ok(Size::Bench),
            "real" => Ok(Size::Real),
            other => Err(format!("unknown size {other:?}: use tiny, bench or real")),
        }
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Size::Tiny => "tiny",
            Size::Bench => "bench",
            Size::Real => "real",
        })
    }
}

/// What to write.
#[derive(Clone, Debug)]
pub struct WriteOptions {
    pub sizes: ModelSizes,
    /// The transformer's files: `none` is the BF16 safetensors.
    pub quants: Vec<Quant>,
    /// T5's files: `none` is the FLUX repo's BF16 shards.
    pub t5_quants: Vec<T5Quant>,
    /// Also google's full T5 and openai's full CLIP (`--text-encoders original`).
    pub original: bool,
}

impl WriteOptions {
    /// Every type, both text-encoder sets.
    pub fn everything(sizes: ModelSizes) -> Self {
        Self {
            sizes,
            quants: Quant::all().collect(),
            t5_quants: T5Quant::all().collect(),
            original: true,
        }
    }

    /// `size`, in the types given (default: every type, but for `real` only
    /// Q4_0: each real file is gigabytes). T5 gets the type nearest each.
    /// `none` brings the safetensors, and below `real` also the
    /// `--text-encoders original` set (google's full T5 is 44.5 GB at real size).
    pub fn for_size(size: Size, quants: Option<Vec<Quant>>) -> Self {
        let sizes = match size {
            Size::Tiny => ModelSizes::tiny(),
            Size::Bench => ModelSizes::bench(),
            Size::Real => ModelSizes::real(),
        };
        let quants = match (size, quants) {
            (Size::Real, None) => vec![Quant::Q4_0],
            (_, None) => return Self::everything(sizes),
            (_, Some(quants)) => quants,
        };
        let mut t5_quants: Vec<T5Quant> = Vec::new();
        for t5 in quants.iter().map(|q| T5Quant::nearest(*q)) {
            if !t5_quants.contains(&t5) {
                t5_quants.push(t5);
            }
        }
        Self {
            sizes,
            original: size != Size::Real && quants.contains(&Quant::None),
            quants,
            t5_quants,
        }
    }
}

/// Every file of both text-encoder sets, in every type, at toy sizes, laid
/// out as `dir/<org>/<name>/<path>` for `schnell mirror --dir dir`. Returns
/// the files written. Blocking.
pub fn write_tiny_models(dir: &Path) -> DevResult<Vec<PathBuf>> {
    write_models(dir, &WriteOptions::everything(ModelSizes::tiny()))
}

/// Writes what `options` asks for under `dir`. Blocking; a real-size model
/// takes minutes and never more memory than a few tensors.
pub fn write_models(dir: &Path, options: &WriteOptions) -> DevResult<Vec<PathBuf>> {
    let z = &options.sizes;
    let mut written = Vec::new();
    let (t5_tok, tok_t5_vocab) = tokenizers::t5_tokenizer()?;
    let (clip_tok, tok_clip_vocab) = tokenizers::clip_tokenizer()?;
    let t5_vocab = z.t5_vocab.unwrap_or(tok_t5_vocab);
    let clip_vocab = z.clip_vocab.unwrap_or(tok_clip_vocab);
    let flux = FLUX_SCHNELL.files(TextEncoders::FluxRepo, Quant::None, T5Quant::None);
    let original = FLUX_SCHNELL.files(TextEncoders::Original, Quant::None, T5Quant::None);
    let path = |f: &HubFile| -> DevResult<PathBuf> {
        let p = dir.join(&f.repo).join(&f.path);
        std::fs::create_dir_all(p.parent().expect("has a parent"))?;
        Ok(p)
    };
    let put = |f: &HubFile, bytes: Vec<u8>, written: &mut Vec<PathBuf>| -> DevResult<()> {
        let p = path(f)?;
        std::fs::write(&p, bytes)?;
        written.push(p);
        Ok(())
    };

    // The transformer, in each type asked for.
    let transformer_config = json!({
        "_class_name": "FluxTransformer2DModel",
        "_note": "random weights for tests and benchmarks: images are noise",
        "attention_head_dim": z.head_dim,
        "axes_dims_rope": z.axes_dims_rope,
        "guidance_embeds": false,
        "in_channels": 64,
        "joint_attention_dim": z.t5_d_model,
        "num_attention_heads": z.heads,
        "num_layers": z.double_blocks,
        "num_single_layers": z.single_blocks,
        "patch_size": 1,
        "pooled_projection_dim": z.clip_width
    });
    let flux_cfg = flux_config(
        &ConfigSource("random transformer".into()),
        &json_bytes(&transformer_config),
    )?;
    let transformer = random::record(1, |vb| Flux::new(&flux_cfg, vb).map(drop))?;
    put(
        &flux.transformer_config,
        json_bytes(&transformer_config),
        &mut written,
    )?;
    for &quant in &options.quants {
        match quant.file() {
            None => {
                let p = path(&flux.transformer)?;
                safetensors::write(&p, &transformer, DType::BF16)?;
                written.push(p);
            }
            Some(file) => {
                let p = path(&file)?;
                gguf::write_flux(&p, &transformer, quant)?;
                written.push(p);
            }
        }
    }
    drop(transformer);

    // The autoencoder.
    let vae_json = json!({
        "_class_name": "AutoencoderKL",
        "_note": "random weights for tests and benchmarks: images are noise",
        "act_fn": "silu",
        "block_out_channels": z.vae_channels,
        // The real file's keys, so diffusers' loaders read it too.
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
        "force_upcast": true,
        "in_channels": 3,
        "latent_channels": 16,
        "latents_mean": null,
        "latents_std": null,
        "layers_per_block": z.vae_res_blocks,
        "mid_block_add_attention": true,
        "norm_num_groups": 32,
        "out_channels": 3,
        "sample_size": 1024,
        "scaling_factor": 0.3611,
        "shift_factor": 0.1159,
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
        "use_post_quant_conv": false,
        "use_quant_conv": false
    });
    let vae_cfg = vae_config(&ConfigSource("random vae".into()), &json_bytes(&vae_json))?;
    let ae = random::record(2, |vb| AutoEncoder::new(&vae_cfg, vb).map(drop))?;
    let p = path(&flux.vae)?;
    safetensors::write(&p, &ae, DType::F32)?;
    written.push(p);
    put(&flux.vae_config, json_bytes(&vae_json), &mut written)?;

    // T5: the FLUX repo's encoder-only BF16 shards, city96's GGUF files, and
    // google's full F32 model.
    let t5_config_json = |decoder: bool| {
        json!({
            "_note": "random weights for tests and benchmarks",
            "architectures": [if decoder { "T5ForConditionalGeneration" } else { "T5EncoderModel" }],
            "d_ff": z.t5_d_ff,
            "d_kv": z.t5_d_model / z.t5_heads,
            "d_model": z.t5_d_model,
            "decoder_start_token_id": 0,
            "dropout_rate": 0.1,
            "eos_token_id": 1,
            "feed_forward_proj": "gated-gelu",
            "initializer_factor": 1.0,
            "is_encoder_decoder": true,
            "layer_norm_epsilon": 1e-6,
            "model_type": "t5",
            "num_decoder_layers": z.t5_layers,
            "num_heads": z.t5_heads,
            "num_layers": z.t5_layers,
            "output_past": true,
            "pad_token_id": 0,
            "relative_attention_num_buckets": 32,
            "tie_word_embeddings": false,
            "vocab_size": t5_vocab
        })
    };
    let t5_cfg = t5_config(
        &ConfigSource("random t5".into()),
        &json_bytes(&t5_config_json(false)),
    )?;
    let mut encoder = random::record(3, |vb| {
        // The real checkpoint stores the embedding as `shared.weight`.
        vb.get((t5_vocab, z.t5_d_model), "shared.weight")?;
        t5::T5EncoderModel::load(vb, &t5_cfg).map(drop)
    })?;
    // Only `shared.weight`, as in the real file: the recorder also saw the
    // tied `encoder.embed_tokens.weight`, which would hold other values, and
    // transformers would read those where candle reads `shared.weight`.
    encoder.retain(|t| t.name != "encoder.embed_tokens.weight");
    for &quant in &options.t5_quants {
        match quant.file() {
            None => {
                let (a, b) = (path(&flux.t5_weights[0])?, path(&flux.t5_weights[1])?);
                let index = path(
                    flux.t5_index
                        .as_ref()
                        .expect("the FLUX repo's T5 is sharded"),
                )?;
                safetensors::write_sharded(&a, &b, &index, &encoder)?;
                written.extend([a, b, index]);
            }
            Some(file) => {
                let p = path(&file)?;
                gguf::write_t5(&p, &encoder, quant, z.t5_layers)?;
                written.push(p);
            }
        }
    }
    drop(encoder);
    put(
        &flux.t5_config,
        json_bytes(&t5_config_json(false)),
        &mut written,
    )?;
    put(&flux.t5_tokenizer, t5_tok.clone(), &mut written)?;

    // CLIP: the FLUX repo's text model (flat config).
    // Every key of the real `text_encoder/config.json`, so that other tools
    // load it too. Its special ids are the real file's (bos 0, eos 2, pad
    // 1): with eos 2 transformers pools at the largest id, the end token,
    // which the tiny vocabulary also puts last.
    let clip_text = json!({
        "_name_or_path": "openai/clip-vit-large-patch14",
        "_note": "random weights for tests and benchmarks",
        "architectures": ["CLIPTextModel"],
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "dropout": 0.0,
        "eos_token_id": 2,
        "hidden_act": "quick_gelu",
        "hidden_size": z.clip_width,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": z.clip_intermediate,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77,
        "model_type": "clip_text_model",
        "num_attention_heads": z.clip_heads,
        "num_hidden_layers": z.clip_layers,
        "pad_token_id": 1,
        "projection_dim": z.clip_width,
        "torch_dtype": "float16",
        "vocab_size": clip_vocab
    });
    let text_cfg = clip_text_config(&ConfigSource("random clip".into()), &json_bytes(&clip_text))?;
    let clip_text_weights = random::record(5, |vb| {
        ClipTextTransformer::new(vb.pp("text_model"), &text_cfg).map(drop)
    })?;
    let p = path(&flux.clip_weights)?;
    safetensors::write(&p, &clip_text_weights, DType::F16)?;
    written.push(p);
    put(&flux.clip_config, json_bytes(&clip_text), &mut written)?;
    // Both sets take CLIP's tokenizer from openai's repo.
    put(&flux.clip_tokenizer, clip_tok, &mut written)?;

    if options.original {
        let full_t5 = random::record(4, |vb| {
            vb.get((t5_vocab, z.t5_d_model), "shared.weight")?;
            t5::T5ForConditionalGeneration::load(vb, &t5_cfg).map(drop)
        })?;
        let p = path(&original.t5_weights[0])?;
        safetensors::write(&p, &full_t5, DType::F32)?;
        written.push(p);
        put(
            &original.t5_config,
            json_bytes(&t5_config_json(true)),
            &mut written,
        )?;
        put(&original.t5_tokenizer, t5_tok, &mut written)?;

        // openai's full CLIP: nested config, vision tower included.
        let clip_full = json!({
            "architectures": ["CLIPModel"],
            "_note": "random weights for tests and benchmarks",
            "projection_dim": z.clip_width,
            "logit_scale_init_value": 2.6592,
            "text_config": clip_text,
            "vision_config": {
                "hidden_act": "quick_gelu", "hidden_size": 32, "intermediate_size": 64,
                "num_attention_heads": 4, "num_hidden_layers": 1, "image_size": 32,
                "patch_size": 16, "projection_dim": z.clip_width, "num_channels": 3
            }
        });
        let vision = clip::vision_model::ClipVisionConfig {
            embed_dim: 32,
            activation: clip::text_model::Activation::QuickGelu,
            intermediate_size: 64,
            num_hidden_layers: 1,
            num_attention_heads: 4,
            projection_dim: z.clip_width,
            num_channels: 3,
            image_size: 32,
            patch_size: 16,
        };
        let full_cfg = clip::ClipConfig {
            text_config: text_cfg,
            vision_config: vision,
            logit_scale_init_value: 2.6592,
            image_size: 32,
        };
        let clip_model = random::record(6, |vb| {
            vb.get_with_hints((), "logit_scale", Init::Const(2.6592))?;
            clip::ClipModel::new(vb, &full_cfg).map(drop)
        })?;
        let p = path(&original.clip_weights)?;
        safetensors::write(&p, &clip_model, DType::F32)?;
        written.push(p);
        put(&original.clip_config, json_bytes(&clip_full), &mut written)?;
    }

    for org in std::fs::read_dir(dir)? {
        let org = org?.path();
        if !org.is_dir() {
            continue;
        }
        for repo in std::fs::read_dir(org)? {
            let readme = repo?.path().join("README.md");
            if !readme.exists() {
                std::fs::write(&readme, README)?;
                written.push(readme);
            }
        }
    }
    Ok(written)
}

/// Rewrites the GGUF file at `path` with its tensors renamed by `rename`
/// (others keep their names), for tests that break a file on purpose.
pub fn rename_gguf_tensors(path: &Path, rename: impl Fn(&str) -> Option<String>) -> DevResult<()> {
    let named = crate::flux::Named {
        file: HubFile::new("local/file", "model.gguf"),
        path: path.to_path_buf(),
    };
    let bytes = crate::flux::gguf::GgufFile::open(&named)?.renamed(rename)?;
    std::fs::write(path, bytes)?;
    Ok(())
}

const README: &str = "# Random-weight model\n\nWritten by `schnell dev random-models`: the real file names, tensor names, \
dtypes and config keys, with seeded random weights. Images made with it are noise; it exists to exercise \
schnell's download, loading and compute without the real weights.\n";

fn json_bytes(value: &serde_json::Value) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(value).expect("JSON values serialise");
    bytes.push(b'\n');
    bytes
}
