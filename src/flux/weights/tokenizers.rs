//! Prompts to token ids: both tokenizers, loaded from their files, and each prompt cut or padded to what its encoder reads.

use crate::flux::error::FluxError;
use crate::flux::weights::named::{load_failure, Named};
use tokenizers::Tokenizer;

pub use crate::tokens::{CLIP_LIMIT as CLIP_TOKENS, T5_LIMIT as T5_TOKENS};

const CLIP_END: &str = "<|endoftext|>";
const T5_PAD: &str = "<pad>";

/// A prompt ready for both encoders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptTokens {
    /// Exactly [`T5_TOKENS`] ids, padded.
    pub t5: Vec<u32>,
    /// How many of them are the prompt's (special tokens included), not padding.
    pub t5_read: usize,
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
    pub(crate) clip_end: u32,
}

fn load_tokenizer(file: &Named) -> Result<Tokenizer, FluxError> {
    Tokenizer::from_file(&file.path)
        .map(crate::tokens::without_own_padding)
        .map_err(|e| {
            load_failure(
                std::slice::from_ref(file),
                format!("not a tokenizer.json: {e}"),
            )
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
        let t5_read = t5.len().min(T5_TOKENS);
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
        // The sequence ends with the end token, even if the tokenizer added
        // none; CLIP pools at the first end token, as transformers does, so
        // a prompt that spells out `<|endoftext|>` pools there.
        let last = clip_len.saturating_sub(1);
        clip[last] = self.clip_end;
        let clip_end = clip[..=last]
            .iter()
            .position(|&id| id == self.clip_end)
            .unwrap_or(last);
        Ok(PromptTokens {
            t5,
            t5_read,
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
    if let Some(dropped) = crate::tokens::dropped_text(prompt, encoding, len) {
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
