//! The encoders' token limits and truncation rule, shared by the engine's
//! text encoders and the browser's prompt box, which shows how much
//! of a prompt T5 (256 tokens) and CLIP (77) will read and which words fall
//! past the limit: the same tokenizers and the same rule on both.

use tokenizers::{Encoding, Tokenizer};

/// T5 reads 256 tokens with schnell (FLUX.1-dev reads 512).
pub const T5_LIMIT: usize = 256;
/// CLIP's position embeddings stop at 77.
pub const CLIP_LIMIT: usize = 77;

/// What each encoder makes of a prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptCounts {
    /// T5's tokens, special ones included.
    pub t5: usize,
    /// CLIP's tokens, special ones included.
    pub clip: usize,
    /// The text T5 ignores, if any.
    pub t5_dropped: Option<String>,
    /// The text CLIP ignores, if any.
    pub clip_dropped: Option<String>,
}

/// Both tokenizers, from their `tokenizer.json` bytes.
pub struct TokenCounter {
    t5: Tokenizer,
    clip: Tokenizer,
}

impl TokenCounter {
    /// Loads T5's and CLIP's tokenizers from their `tokenizer.json` bytes;
    /// the error names the one that is unusable.
    pub fn from_json(t5: &[u8], clip: &[u8]) -> Result<Self, String> {
        let load = |bytes: &[u8], name: &str| {
            Tokenizer::from_bytes(bytes)
                .map(without_own_padding)
                .map_err(|e| format!("the {name} tokenizer.json is unusable: {e}"))
        };
        Ok(Self {
            t5: load(t5, "T5")?,
            clip: load(clip, "CLIP")?,
        })
    }

    /// How many tokens each encoder makes of `prompt`, and what it ignores.
    pub fn count(&self, prompt: &str) -> Result<PromptCounts, String> {
        let encode = |tok: &Tokenizer| tok.encode(prompt, true).map_err(|e| e.to_string());
        let (t5, clip) = (encode(&self.t5)?, encode(&self.clip)?);
        Ok(PromptCounts {
            t5: t5.len(),
            clip: clip.len(),
            t5_dropped: dropped_text(prompt, &t5, T5_LIMIT),
            clip_dropped: dropped_text(prompt, &clip, CLIP_LIMIT),
        })
    }
}

/// Turns off the padding and truncation a `tokenizer.json` may configure:
/// both sides pad and truncate to the encoders' lengths themselves, with the
/// rule above, whatever the file says.
pub fn without_own_padding(mut tokenizer: Tokenizer) -> Tokenizer {
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(None)
        .expect("no truncation is always valid");
    tokenizer
}

/// The part of `prompt` an encoder reading `limit` tokens ignores. Truncation
/// keeps the first `limit - 1` tokens and the final special token, so the
/// first one dropped is at `limit - 1`.
pub fn dropped_text(prompt: &str, encoding: &Encoding, limit: usize) -> Option<String> {
    if encoding.len() <= limit {
        return None;
    }
    let start = encoding
        .get_offsets()
        .get(limit - 1)
        .map_or(prompt.len(), |(s, _)| *s);
    Some(prompt.get(start..).unwrap_or("").trim().to_string())
}
