//! Prompts to token ids, and the two text encoders.

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::clip::text_model::{ClipTextConfig, ClipTextTransformer};
use candle_transformers::models::t5;
use tokenizers::Tokenizer;

use super::weights::{mmap, Named};
use super::FluxError;

/// T5 sees 256 tokens with schnell (FLUX.1-dev uses 512).
pub const T5_TOKENS: usize = 256;
/// CLIP's position embeddings stop at 77.
pub const CLIP_TOKENS: usize = 77;

const CLIP_END: &str = "<|endoftext|>";
const T5_PAD: &str = "<pad>";

/// A prompt ready for both encoders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptTokens {
    /// Exactly [`T5_TOKENS`] ids, padded.
    pub t5: Vec<u32>,
    /// Exactly [`CLIP_TOKENS`] ids, padded with the end token.
    pub clip: Vec<u32>,
    /// Where CLIP's (first) end token is: its hidden state is the pooled output.
    pub clip_end: usize,
    /// Truncation notices, worded for the user.
    pub warnings: Vec<String>,
}

/// Both tokenizers, loaded from their `tokenizer.json` files.
pub struct Tokenizers {
    t5: Tokenizer,
    clip: Tokenizer,
    t5_pad: u32,
    clip_end: u32,
}

fn load_tokenizer(file: &Named) -> Result<Tokenizer, FluxError> {
    Tokenizer::from_file(&file.path).map_err(|e| FluxError::Load {
        file: file.to_string(),
        reason: format!("not a tokenizer.json: {e}"),
    })
}

impl Tokenizers {
    /// Blocking: reads two files. Call from the engine's thread.
    pub fn load(t5: &Named, clip: &Named) -> Result<Self, FluxError> {
        let t5_tok = load_tokenizer(t5)?;
        let clip_tok = load_tokenizer(clip)?;
        let clip_end = clip_tok
            .token_to_id(CLIP_END)
            .ok_or_else(|| FluxError::Load {
                file: clip.to_string(),
                reason: format!("no {CLIP_END} token"),
            })?;
        Ok(Self {
            t5_pad: t5_tok.token_to_id(T5_PAD).unwrap_or(0),
            t5: t5_tok,
            clip: clip_tok,
            clip_end,
        })
    }

    /// Pads or truncates to what the encoders take. Truncation keeps each
    /// sequence's final token (T5's `</s>`, CLIP's end token, which CLIP's
    /// pooling reads) and is reported, not refused.
    pub fn tokenize(&self, prompt: &str) -> Result<PromptTokens, FluxError> {
        let mut warnings = Vec::new();
        let encode = |tok: &Tokenizer, name: &str| {
            tok.encode(prompt, true).map_err(|e| FluxError::Compute {
                stage: "tokenization",
                reason: format!("{name}: {e}"),
            })
        };
        let t5 = encode(&self.t5, "T5")?;
        let clip = encode(&self.clip, "CLIP")?;
        let t5 = fit(prompt, &t5, T5_TOKENS, self.t5_pad, "T5", &mut warnings);
        let clip_len = clip.get_ids().len().min(CLIP_TOKENS);
        let mut clip = fit(
            prompt,
            &clip,
            CLIP_TOKENS,
            self.clip_end,
            "CLIP",
            &mut warnings,
        );
        // The end token must be where pooling looks, even if the tokenizer
        // added none.
        let clip_end = clip_len.saturating_sub(1);
        clip[clip_end] = self.clip_end;
        Ok(PromptTokens {
            t5,
            clip,
            clip_end,
            warnings,
        })
    }
}

/// `len` ids: truncated keeping the last (special) token, or padded.
fn fit(
    prompt: &str,
    encoding: &tokenizers::Encoding,
    len: usize,
    pad: u32,
    name: &str,
    warnings: &mut Vec<String>,
) -> Vec<u32> {
    let ids = encoding.get_ids();
    if let Some(dropped) = crate::web::tokens::dropped_text(prompt, encoding, len) {
        let shown: String = dropped.chars().take(60).collect();
        let more = if shown.len() < dropped.len() {
            "…"
        } else {
            ""
        };
        warnings.push(format!(
            "the prompt is {} {name} tokens; {name} reads the first {len}, so it ignores \"{shown}{more}\"",
            ids.len()
        ));
        let mut kept = ids[..len - 1].to_vec();
        kept.push(*ids.last().expect("longer than len"));
        kept
    } else {
        let mut padded = ids.to_vec();
        padded.resize(len, pad);
        padded
    }
}

/// T5's encoder. The weights may be one file or shards; google's file also
/// holds a decoder, which is never read.
pub struct T5 {
    model: t5::T5EncoderModel,
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
        Ok(Self { model })
    }

    /// (1, [`T5_TOKENS`], d_model)
    pub fn encode(&mut self, ids: &[u32], device: &Device) -> Result<Tensor, FluxError> {
        let ids = Tensor::new(ids, device)
            .and_then(|t| t.unsqueeze(0))
            .map_err(FluxError::compute("T5 encoding"))?;
        self.model
            .forward(&ids)
            .map_err(FluxError::compute("T5 encoding"))
    }
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
    let names: Vec<String> = files.iter().map(ToString::to_string).collect();
    FluxError::Load {
        file: names.join(", "),
        reason: format!("the weights do not fit the config: {e}"),
    }
}
