//! Tiny random-weight FLUX.1-schnell models for tests and offline demos.
//!
//! They have the real repositories, file names, tensor names and config keys,
//! at toy sizes, so they load through exactly the code path of the real
//! weights. Their images are noise: they exist to exercise the pipeline.
//!
//! The weights come from a seeded RNG, so the files are the same every time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{Init, VarBuilder, VarMap};
use candle_transformers::models::clip::{self, text_model::ClipTextTransformer};
use candle_transformers::models::flux::{autoencoder::AutoEncoder, model::Flux};
use candle_transformers::models::t5;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokenizers::Tokenizer;

use super::config::{self, ConfigSource};
use super::files::{TextEncoders, FLUX_SCHNELL};

/// The sizes of a random-weight model. Some couplings are fixed by candle's
/// sampler: 64 input channels (16 latent channels in 2×2 patches),
/// `vec_in_dim` = CLIP width, `context_in_dim` = T5 `d_model`, rotary axes
/// summing to the head size, and VAE channels in multiples of 32 (group norm).
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
    pub clip_width: usize,
    pub clip_layers: usize,
    pub clip_heads: usize,
    pub vae_channels: [usize; 4],
    pub vae_res_blocks: usize,
}

impl ModelSizes {
    /// Toy sizes: a generation at 256×256 takes well under a second.
    pub fn tiny() -> Self {
        Self {
            heads: 2,
            head_dim: 16,
            axes_dims_rope: [4, 6, 6],
            double_blocks: 1,
            single_blocks: 1,
            t5_d_model: 32,
            t5_layers: 2,
            t5_heads: 4,
            t5_d_ff: 64,
            clip_width: 32,
            clip_layers: 2,
            clip_heads: 4,
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
            clip_width: 768,
            clip_layers: 12,
            clip_heads: 12,
            vae_channels: [128, 256, 512, 512],
            vae_res_blocks: 2,
        }
    }
}

/// Writes every file of both text-encoder sets under `dir` at toy sizes, laid
/// out as `dir/<org>/<name>/<path>` for `schnell mirror --dir dir`. Returns the
/// files written. Blocking.
pub fn write_tiny_models(dir: &Path) -> TinyResult<Vec<PathBuf>> {
    write_models(dir, &ModelSizes::tiny())
}

/// As [`write_tiny_models`], at any sizes.
pub fn write_models(dir: &Path, z: &ModelSizes) -> TinyResult<Vec<PathBuf>> {
    let mut written = Vec::new();
    let (t5_d_model, clip_width, head_dim) = (z.t5_d_model, z.clip_width, z.head_dim);
    let (t5_tok, t5_vocab) = t5_tokenizer()?;
    let (clip_tok, clip_vocab) = clip_tokenizer()?;
    let flux = FLUX_SCHNELL.files(TextEncoders::FluxRepo);
    let original = FLUX_SCHNELL.files(TextEncoders::Original);
    let path = |f: &crate::hub::HubFile| dir.join(&f.repo).join(&f.path);
    let mut put = |f: &crate::hub::HubFile, bytes: Vec<u8>| -> TinyResult<()> {
        let p = path(f);
        std::fs::create_dir_all(p.parent().expect("has a parent"))?;
        std::fs::write(&p, bytes)?;
        written.push(p);
        Ok(())
    };

    // The transformer and the autoencoder, shared by both sets.
    let transformer_config = json!({
        "_class_name": "FluxTransformer2DModel",
        "_note": "tiny random weights for tests: images are noise",
        "attention_head_dim": head_dim,
        "axes_dims_rope": z.axes_dims_rope,
        "guidance_embeds": false,
        "in_channels": 64,
        "joint_attention_dim": t5_d_model,
        "num_attention_heads": z.heads,
        "num_layers": z.double_blocks,
        "num_single_layers": z.single_blocks,
        "patch_size": 1,
        "pooled_projection_dim": clip_width
    });
    let vae_config = json!({
        "_class_name": "AutoencoderKL",
        "_note": "tiny random weights for tests: images are noise",
        "act_fn": "silu",
        "block_out_channels": z.vae_channels,
        "in_channels": 3,
        "latent_channels": 16,
        "layers_per_block": z.vae_res_blocks,
        "norm_num_groups": 32,
        "out_channels": 3,
        "scaling_factor": 0.3611,
        "shift_factor": 0.1159,
        "use_post_quant_conv": false,
        "use_quant_conv": false
    });
    let flux_cfg = config::flux_config(
        &ConfigSource("tiny transformer".into()),
        json_bytes(&transformer_config).as_slice(),
    )?;
    let vae_cfg = config::vae_config(
        &ConfigSource("tiny vae".into()),
        json_bytes(&vae_config).as_slice(),
    )?;
    let transformer = build(1, |vb| Flux::new(&flux_cfg, vb).map(drop))?;
    put(&flux.transformer, safetensors(&transformer, DType::BF16)?)?;
    put(&flux.transformer_config, json_bytes(&transformer_config))?;
    let ae = build(2, |vb| AutoEncoder::new(&vae_cfg, vb).map(drop))?;
    put(&flux.vae, safetensors(&ae, DType::F32)?)?;
    put(&flux.vae_config, json_bytes(&vae_config))?;

    // T5: the FLUX repo's encoder-only BF16 shards, and google's full F32 model.
    let t5_config = |decoder: bool| {
        json!({
            "_note": "tiny random weights for tests",
            "architectures": [if decoder { "T5ForConditionalGeneration" } else { "T5EncoderModel" }],
            "d_ff": z.t5_d_ff,
            "d_kv": z.t5_d_model / z.t5_heads,
            "d_model": t5_d_model,
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
            "pad_token_id": 0,
            "relative_attention_num_buckets": 32,
            "tie_word_embeddings": false,
            "vocab_size": t5_vocab
        })
    };
    let t5_cfg = config::t5_config(
        &ConfigSource("tiny t5".into()),
        &json_bytes(&t5_config(false)),
    )?;
    let encoder = build(3, |vb| {
        // The real checkpoint stores the embedding as `shared.weight`.
        vb.get((t5_vocab, t5_d_model), "shared.weight")?;
        t5::T5EncoderModel::load(vb, &t5_cfg).map(drop)
    })?;
    let (shard_a, shard_b, index) =
        shard(&encoder, &flux.t5_weights[0].path, &flux.t5_weights[1].path)?;
    put(&flux.t5_weights[0], shard_a)?;
    put(&flux.t5_weights[1], shard_b)?;
    put(
        flux.t5_index
            .as_ref()
            .expect("the FLUX repo's T5 is sharded"),
        index,
    )?;
    put(&flux.t5_config, json_bytes(&t5_config(false)))?;
    let full_t5 = build(4, |vb| {
        vb.get((t5_vocab, t5_d_model), "shared.weight")?;
        t5::T5ForConditionalGeneration::load(vb, &t5_cfg).map(drop)
    })?;
    put(&original.t5_weights[0], safetensors(&full_t5, DType::F32)?)?;
    put(&original.t5_config, json_bytes(&t5_config(true)))?;
    put(&flux.t5_tokenizer, t5_tok.clone())?;
    put(&original.t5_tokenizer, t5_tok)?;

    // CLIP: the FLUX repo's text model (flat config) and openai's full model
    // (nested config, vision tower included).
    let clip_text = json!({
        "architectures": ["CLIPTextModel"],
        "_note": "tiny random weights for tests",
        "hidden_act": "quick_gelu",
        "hidden_size": clip_width,
        "intermediate_size": 2 * z.clip_width,
        "max_position_embeddings": 77,
        "num_attention_heads": z.clip_heads,
        "num_hidden_layers": z.clip_layers,
        "projection_dim": clip_width,
        "vocab_size": clip_vocab
    });
    let clip_full = json!({
        "architectures": ["CLIPModel"],
        "_note": "tiny random weights for tests",
        "projection_dim": clip_width,
        "logit_scale_init_value": 2.6592,
        "text_config": clip_text,
        "vision_config": {
            "hidden_act": "quick_gelu", "hidden_size": 32, "intermediate_size": 64,
            "num_attention_heads": 4, "num_hidden_layers": 1, "image_size": 32,
            "patch_size": 16, "projection_dim": clip_width, "num_channels": 3
        }
    });
    let text_cfg =
        config::clip_text_config(&ConfigSource("tiny clip".into()), &json_bytes(&clip_text))?;
    let clip_text_weights = build(5, |vb| {
        ClipTextTransformer::new(vb.pp("text_model"), &text_cfg).map(drop)
    })?;
    put(
        &flux.clip_weights,
        safetensors(&clip_text_weights, DType::F32)?,
    )?;
    put(&flux.clip_config, json_bytes(&clip_text))?;
    let vision = clip::vision_model::ClipVisionConfig {
        embed_dim: 32,
        activation: clip::text_model::Activation::QuickGelu,
        intermediate_size: 64,
        num_hidden_layers: 1,
        num_attention_heads: 4,
        projection_dim: clip_width,
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
    let clip_model = build(6, |vb| {
        vb.get_with_hints((), "logit_scale", Init::Const(2.6592))?;
        clip::ClipModel::new(vb, &full_cfg).map(drop)
    })?;
    put(
        &original.clip_weights,
        safetensors(&clip_model, DType::F32)?,
    )?;
    put(&original.clip_config, json_bytes(&clip_full))?;
    put(&original.clip_tokenizer, clip_tok)?;

    for repo in original.repos().into_iter().chain(flux.repos()) {
        let readme = dir.join(&repo).join("README.md");
        if !readme.exists() {
            std::fs::write(&readme, README)?;
            written.push(readme);
        }
    }
    Ok(written)
}

const README: &str = "# Tiny random-weight model\n\nWritten by `schnell dev tiny-models`: the real file names, tensor names and \
config keys at toy sizes, with seeded random weights. Images made with it are noise; it exists to exercise \
schnell's download and loading code without the real ~33 GB of weights.\n";

/// The writer's errors: I/O, candle, tokenizers and serialisation alike.
pub type TinyResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn json_bytes(value: &serde_json::Value) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(value).expect("JSON values serialise");
    bytes.push(b'\n');
    bytes
}

/// Runs a candle constructor against an empty `VarMap`, which records every
/// tensor it asks for under its real name, then fills them from a seeded RNG.
fn build(
    seed: u64,
    construct: impl FnOnce(VarBuilder) -> candle_core::Result<()>,
) -> candle_core::Result<VarMap> {
    let varmap = VarMap::new();
    construct(VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
    let data = varmap.data().lock().expect("not poisoned");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for name in names {
        let var = &data[name];
        let dims = var.dims().to_vec();
        let n: usize = dims.iter().product();
        // candle starts norm scales at zero; a zero scale would erase the signal.
        let is_scale = dims.len() <= 1
            && (name.ends_with("scale") || (name.contains("norm") && name.ends_with("weight")));
        let values: Vec<f32> = if is_scale {
            (0..n)
                .map(|_| 1.0 + rng.random_range(-0.1f32..0.1))
                .collect()
        } else if name.ends_with("bias") {
            (0..n).map(|_| rng.random_range(-0.02f32..0.02)).collect()
        } else {
            let fan_in: usize = dims.iter().skip(1).product::<usize>().max(1);
            let a = (1.0 / (fan_in as f32).sqrt()).min(0.5);
            (0..n).map(|_| rng.random_range(-a..a)).collect()
        };
        var.set(&Tensor::from_vec(values, dims, &Device::Cpu)?)?;
    }
    drop(data);
    Ok(varmap)
}

fn tensors(varmap: &VarMap, dtype: DType) -> candle_core::Result<HashMap<String, Tensor>> {
    let data = varmap.data().lock().expect("not poisoned");
    data.iter()
        .map(|(name, var)| Ok((name.clone(), var.as_tensor().to_dtype(dtype)?)))
        .collect()
}

fn safetensors(varmap: &VarMap, dtype: DType) -> TinyResult<Vec<u8>> {
    let tensors = tensors(varmap, dtype)?;
    Ok(safetensors::serialize(
        tensors.iter().map(|(k, v)| (k.as_str(), v)),
        None,
    )?)
}

/// Two BF16 shards and their index, named as the FLUX repo names them.
fn shard(varmap: &VarMap, first: &str, second: &str) -> TinyResult<(Vec<u8>, Vec<u8>, Vec<u8>)> {
    let all = tensors(varmap, DType::BF16)?;
    let mut names: Vec<&String> = all.keys().collect();
    names.sort();
    let half = names.len() / 2;
    let file_name = |p: &str| p.rsplit('/').next().unwrap_or(p).to_string();
    let (a_name, b_name) = (file_name(first), file_name(second));
    let mut weight_map = serde_json::Map::new();
    let mut total = 0usize;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for (i, name) in names.iter().enumerate() {
        let t = &all[*name];
        total += t.elem_count() * t.dtype().size_in_bytes();
        let shard = if i < half { &a_name } else { &b_name };
        weight_map.insert((*name).clone(), json!(shard));
        if i < half {
            a.push((name.as_str(), t))
        } else {
            b.push((name.as_str(), t))
        }
    }
    let index = json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
    Ok((
        safetensors::serialize(a, None)?,
        safetensors::serialize(b, None)?,
        json_bytes(&index),
    ))
}

/// Words the tiny tokenizers know whole; anything else falls back to letters.
const WORDS: &[&str] = &[
    "a",
    "an",
    "the",
    "of",
    "in",
    "on",
    "at",
    "with",
    "and",
    "by",
    "photo",
    "painting",
    "drawing",
    "portrait",
    "cat",
    "dog",
    "bird",
    "fox",
    "horse",
    "robot",
    "tree",
    "forest",
    "mountain",
    "river",
    "sea",
    "beach",
    "city",
    "street",
    "house",
    "castle",
    "sky",
    "sun",
    "moon",
    "star",
    "cloud",
    "rain",
    "snow",
    "night",
    "day",
    "morning",
    "red",
    "blue",
    "green",
    "yellow",
    "black",
    "white",
    "golden",
    "silver",
    "dark",
    "bright",
    "small",
    "big",
    "old",
    "young",
    "happy",
    "quiet",
    "rusty",
    "walking",
    "sitting",
    "flying",
    "holding",
    "torch",
    "word",
    "rust",
    "high",
    "quality",
    "detailed",
    "cinematic",
    "light",
    "shadow",
    "water",
    "fire",
    "stone",
    "glass",
];
const LETTERS: &str = "abcdefghijklmnopqrstuvwxyz0123456789";
const PUNCT: &str = ".,!?'\"-:;()";

/// A small T5-style Unigram tokenizer: `<pad>`=0, `</s>`=1, `<unk>`=2, and
/// `</s>` appended to every sequence, as T5's is. Returns its JSON and the
/// vocabulary size for the config.
fn t5_tokenizer() -> TinyResult<(Vec<u8>, usize)> {
    use tokenizers::models::unigram::Unigram;
    use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
    use tokenizers::processors::template::TemplateProcessing;

    let mut vocab: Vec<(String, f64)> = vec![
        ("<pad>".into(), 0.0),
        ("</s>".into(), 0.0),
        ("<unk>".into(), 0.0),
    ];
    for (i, w) in WORDS.iter().enumerate() {
        vocab.push((format!("▁{w}"), -5.0 - i as f64 * 0.01));
    }
    vocab.push(("▁".into(), -8.0));
    for c in LETTERS.chars().chain(PUNCT.chars()) {
        vocab.push((format!("▁{c}"), -9.0));
        vocab.push((c.to_string(), -10.0));
    }
    let size = vocab.len();
    let mut tok = Tokenizer::new(Unigram::from(vocab, Some(2), false)?);
    tok.with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::Always, true)));
    tok.with_decoder(Some(Metaspace::new('▁', PrependScheme::Always, true)));
    tok.with_post_processor(Some(
        TemplateProcessing::builder()
            .try_single("$A </s>")
            .map_err(|e| e.to_string())?
            .try_pair("$A </s> $B </s>")
            .map_err(|e| e.to_string())?
            .special_tokens(vec![("</s>", 1)])
            .build()?,
    ));
    tok.add_special_tokens([
        tokenizers::AddedToken::from("<pad>", true),
        tokenizers::AddedToken::from("</s>", true),
        tokenizers::AddedToken::from("<unk>", true),
    ])?;
    Ok((tok.to_string(true)?.into_bytes(), size.div_ceil(32) * 32))
}

/// A small CLIP-style BPE tokenizer: lower-cased, `</w>` word ends,
/// `<|startoftext|>` … `<|endoftext|>` around every sequence, the two special
/// tokens last in the vocabulary as in OpenAI's.
fn clip_tokenizer() -> TinyResult<(Vec<u8>, usize)> {
    use tokenizers::decoders::bpe::BPEDecoder;
    use tokenizers::models::bpe::BPE;
    use tokenizers::normalizers::utils::Lowercase;
    use tokenizers::pre_tokenizers::whitespace::Whitespace;
    use tokenizers::processors::roberta::RobertaProcessing;

    let mut vocab: Vec<String> = Vec::new();
    let add = |t: String, vocab: &mut Vec<String>| {
        if !vocab.contains(&t) {
            vocab.push(t);
        }
    };
    for c in LETTERS.chars().chain(PUNCT.chars()) {
        add(c.to_string(), &mut vocab);
        add(format!("{c}</w>"), &mut vocab);
    }
    let mut merges: Vec<(String, String)> = Vec::new();
    for w in WORDS {
        let mut symbols: Vec<String> = w.chars().map(|c| c.to_string()).collect();
        let last = symbols.pop().expect("words are not empty");
        symbols.push(format!("{last}</w>"));
        let mut current = symbols[0].clone();
        for next in &symbols[1..] {
            let pair = (current.clone(), next.clone());
            if !merges.contains(&pair) {
                merges.push(pair);
            }
            current = format!("{current}{next}");
            add(current.clone(), &mut vocab);
        }
    }
    let bos = vocab.len() as u32;
    add("<|startoftext|>".into(), &mut vocab);
    add("<|endoftext|>".into(), &mut vocab);
    let size = vocab.len();
    let ids: tokenizers::models::bpe::Vocab = vocab
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(ids, merges)
        .end_of_word_suffix("</w>".into())
        .unk_token("<|endoftext|>".into())
        .build()?;
    let mut tok = Tokenizer::new(bpe);
    tok.with_normalizer(Some(Lowercase))?;
    tok.with_pre_tokenizer(Some(Whitespace {}));
    tok.with_decoder(Some(BPEDecoder::new("</w>".into())));
    tok.with_post_processor(Some(
        RobertaProcessing::new(
            ("<|endoftext|>".into(), bos + 1),
            ("<|startoftext|>".into(), bos),
        )
        .trim_offsets(false)
        .add_prefix_space(false),
    ));
    tok.add_special_tokens([
        tokenizers::AddedToken::from("<|startoftext|>", true),
        tokenizers::AddedToken::from("<|endoftext|>", true),
    ])?;
    Ok((tok.to_string(true)?.into_bytes(), size))
}
