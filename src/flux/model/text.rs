//! The two text encoders: T5-XXL (safetensors or GGUF) and CLIP-L.

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::clip::text_model::{ClipTextConfig, ClipTextTransformer};
use candle_transformers::models::t5;

use crate::flux::error::FluxError;
use crate::flux::model::t5_encoder::QuantizedT5Encoder;
use crate::flux::weights::gguf::{is_t5_matrix, t5_hf_to_llama, t5_llama_to_hf, GgufFile};
use crate::flux::weights::named::{load_failure, mmap, Named};
use crate::flux::weights::quant::T5Quant;

/// T5's encoder. The weights may be safetensors (one file or shards;
/// google's file also holds a decoder, which is never read) or a GGUF file.
pub enum T5 {
    Full(t5::T5EncoderModel),
    Quantized(QuantizedT5Encoder),
}

impl T5 {
    pub fn load(
        config: &t5::Config,
        weights: &[Named],
        dtype: DType,
        device: &Device,
    ) -> Result<Self, FluxError> {
        let vb = mmap(weights, dtype, device)?;
        let model = t5::T5EncoderModel::load(vb, config).map_err(|e| load_error(weights, e))?;
        Ok(T5::Full(model))
    }

    /// A GGUF file of `quant`'s type. city96's files use llama.cpp's names
    /// (`enc.blk.N.attn_q.weight`); they are mapped to candle's as the file
    /// is read, never rewritten on disk. Files already in candle's names
    /// load as they are.
    pub fn load_gguf(
        config: &t5::Config,
        weights: &Named,
        quant: T5Quant,
        device: &Device,
    ) -> Result<Self, FluxError> {
        let file = GgufFile::open(weights)?;
        let llama_names = file
            .content
            .tensor_infos
            .keys()
            .any(|n| n.starts_with("enc.") || n == "token_embd.weight");
        if let Some(expected) = quant.ggml() {
            let is_matrix: fn(&str) -> bool = if llama_names {
                is_t5_matrix
            } else {
                t5_hf_matrix
            };
            file.check_type(expected, is_matrix)?;
        }
        let vb = if llama_names {
            file.renamed_var_builder(device, t5_llama_to_hf)?
        } else {
            file.var_builder(device)?
        };
        let model = QuantizedT5Encoder::load(vb, config).map_err(|e| {
            // Name a missing tensor as the file names it, too. (With
            // RUST_BACKTRACE set, candle appends a backtrace: first line only.)
            let missing = e
                .to_string()
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("cannot find tensor "))
                .and_then(|rest| rest.split_whitespace().next())
                .filter(|_| llama_names)
                .and_then(|name| Some((name.to_string(), t5_hf_to_llama(name)?)));
            match missing {
                Some((name, llama)) => load_error(
                    std::slice::from_ref(weights),
                    candle_core::Error::Msg(format!(
                        "cannot find tensor {name} (`{llama}` in the file's llama.cpp names)"
                    )),
                ),
                None => load_error(std::slice::from_ref(weights), e),
            }
        })?;
        Ok(T5::Quantized(model))
    }

    /// (1, [`T5_TOKENS`], d_model), in the model's dtype (F32 when quantized).
    pub fn encode(&mut self, ids: &[u32], device: &Device) -> Result<Tensor, FluxError> {
        match self {
            T5::Full(model) => Tensor::new(ids, device)
                .and_then(|t| t.unsqueeze(0))
                .and_then(|ids| model.forward(&ids)),
            T5::Quantized(model) => model.forward(ids, device),
        }
        .map_err(FluxError::compute("T5 encoding"))
    }
}

/// A T5 matrix in transformers' names.
fn t5_hf_matrix(name: &str) -> bool {
    name.starts_with("encoder.block.")
        && name.ends_with(".weight")
        && !name.contains("layer_norm")
        && !name.contains("relative_attention_bias")
}

/// CLIP's text transformer: its pooled output conditions FLUX.
pub struct Clip {
    model: ClipTextTransformer,
}

impl Clip {
    pub fn load(
        config: &ClipTextConfig,
        weights: &Named,
        dtype: DType,
        device: &Device,
    ) -> Result<Self, FluxError> {
        let vb: VarBuilder = mmap(std::slice::from_ref(weights), dtype, device)?;
        let model = ClipTextTransformer::new(vb.pp("text_model"), config)
            .map_err(|e| load_error(std::slice::from_ref(weights), e))?;
        Ok(Self { model })
    }

    /// (1, hidden): the final hidden state at the end token.
    pub fn encode(&self, ids: &[u32], end: usize, device: &Device) -> Result<Tensor, FluxError> {
        let run = || -> candle_core::Result<Tensor> {
            let ids = Tensor::new(ids, device)?.unsqueeze(0)?;
            let hidden = self.model.forward_with_mask(&ids, usize::MAX)?;
            hidden.i((.., end))
        };
        run().map_err(FluxError::compute("CLIP encoding"))
    }
}

/// A candle error while building a model from these files: a missing tensor
/// or a wrong shape, so the files are at fault.
pub(crate) fn load_error(files: &[Named], e: candle_core::Error) -> FluxError {
    load_failure(
        files,
        format!(
            "the weights do not fit the config: {}",
            crate::flux::error::candle_message(&e)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::{write_models, ModelSizes, WriteOptions};
    use crate::flux::weights::config::{t5_config, ConfigSource};
    use crate::flux::weights::tokenizers::*;
    use crate::hub::HubFile;
    use tokenizers::Tokenizer;

    fn named(dir: &std::path::Path, file: HubFile) -> Named {
        let path = dir.join(&file.repo).join(&file.path);
        Named { file, path }
    }

    #[test]
    fn clip_pools_at_the_first_end_token() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: Vec<u8>| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            Named {
                file: HubFile::new("acme/tokenizers", name),
                path,
            }
        };
        let t5 = write("t5.json", crate::dev::tokenizers::t5_tokenizer().unwrap().0);
        let clip = write(
            "clip.json",
            crate::dev::tokenizers::clip_tokenizer().unwrap().0,
        );
        let tokenizers = Tokenizers::load(&t5, &clip).unwrap();

        let plain = tokenizers.tokenize("a red fox").unwrap();
        assert_eq!(plain.clip[plain.clip_end], tokenizers.clip_end);
        assert!(plain.clip_end > 1, "pools after the words");

        let spelled = tokenizers.tokenize("a <|endoftext|> red fox").unwrap();
        assert_eq!(spelled.clip[spelled.clip_end], tokenizers.clip_end);
        assert!(
            spelled.clip_end < plain.clip_end,
            "pools at the spelled-out end token ({}), not the last ({})",
            spelled.clip_end,
            plain.clip_end
        );
    }

    /// A `tokenizer.json` that pads or truncates on its own (as some
    /// exported ones do) must give the same ids as one that does not.
    #[test]
    fn padding_and_truncation_in_a_tokenizer_json_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            Named {
                file: HubFile::new("acme/tokenizers", name),
                path,
            }
        };
        let own = |json: &[u8]| {
            let mut v: serde_json::Value = serde_json::from_slice(json).unwrap();
            v["padding"] = serde_json::json!({
                "strategy": {"Fixed": 40}, "direction": "Left", "pad_to_multiple_of": null,
                "pad_id": 1, "pad_type_id": 0, "pad_token": "x"
            });
            v["truncation"] = serde_json::json!({
                "direction": "Right", "max_length": 3, "strategy": "LongestFirst", "stride": 0
            });
            serde_json::to_vec(&v).unwrap()
        };
        let t5 = crate::dev::tokenizers::t5_tokenizer().unwrap().0;
        let clip = crate::dev::tokenizers::clip_tokenizer().unwrap().0;
        let plain = Tokenizers::load(&write("t5.json", &t5), &write("clip.json", &clip)).unwrap();
        let configured = Tokenizers::load(
            &write("t5p.json", &own(&t5)),
            &write("clipp.json", &own(&clip)),
        )
        .unwrap();
        // The configuration is read, or the test proves nothing.
        let raw = Tokenizer::from_bytes(own(&t5)).unwrap();
        assert!(raw.get_padding().is_some() && raw.get_truncation().is_some());

        let prompt = "a red fox jumps over the lazy dog";
        let (a, b) = (
            plain.tokenize(prompt).unwrap(),
            configured.tokenize(prompt).unwrap(),
        );
        assert_eq!((a.t5, a.clip, a.clip_end), (b.t5, b.clip, b.clip_end));
        assert!(b.warnings.is_empty(), "{:?}", b.warnings);
        let counts = |t5: &[u8], clip: &[u8]| {
            crate::tokens::TokenCounter::from_json(t5, clip)
                .unwrap()
                .count(prompt)
                .unwrap()
        };
        let (c, d) = (counts(&t5, &clip), counts(&own(&t5), &own(&clip)));
        assert_eq!((c.t5, c.clip), (d.t5, d.clip));
    }

    /// city96's T5 files use llama.cpp's names. Loaded through the name map,
    /// the quantized encoder must compute what the same weights compute in
    /// full precision (a swapped q/k or up/gate would not), and a file
    /// already in candle's names must load to the very same encoder.
    #[test]
    fn city96_t5_names_load_as_candle_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let options = WriteOptions {
            sizes: ModelSizes::tiny(),
            quants: vec![],
            t5_quants: vec![T5Quant::None, T5Quant::Q8_0],
            original: false,
        };
        write_models(dir.path(), &options).unwrap();
        let files = crate::flux::FLUX_SCHNELL.files(
            crate::flux::TextEncoders::FluxRepo,
            crate::flux::Quant::None,
            T5Quant::Q8_0,
        );
        let config_bytes = named(dir.path(), files.t5_config.clone()).read().unwrap();
        let src = ConfigSource("t5 config".into());
        let cfg = t5_config(&src, &config_bytes).unwrap();
        let shards = crate::flux::FLUX_SCHNELL
            .files(
                crate::flux::TextEncoders::FluxRepo,
                crate::flux::Quant::None,
                T5Quant::None,
            )
            .t5_weights
            .into_iter()
            .map(|f| named(dir.path(), f))
            .collect::<Vec<_>>();
        let gguf = named(dir.path(), files.t5_weights[0].clone());
        let ids: Vec<u32> = (0..T5_TOKENS as u32).map(|i| (i * 7 + 3) % 90).collect();
        let cpu = Device::Cpu;

        let full = T5::load(&cfg, &shards, DType::F32, &cpu)
            .unwrap()
            .encode(&ids, &cpu)
            .unwrap();
        let quantized = T5::load_gguf(&cfg, &gguf, T5Quant::Q8_0, &cpu)
            .unwrap()
            .encode(&ids, &cpu)
            .unwrap();
        let rms = |t: &Tensor| {
            t.sqr()
                .unwrap()
                .mean_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                .sqrt()
        };
        let relative = |t: &Tensor| rms(&(&full - t).unwrap()) / rms(&full);

        // The same file under a wrong map (q and k swapped), for scale: on
        // random weights 8-bit noise is amplified, but a wrong name is worse.
        let swapped = |n: &str| {
            let n = n
                .replace("attn_q", "attn_x")
                .replace("attn_k", "attn_q")
                .replace("attn_x", "attn_k");
            crate::flux::weights::gguf::t5_llama_to_hf(&n)
        };
        let vb = GgufFile::open(&gguf)
            .unwrap()
            .renamed_var_builder(&cpu, swapped)
            .unwrap();
        let wrong = QuantizedT5Encoder::load(vb, &cfg)
            .unwrap()
            .forward(&ids, &cpu)
            .unwrap();
        let (right, wrong) = (relative(&quantized), relative(&wrong));
        assert!(
            right < 0.2 && wrong > 4.0 * right,
            "relative RMS error {right}, with q and k swapped {wrong}"
        );

        crate::dev::rename_gguf_tensors(&gguf.path, crate::flux::weights::gguf::t5_llama_to_hf)
            .unwrap();
        let same = T5::load_gguf(&cfg, &gguf, T5Quant::Q8_0, &cpu)
            .unwrap()
            .encode(&ids, &cpu)
            .unwrap();
        assert_eq!(
            same.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            quantized.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
}
