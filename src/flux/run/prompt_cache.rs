//! The text encoders' outputs for recent prompts, so that a seed sweep, a
//! request for `n` images or a prompt sent again skips T5 and CLIP (and, in
//! low-memory mode, loading them).

use candle_core::Tensor;
use lru::LruCache;

use crate::flux::weights::local::LocalFiles;

/// What is kept per prompt: T5's sequence and CLIP's pooled vector.
#[derive(Clone, Debug)]
pub struct Embeddings {
    pub t5: Tensor,
    pub clip: Tensor,
}

impl Embeddings {
    fn bytes(&self) -> usize {
        [&self.t5, &self.clip]
            .iter()
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }
}

/// A prompt, for the encoders that read it: the same text through other
/// weights (another `--quant` for T5) is another entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PromptKey {
    prompt: String,
    encoders: String,
}

impl PromptKey {
    pub fn new(prompt: &str, files: &LocalFiles) -> Self {
        let t5: Vec<String> = files
            .t5_weights
            .iter()
            .map(|f| f.file.to_string())
            .collect();
        Self {
            prompt: prompt.to_string(),
            encoders: format!("{} | {}", t5.join(", "), files.clip_weights.file),
        }
    }
}

/// Least recently used first out, within a byte budget.
pub struct PromptCache {
    entries: LruCache<PromptKey, Embeddings>,
    bytes: usize,
    budget: usize,
}

impl PromptCache {
    /// 64 MiB: sixteen prompts of the real model's T5 output in f32 (4 MiB
    /// each), within the memory estimate's allowance for the runtime.
    pub const DEFAULT_BUDGET: usize = 64 << 20;

    pub fn new(budget: usize) -> Self {
        Self {
            entries: LruCache::unbounded(),
            bytes: 0,
            budget,
        }
    }

    pub fn get(&mut self, key: &PromptKey) -> Option<Embeddings> {
        self.entries.get(key).cloned()
    }

    /// Keeps `embeddings` for `key`, dropping the least recently used
    /// entries until the budget holds; an entry larger than the whole budget
    /// is not kept.
    pub fn put(&mut self, key: PromptKey, embeddings: Embeddings) {
        let size = embeddings.bytes();
        if size > self.budget {
            return;
        }
        if let Some(old) = self.entries.put(key, embeddings) {
            self.bytes -= old.bytes();
        }
        self.bytes += size;
        while self.bytes > self.budget {
            match self.entries.pop_lru() {
                Some((_, gone)) => self.bytes -= gone.bytes(),
                None => break,
            }
        }
    }

    /// Bytes held, within the budget.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

impl Default for PromptCache {
    fn default() -> Self {
        Self::new(Self::DEFAULT_BUDGET)
    }
}

/// For tests: room for `n` entries of `bytes` each.
#[cfg(test)]
fn sized(n: usize, bytes: usize) -> PromptCache {
    PromptCache::new(n * bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn key(prompt: &str) -> PromptKey {
        PromptKey {
            prompt: prompt.into(),
            encoders: "t5 | clip".into(),
        }
    }

    /// 100 f32 values in all: 400 bytes.
    fn embeddings(value: f32) -> Embeddings {
        let t = |n: usize| Tensor::full(value, n, &Device::Cpu).unwrap();
        Embeddings {
            t5: t(90),
            clip: t(10),
        }
    }

    fn first(e: &Embeddings) -> f32 {
        e.t5.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap()[0]
    }

    #[test]
    fn the_least_recently_used_prompt_goes_first() {
        let mut cache = sized(2, 400);
        cache.put(key("a"), embeddings(1.0));
        cache.put(key("b"), embeddings(2.0));
        assert_eq!(first(&cache.get(&key("a")).unwrap()), 1.0);
        cache.put(key("c"), embeddings(3.0));
        assert!(cache.get(&key("b")).is_none(), "b was used least recently");
        assert_eq!(cache.len(), 2);
        // The same key again replaces its entry without growing the cache.
        cache.put(key("a"), embeddings(4.0));
        assert_eq!(first(&cache.get(&key("a")).unwrap()), 4.0);
        assert_eq!((cache.len(), cache.bytes), (2, 800));
        // Other encoders are another entry.
        let other = PromptKey {
            encoders: "t5-q8 | clip".into(),
            ..key("a")
        };
        assert!(cache.get(&other).is_none());
        // An entry over the whole budget is not kept, and evicts nothing.
        let mut tiny = sized(1, 100);
        tiny.put(key("a"), embeddings(1.0));
        assert_eq!(tiny.len(), 0);
    }
}
