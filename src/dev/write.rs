//! Writes a random-weight model's files: the transformer, the VAE, T5 and
//! CLIP, in every type asked for, with their configs and tokenizers.

use std::path::{Path, PathBuf};

use candle_core::DType;
use candle_nn::Init;
use candle_transformers::models::clip::{self, text_model::ClipTextTransformer};
use candle_transformers::models::flux::autoencoder::AutoEncoder;
use candle_transformers::models::t5;
use serde_json::json;

use super::error::DevResult;
use super::json::json_bytes;
use super::sizes::{ModelSizes, WriteOptions};
use super::{gguf, random, safetensors, tokenizers};
use crate::flux::model::transformer::Flux;
use crate::flux::weights::config::{clip_text_config, flux_config, t5_config, vae_config};
use crate::flux::{ConfigSource, Quant, T5Quant, TextEncoders, FLUX_SCHNELL};
use crate::hub::HubFile;

/// The transformer's config at `z` and the tensors its constructor asks
/// for, recorded without making any of them.
fn record_transformer(z: &ModelSizes) -> DevResult<(serde_json::Value, Vec<random::Recorded>)> {
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
    let recorded = random::record(1, |vb| Flux::new(&flux_cfg, vb).map(drop))?;
    Ok((transformer_config, recorded))
}

/// The transformer's parameter count at `sizes`, by recording its
/// constructor as `write_models` does: no weight is made, so this takes
/// next to no memory even for the real architecture's 12 billion.
pub fn transformer_parameters(sizes: &ModelSizes) -> DevResult<u64> {
    let (_, recorded) = record_transformer(sizes)?;
    Ok(recorded
        .iter()
        .map(|t| t.dims.iter().product::<usize>() as u64)
        .sum())
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
    let (transformer_config, transformer) = record_transformer(z)?;
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

const README: &str = "# Random-weight model\n\nWritten by `schnell dev random-models`: the real file names, tensor names, \
dtypes and config keys, with seeded random weights. Images made with it are noise; it exists to exercise \
schnell's download, loading and compute without the real weights.\n";
