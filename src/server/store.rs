//! Finished images kept for a while, for `response_format: "url"`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Images by id, each with its content type; expired ones are dropped on
/// every insert, and the store never holds more than `max` images.
pub struct ImageStore {
    ttl: Duration,
    max: usize,
    images: Mutex<HashMap<String, Stored>>,
}

struct Stored {
    bytes: Bytes,
    content_type: &'static str,
    expires: Instant,
}

impl ImageStore {
    pub fn new(ttl: Duration, max: usize) -> Self {
        Self {
            ttl,
            max,
            images: Mutex::default(),
        }
    }

    /// Keeps an image; returns its id, unguessable (128 random bits), so the
    /// URL itself is the capability to read it.
    pub fn put(&self, bytes: Vec<u8>, content_type: &'static str) -> String {
        let id = format!("{:032x}", rand::random::<u128>());
        let now = Instant::now();
        let mut images = self.images.lock().expect("not poisoned");
        images.retain(|_, s| s.expires > now);
        while images.len() >= self.max {
            let oldest = images
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
                .expect("not empty");
            images.remove(&oldest);
        }
        images.insert(
            id.clone(),
            Stored {
                bytes: Bytes::from(bytes),
                content_type,
                expires: now + self.ttl,
            },
        );
        id
    }

    pub fn get(&self, id: &str) -> Option<(Bytes, &'static str)> {
        let images = self.images.lock().expect("not poisoned");
        images
            .get(id)
            .filter(|s| s.expires > Instant::now())
            .map(|s| (s.bytes.clone(), s.content_type))
    }
}
