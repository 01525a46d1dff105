//! Which Hub files make up FLUX.1-schnell, in its two text-encoder variants.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::flux::weights::quant::{Quant, T5Quant, FLUX_GGUF_REPO, T5_GGUF_REPO};
use crate::hub::HubFile;

/// The FLUX repository; gated since 2025 (accept the licence, set `HF_TOKEN`).
pub const FLUX_REPO: &str = "black-forest-labs/FLUX.1-schnell";
const CLIP_REPO: &str = "openai/clip-vit-large-patch14";
const T5_REPO: &str = "google/t5-v1_1-xxl";
/// Only this revision of google's T5 holds `model.safetensors` (44.5 GB, F32).
const T5_REVISION: &str = "refs/pr/2";
const T5_TOKENIZER_REPO: &str = "lmz/mt5-tokenizers";

/// Where the T5 and CLIP text encoders come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TextEncoders {
    /// The FLUX repo's own diffusers folders: T5 encoder-only in BF16 and the
    /// CLIP text model (about 34 GB with the transformer).
    #[default]
    FluxRepo,
    /// google/t5-v1_1-xxl@refs/pr/2 and openai/clip-vit-large-patch14, as
    /// candle's example uses (about 70 GB: the T5 file holds its decoder too).
    Original,
}

impl fmt::Display for TextEncoders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TextEncoders::FluxRepo => "flux-repo",
            TextEncoders::Original => "original",
        })
    }
}

impl FromStr for TextEncoders {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "flux-repo" => Ok(TextEncoders::FluxRepo),
            "original" => Ok(TextEncoders::Original),
            other => Err(format!(
                "unknown text encoders {other:?}: use flux-repo or original"
            )),
        }
    }
}

/// A model the registry knows.
#[derive(Debug)]
pub struct ModelDescription {
    /// The short id used on the command line and in the API.
    pub id: &'static str,
    /// The registry key: the Hub repository of the transformer.
    pub key: &'static str,
}

/// FLUX.1-schnell: 4-step distilled, Apache-2.0, gated on the Hub.
pub const FLUX_SCHNELL: ModelDescription = ModelDescription {
    id: "flux-schnell",
    key: FLUX_REPO,
};

/// Every model schnell can run, for lookups by id or key.
pub const MODELS: &[&ModelDescription] = &[&FLUX_SCHNELL];

impl ModelDescription {
    /// A model by its id (`flux-schnell`) or key (`black-forest-labs/FLUX.1-schnell`).
    pub fn find(name: &str) -> Option<&'static ModelDescription> {
        MODELS
            .iter()
            .copied()
            .find(|m| m.id == name || m.key == name)
    }

    /// Every file the model needs, to be fetched in one concurrent batch:
    /// the safetensors of the `encoders` set, with the transformer and T5
    /// from city96's GGUF files where `quant` and `t5_quant` say so.
    pub fn files(&self, encoders: TextEncoders, quant: Quant, t5_quant: T5Quant) -> ModelFiles {
        let mut files = self.safetensors_files(encoders);
        if let Some(gguf) = quant.file() {
            files.transformer = gguf;
        }
        if let Some(gguf) = t5_quant.file() {
            // The config (and so the shapes) stays the encoders set's.
            files.t5_index = None;
            files.t5_weights = vec![gguf];
        }
        files.quant = quant;
        files.t5_quant = t5_quant;
        files
    }

    /// Every repository the model may fetch from, whatever the types.
    pub fn repos(&self, encoders: TextEncoders) -> Vec<String> {
        let mut repos = self.safetensors_files(encoders).repos();
        repos.extend([FLUX_GGUF_REPO.to_string(), T5_GGUF_REPO.to_string()]);
        repos.sort();
        repos.dedup();
        repos
    }

    fn safetensors_files(&self, encoders: TextEncoders) -> ModelFiles {
        let flux = |path: &str| HubFile::new(FLUX_REPO, path);
        let common = (
            flux("flux1-schnell.safetensors"),
            flux("transformer/config.json"),
            flux("ae.safetensors"),
            flux("vae/config.json"),
        );
        match encoders {
            TextEncoders::FluxRepo => ModelFiles {
                transformer: common.0,
                transformer_config: common.1,
                vae: common.2,
                vae_config: common.3,
                t5_config: flux("text_encoder_2/config.json"),
                t5_index: Some(flux("text_encoder_2/model.safetensors.index.json")),
                // The shards the index names today; the index is checked after
                // download and any other shard it names is fetched too.
                t5_weights: vec![
                    flux("text_encoder_2/model-00001-of-00002.safetensors"),
                    flux("text_encoder_2/model-00002-of-00002.safetensors"),
                ],
                t5_tokenizer: flux("tokenizer_2/tokenizer.json"),
                clip_config: flux("text_encoder/config.json"),
                clip_weights: flux("text_encoder/model.safetensors"),
                // The FLUX repo has vocab.json and merges.txt, not tokenizer.json.
                clip_tokenizer: HubFile::new(CLIP_REPO, "tokenizer.json"),
                quant: Quant::None,
                t5_quant: T5Quant::None,
            },
            TextEncoders::Original => ModelFiles {
                transformer: common.0,
                transformer_config: common.1,
                vae: common.2,
                vae_config: common.3,
                t5_config: HubFile::new(T5_REPO, "config.json").at_revision(T5_REVISION),
                t5_index: None,
                t5_weights: vec![
                    HubFile::new(T5_REPO, "model.safetensors").at_revision(T5_REVISION)
                ],
                t5_tokenizer: HubFile::new(T5_TOKENIZER_REPO, "t5-v1_1-xxl.tokenizer.json"),
                clip_config: HubFile::new(CLIP_REPO, "config.json"),
                clip_weights: HubFile::new(CLIP_REPO, "model.safetensors"),
                clip_tokenizer: HubFile::new(CLIP_REPO, "tokenizer.json"),
                quant: Quant::None,
                t5_quant: T5Quant::None,
            },
        }
    }
}

/// The files of one model, by role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelFiles {
    /// The transformer's weights (safetensors or GGUF).
    pub transformer: HubFile,
    /// The transformer's `config.json` (diffusers' keys).
    pub transformer_config: HubFile,
    /// The VAE's weights.
    pub vae: HubFile,
    /// The VAE's `config.json`.
    pub vae_config: HubFile,
    /// T5's `config.json`.
    pub t5_config: HubFile,
    /// A sharded checkpoint's index (`weight_map`: tensor → shard).
    pub t5_index: Option<HubFile>,
    /// T5's weights: one file, the index's shards, or a GGUF file.
    pub t5_weights: Vec<HubFile>,
    /// T5's `tokenizer.json`.
    pub t5_tokenizer: HubFile,
    /// CLIP's `config.json`.
    pub clip_config: HubFile,
    /// CLIP's weights.
    pub clip_weights: HubFile,
    /// CLIP's `tokenizer.json`.
    pub clip_tokenizer: HubFile,
    /// `none`: the transformer is safetensors; else city96's GGUF of this type.
    pub quant: Quant,
    /// `none`: T5 is safetensors; else city96's GGUF of this type.
    pub t5_quant: T5Quant,
}

impl ModelFiles {
    /// Every file, each once.
    pub fn all(&self) -> Vec<HubFile> {
        let mut all = vec![
            self.transformer.clone(),
            self.transformer_config.clone(),
            self.vae.clone(),
            self.vae_config.clone(),
            self.t5_config.clone(),
            self.t5_tokenizer.clone(),
            self.clip_config.clone(),
            self.clip_weights.clone(),
            self.clip_tokenizer.clone(),
        ];
        all.extend(self.t5_index.clone());
        all.extend(self.t5_weights.iter().cloned());
        all
    }

    /// The repositories involved, each once.
    pub fn repos(&self) -> Vec<String> {
        let mut repos: Vec<String> = self.all().into_iter().map(|f| f.repo).collect();
        repos.sort();
        repos.dedup();
        repos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_file_sets_are_complete() {
        let flux = FLUX_SCHNELL.files(TextEncoders::FluxRepo, Quant::None, T5Quant::None);
        assert_eq!(flux.all().len(), 12);
        assert_eq!(flux.repos(), [FLUX_REPO, CLIP_REPO]);
        let original = FLUX_SCHNELL.files(TextEncoders::Original, Quant::None, T5Quant::None);
        assert_eq!(original.all().len(), 10);
        assert_eq!(original.t5_weights[0].revision, "refs/pr/2");
        assert_eq!(original.repos().len(), 4);
        assert!(ModelDescription::find("flux-schnell").is_some());
        assert!(ModelDescription::find(FLUX_REPO).is_some());
        assert!(ModelDescription::find("sdxl").is_none());
    }

    #[test]
    fn gguf_sets_swap_the_transformer_and_t5_only() {
        let files = FLUX_SCHNELL.files(TextEncoders::FluxRepo, Quant::Q4_0, T5Quant::Q4KS);
        assert_eq!(files.transformer.repo, FLUX_GGUF_REPO);
        assert_eq!(files.transformer.path, "flux1-schnell-Q4_0.gguf");
        assert_eq!(files.t5_weights.len(), 1);
        assert_eq!(files.t5_weights[0].path, "t5-v1_1-xxl-encoder-Q4_K_S.gguf");
        assert!(files.t5_index.is_none());
        // Configs, tokenizers, CLIP and the VAE come from the FLUX repo as before.
        assert_eq!(files.t5_config.path, "text_encoder_2/config.json");
        assert_eq!(files.vae.path, "ae.safetensors");
        assert_eq!(files.all().len(), 10);
        // T5 in safetensors beside a GGUF transformer.
        let mixed = FLUX_SCHNELL.files(TextEncoders::FluxRepo, Quant::Q8_0, T5Quant::None);
        assert_eq!(mixed.t5_weights.len(), 2);
        assert!(FLUX_SCHNELL
            .repos(TextEncoders::FluxRepo)
            .contains(&T5_GGUF_REPO.to_string()));
    }
}
