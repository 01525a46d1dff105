//! The model's files through the hub, in one concurrent batch.

use crate::flux::error::FluxError;
use crate::flux::weights::files::ModelFiles;
use crate::flux::weights::local::LocalFiles;
use crate::flux::weights::named::{load_failure, Named};
use serde::Deserialize;
use std::collections::{BTreeSet, HashMap};

use crate::hub::{FetchedFile, HubClient, HubError, HubFile, HubModel};

/// The index of a sharded checkpoint.
#[derive(Deserialize)]
pub(super) struct ShardIndex {
    weight_map: HashMap<String, String>,
}

/// The engine's client, reporting to this request: model code fetches
/// through [`HubModel`] and never touches the client itself.
pub(super) struct ModelHub(pub(super) HubClient);

impl HubModel for ModelHub {
    fn hub(&self) -> Result<HubClient, HubError> {
        Ok(self.0.clone())
    }
}

/// Every file of the model, in one concurrent batch.
pub(super) async fn fetch_local(
    model: &impl HubModel,
    files: &ModelFiles,
) -> Result<LocalFiles, FluxError> {
    let fetched = model.huggingface_files(&files.all()).await?;
    let by_file: HashMap<&HubFile, &FetchedFile> = fetched.iter().map(|f| (&f.file, f)).collect();
    let named = |f: &HubFile| Named::from(by_file[f]);

    let t5_weights = match &files.t5_index {
        None => files.t5_weights.iter().map(named).collect(),
        Some(index) => {
            // The shards the index names: usually those already fetched.
            let index_file = by_file[index];
            let bytes = index_file.bytes().await?;
            let parsed: ShardIndex = serde_json::from_slice(&bytes).map_err(|e| {
                load_failure(
                    &[Named::from(index_file)],
                    format!("not a safetensors index: {e}"),
                )
            })?;
            let dir = index.path.rsplit_once('/').map_or("", |(d, _)| d);
            let shards: BTreeSet<HubFile> = parsed
                .weight_map
                .values()
                .map(|name| {
                    let path = if dir.is_empty() {
                        name.clone()
                    } else {
                        format!("{dir}/{name}")
                    };
                    HubFile::new(&index.repo, path).at_revision(&index.revision)
                })
                .collect();
            let shards: Vec<HubFile> = shards.into_iter().collect();
            model
                .huggingface_files(&shards)
                .await?
                .iter()
                .map(Named::from)
                .collect()
        }
    };
    Ok(LocalFiles {
        transformer: named(&files.transformer),
        transformer_config: named(&files.transformer_config),
        vae: named(&files.vae),
        vae_config: named(&files.vae_config),
        t5_config: named(&files.t5_config),
        t5_weights,
        t5_tokenizer: named(&files.t5_tokenizer),
        clip_config: named(&files.clip_config),
        clip_weights: named(&files.clip_weights),
        clip_tokenizer: named(&files.clip_tokenizer),
        quant: files.quant,
        t5_quant: files.t5_quant,
    })
}
