//! Small tokenizers for random-weight models: real formats (a T5-style
//! Unigram, a CLIP-style BPE), a few dozen whole words.

use tokenizers::Tokenizer;

use super::error::DevResult;

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
pub fn t5_tokenizer() -> DevResult<(Vec<u8>, usize)> {
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
pub fn clip_tokenizer() -> DevResult<(Vec<u8>, usize)> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::TokenCounter;

    /// The tiny tokenizers count and truncate as the real ones do (the
    /// shared rule in `crate::tokens`).
    #[test]
    fn counts_and_dropped_words_with_the_tiny_tokenizers() {
        let counter =
            TokenCounter::from_json(&t5_tokenizer().unwrap().0, &clip_tokenizer().unwrap().0)
                .unwrap();
        let long = counter.count(&"a red fox ".repeat(30)).unwrap();
        // 90 words, one token each. T5 adds the trailing space's "▁" and `</s>`;
        // CLIP its start and end tokens. CLIP keeps the start token and 75
        // words, so word 76 ("a") is the first dropped.
        assert_eq!((long.t5, long.clip), (92, 92));
        let dropped = long.clip_dropped.unwrap();
        assert!(dropped.starts_with("a red fox"), "{dropped}");
        assert_eq!(dropped.split_whitespace().count(), 90 - 75);
        assert_eq!(long.t5_dropped, None);
    }
}
