//! The list of past results the browser keeps (newest first, bounded). The
//! images themselves are stored beside it by the app; this is the index.

use serde::{Deserialize, Serialize};

/// Results kept; older ones are dropped with their images.
pub const HISTORY_LIMIT: usize = 48;

/// One finished image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Made by [`HistoryEntry::id_for`]: digits and `-` only, safe in a URL.
    pub id: String,
    /// The prompt it was made from.
    pub prompt: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Denoising steps.
    pub steps: u32,
    /// The seed it was made with.
    pub seed: u64,
    /// Milliseconds since the Unix epoch.
    pub created_ms: u64,
}

impl HistoryEntry {
    /// The id of the image made at `created_ms` with `seed`.
    pub fn id_for(created_ms: u64, seed: u64) -> String {
        format!("{created_ms}-{seed}")
    }

    /// The name a download gets.
    pub fn file_name(&self) -> String {
        format!("schnell-{}-{}x{}.png", self.seed, self.width, self.height)
    }
}

/// The index, newest first.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// The images, newest first.
    pub entries: Vec<HistoryEntry>,
}

impl History {
    /// Reads a stored index. Entries whose id is not ours are dropped, so a
    /// tampered index cannot point the page at another URL.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let mut history: History = serde_json::from_slice(bytes)
            .map_err(|e| format!("the stored history is unreadable: {e}"))?;
        history
            .entries
            .retain(|e| !e.id.is_empty() && e.id.chars().all(|c| c.is_ascii_digit() || c == '-'));
        Ok(history)
    }

    /// The index as stored.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("plain data serialises")
    }

    /// Adds the newest entry; returns those that fell off the end.
    pub fn add(&mut self, entry: HistoryEntry) -> Vec<HistoryEntry> {
        self.entries.retain(|e| e.id != entry.id);
        self.entries.insert(0, entry);
        if self.entries.len() > HISTORY_LIMIT {
            self.entries.split_off(HISTORY_LIMIT)
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u64) -> HistoryEntry {
        HistoryEntry {
            id: HistoryEntry::id_for(1_000 + n, n),
            prompt: format!("prompt {n} ☕"),
            width: 256,
            height: 320,
            steps: 4,
            seed: n,
            created_ms: 1_000 + n,
        }
    }

    #[test]
    fn newest_first_bounded_and_round_trips() {
        let mut h = History::default();
        for n in 0..HISTORY_LIMIT as u64 {
            assert!(h.add(entry(n)).is_empty());
        }
        let evicted = h.add(entry(999));
        assert_eq!(evicted, vec![entry(0)]);
        assert_eq!(h.entries.len(), HISTORY_LIMIT);
        assert_eq!(h.entries[0], entry(999));
        assert_eq!(History::from_json(&h.to_json()).unwrap(), h);
        assert_eq!(h.entries[0].file_name(), "schnell-999-256x320.png");
    }

    #[test]
    fn foreign_ids_are_dropped_and_garbage_is_an_error() {
        let mut bad = entry(1);
        bad.id = "../../v1/models".into();
        let h = History {
            entries: vec![bad, entry(2)],
        };
        assert_eq!(
            History::from_json(&h.to_json()).unwrap().entries,
            vec![entry(2)]
        );
        assert!(History::from_json(b"not json").is_err());
    }
}
