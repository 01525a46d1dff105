//! The real config files map exactly to candle's FLUX.1-schnell values.

use super::{clip_text_config, flux_config, t5_config, vae_config, ConfigSource};
use candle_transformers::models::clip::text_model::{Activation, ClipTextConfig};
use candle_transformers::models::flux::{autoencoder, model};

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{path}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn src(name: &str) -> ConfigSource {
    ConfigSource(name.into())
}

#[test]
fn the_transformer_config_is_candles_schnell() {
    let parsed = flux_config(
        &src("transformer/config.json"),
        &fixture("hub/black-forest-labs/FLUX.1-schnell/transformer/config.json"),
    )
    .unwrap();
    // candle's Config has no PartialEq; its Debug lists every field.
    assert_eq!(
        format!("{parsed:?}"),
        format!("{:?}", model::Config::schnell())
    );
}

#[test]
fn the_vae_config_is_candles_schnell_autoencoder() {
    let parsed = vae_config(
        &src("vae/config.json"),
        &fixture("hub/black-forest-labs/FLUX.1-schnell/vae/config.json"),
    )
    .unwrap();
    assert_eq!(
        format!("{parsed:?}"),
        format!("{:?}", autoencoder::Config::schnell())
    );
}

#[test]
fn the_t5_config_is_t5_v1_1_xxl() {
    let c = t5_config(
        &src("config.json"),
        &fixture("hub/google/t5-v1_1-xxl/config.json"),
    )
    .unwrap();
    assert_eq!(
        (c.d_model, c.d_kv, c.d_ff, c.num_layers, c.num_heads),
        (4096, 64, 10240, 24, 64)
    );
    assert_eq!(
        (c.vocab_size, c.relative_attention_num_buckets),
        (32128, 32)
    );
    assert!(c.feed_forward_proj.gated, "gated-gelu");
    assert_eq!(
        c.feed_forward_proj.activation,
        candle_nn::Activation::NewGelu
    );
    assert!(!c.tie_word_embeddings);
}

/// The CLIP-L text config candle's flux example builds by hand.
fn candle_clip_l() -> ClipTextConfig {
    ClipTextConfig {
        vocab_size: 49408,
        projection_dim: 768,
        activation: Activation::QuickGelu,
        intermediate_size: 3072,
        embed_dim: 768,
        max_position_embeddings: 77,
        pad_with: None,
        num_hidden_layers: 12,
        num_attention_heads: 12,
    }
}

#[test]
fn clip_configs_flat_and_nested_give_clip_l() {
    for path in [
        "reconstructed/flux-text_encoder-config.json",
        "reconstructed/openai-clip-config.json",
    ] {
        let parsed = clip_text_config(&src(path), &fixture(path)).unwrap();
        assert_eq!(
            format!("{parsed:?}"),
            format!("{:?}", candle_clip_l()),
            "{path}"
        );
    }
}

#[test]
fn a_bad_config_names_the_file_and_field() {
    let err = flux_config(&src("transformer/config.json"), br#"{"attention_head_dim": 128, "num_attention_heads": 24, "num_layers": 19, "num_single_layers": 38, "in_channels": 64, "joint_attention_dim": 4096, "pooled_projection_dim": 768, "axes_dims_rope": [16, 56, 50]}"#).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("transformer/config.json") && msg.contains("axes_dims_rope"),
        "{msg}"
    );
    let err = flux_config(
        &src("transformer/config.json"),
        br#"{"attention_head_dim": 128}"#,
    )
    .unwrap_err();
    assert!(err.to_string().contains("num_attention_heads"), "{err}");
    let err = clip_text_config(&src("text_encoder/config.json"), br#"{"hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 1, "hidden_act": "gelu"}"#).unwrap_err();
    assert!(err.to_string().contains("hidden_act"), "{err}");
}

#[test]
fn tiny_models_are_the_same_every_time() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let files_a = crate::dev::write_tiny_models(a.path()).unwrap();
    crate::dev::write_tiny_models(b.path()).unwrap();
    assert!(files_a.len() >= 20, "{} files", files_a.len());
    for f in files_a {
        let rel = f.strip_prefix(a.path()).unwrap();
        assert_eq!(
            std::fs::read(&f).unwrap(),
            std::fs::read(b.path().join(rel)).unwrap(),
            "{}",
            rel.display()
        );
    }
}

/// Every key of the real configs (`../shared/reference/hub/`, less the
/// tools' version stamps) is in the tiny models' too, so that diffusers and
/// transformers load them as they load the real ones.
#[test]
fn tiny_configs_carry_every_key_of_the_real_ones() {
    let dir = tempfile::tempdir().unwrap();
    crate::dev::write_tiny_models(dir.path()).unwrap();
    let flux = "black-forest-labs/FLUX.1-schnell";
    let cases: [(String, &[&str]); 5] = [
        (
            format!("{flux}/vae/config.json"),
            &[
                "_class_name",
                "act_fn",
                "block_out_channels",
                "down_block_types",
                "force_upcast",
                "in_channels",
                "latent_channels",
                "latents_mean",
                "latents_std",
                "layers_per_block",
                "mid_block_add_attention",
                "norm_num_groups",
                "out_channels",
                "sample_size",
                "scaling_factor",
                "shift_factor",
                "up_block_types",
                "use_post_quant_conv",
                "use_quant_conv",
            ],
        ),
        (
            format!("{flux}/transformer/config.json"),
            &[
                "_class_name",
                "attention_head_dim",
                "guidance_embeds",
                "in_channels",
                "joint_attention_dim",
                "num_attention_heads",
                "num_layers",
                "num_single_layers",
                "patch_size",
                "pooled_projection_dim",
            ],
        ),
        (
            format!("{flux}/text_encoder/config.json"),
            &[
                "architectures",
                "attention_dropout",
                "bos_token_id",
                "dropout",
                "eos_token_id",
                "hidden_act",
                "hidden_size",
                "initializer_factor",
                "initializer_range",
                "intermediate_size",
                "layer_norm_eps",
                "max_position_embeddings",
                "model_type",
                "num_attention_heads",
                "num_hidden_layers",
                "pad_token_id",
                "projection_dim",
                "torch_dtype",
                "vocab_size",
            ],
        ),
        (format!("{flux}/text_encoder_2/config.json"), T5_KEYS),
        ("google/t5-v1_1-xxl/config.json".to_string(), T5_KEYS),
    ];
    for (file, keys) in cases {
        let path = dir.path().join(&file);
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{file}: {e}")))
                .unwrap();
        let missing: Vec<&&str> = keys.iter().filter(|k| config.get(**k).is_none()).collect();
        assert!(missing.is_empty(), "{file} lacks {missing:?}");
    }
    // CLIP's special ids are the real file's.
    let clip: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join(format!("{flux}/text_encoder/config.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (
            &clip["bos_token_id"],
            &clip["eos_token_id"],
            &clip["pad_token_id"]
        ),
        (
            &serde_json::json!(0),
            &serde_json::json!(2),
            &serde_json::json!(1)
        )
    );
}

const T5_KEYS: &[&str] = &[
    "architectures",
    "d_ff",
    "d_kv",
    "d_model",
    "decoder_start_token_id",
    "dropout_rate",
    "eos_token_id",
    "feed_forward_proj",
    "initializer_factor",
    "is_encoder_decoder",
    "layer_norm_epsilon",
    "model_type",
    "num_decoder_layers",
    "num_heads",
    "num_layers",
    "output_past",
    "pad_token_id",
    "relative_attention_num_buckets",
    "tie_word_embeddings",
    "vocab_size",
];
