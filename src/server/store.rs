//! Finished images kept for a while, for `response_format: "url"`: in memory
//! (this process only, the newest 256), or in a folder that replicas share.

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use crate::protocol::OutputFormat;

/// Images by file name (`<32 hex digits>.<png|jpeg|webp>`); the 128 random bits
/// make the URL itself the capability to read the image.
pub enum ImageStore {
    Memory(MemoryStore),
    Dir(DirStore),
}

/// The extensions served, with their content types.
const FORMATS: [OutputFormat; 3] = [OutputFormat::Png, OutputFormat::Jpeg, OutputFormat::Webp];

/// A fresh, unguessable file name.
fn new_name(ext: &str) -> String {
    format!("{:032x}.{ext}", rand::random::<u128>())
}

/// The content type of a valid image file name; `None` for anything else,
/// so no name from a request can reach outside the store.
fn content_type(name: &str) -> Option<&'static str> {
    let (id, ext) = name.split_once('.')?;
    let valid_id = id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    FORMATS
        .iter()
        .find(|f| f.name() == ext)
        .filter(|_| valid_id)
        .map(|f| f.content_type())
}

impl ImageStore {
    /// Images kept in memory for `ttl`, at most `max` of them.
    pub fn in_memory(ttl: Duration, max: usize, max_bytes: usize) -> Self {
        Self::Memory(MemoryStore {
            ttl,
            max,
            max_bytes,
            images: Mutex::default(),
        })
    }

    /// Bytes of images held in memory (none for a folder).
    pub fn bytes_in_memory(&self) -> usize {
        match self {
            Self::Memory(store) => {
                let images = store.images.lock().expect("not poisoned");
                images.values().map(|(bytes, _)| bytes.len()).sum()
            }
            Self::Dir(_) => 0,
        }
    }

    /// A folder, created if missing, checked writable.
    pub async fn in_dir(dir: &Path, max_bytes: u64, ttl: Duration) -> io::Result<Self> {
        let dir = dir.to_path_buf();
        let checked = dir.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&checked)?;
            let (probe, _) = create_temp(&checked)?;
            std::fs::remove_file(probe)
        })
        .await
        .map_err(io::Error::other)??;
        Ok(Self::Dir(DirStore {
            dir,
            max_bytes,
            ttl,
        }))
    }

    /// Keeps an image; returns its file name.
    pub async fn put(&self, bytes: Vec<u8>, format: OutputFormat) -> io::Result<String> {
        let name = new_name(format.name());
        match self {
            Self::Memory(store) => store.put(name.clone(), bytes),
            Self::Dir(store) => store.put(name.clone(), bytes).await?,
        }
        Ok(name)
    }

    /// The image and its content type, if `name` is one and has not expired.
    pub async fn get(&self, name: &str) -> Option<(Bytes, &'static str)> {
        let content_type = content_type(name)?;
        let bytes = match self {
            Self::Memory(store) => store.get(name)?,
            Self::Dir(store) => store.get(name).await?,
        };
        Some((bytes, content_type))
    }
}

/// This process's images: expired ones are dropped on every insert, and the
/// store never holds more than `max` images nor `max_bytes` (the oldest go
/// first; the newest always stays).
pub struct MemoryStore {
    ttl: Duration,
    max: usize,
    max_bytes: usize,
    images: Mutex<HashMap<String, (Bytes, Instant)>>,
}

impl MemoryStore {
    fn put(&self, name: String, mut bytes: Vec<u8>) {
        let now = Instant::now();
        // What is counted is what is held.
        bytes.shrink_to_fit();
        let mut images = self.images.lock().expect("not poisoned");
        images.retain(|_, (_, expires)| *expires > now);
        let mut held: usize = images.values().map(|(b, _)| b.len()).sum();
        while !images.is_empty()
            && (images.len() >= self.max || held + bytes.len() > self.max_bytes)
        {
            let oldest = images
                .iter()
                .min_by_key(|(_, (_, expires))| *expires)
                .map(|(k, _)| k.clone())
                .expect("not empty");
            if let Some((gone, _)) = images.remove(&oldest) {
                held -= gone.len();
            }
        }
        images.insert(name, (Bytes::from(bytes), now + self.ttl));
    }

    fn get(&self, name: &str) -> Option<Bytes> {
        let images = self.images.lock().expect("not poisoned");
        images
            .get(name)
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(bytes, _)| bytes.clone())
    }
}

/// Files being written start with this; they are never served.
const TEMP_PREFIX: &str = ".tmp-";
/// A temporary file this old was left by a crash.
const STALE_TEMP: Duration = Duration::from_secs(600);

/// A folder of `<id>.<ext>` files, each written to a temporary file and
/// renamed into place, so that no reader (in any replica) sees half an
/// image. Its age is its modification time. After each write, expired images
/// are deleted, then the oldest until the folder is within `max_bytes` (the
/// newest image always stays).
pub struct DirStore {
    dir: PathBuf,
    max_bytes: u64,
    ttl: Duration,
}

impl DirStore {
    async fn put(&self, name: String, bytes: Vec<u8>) -> io::Result<()> {
        let (dir, max_bytes, ttl) = (self.dir.clone(), self.max_bytes, self.ttl);
        tokio::task::spawn_blocking(move || {
            let (temp, mut file) = create_temp(&dir)?;
            let written = file
                .write_all(&bytes)
                .and_then(|()| std::fs::rename(&temp, dir.join(&name)));
            if let Err(e) = written {
                let _ = std::fs::remove_file(&temp);
                return Err(e);
            }
            if let Err(e) = evict(&dir, &name, max_bytes, ttl) {
                tracing::warn!(error = %e, "cleaning the image folder failed");
            }
            Ok(())
        })
        .await
        .map_err(io::Error::other)?
    }

    async fn get(&self, name: &str) -> Option<Bytes> {
        let path = self.dir.join(name);
        let meta = tokio::fs::metadata(&path).await.ok()?;
        if !meta.is_file() || expired(meta.modified().ok(), self.ttl) {
            return None;
        }
        tokio::fs::read(&path).await.ok().map(Bytes::from)
    }
}

/// A new, empty temporary file in `dir`, readable by the other replicas
/// whatever the umask.
fn create_temp(dir: &Path) -> io::Result<(PathBuf, std::fs::File)> {
    let path = dir.join(format!("{TEMP_PREFIX}{:032x}", rand::random::<u128>()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o644);
    let file = options.open(&path)?;
    Ok((path, file))
}

fn expired(modified: Option<SystemTime>, ttl: Duration) -> bool {
    modified
        .and_then(|m| m.elapsed().ok())
        .is_some_and(|age| age >= ttl)
}

/// Deletes expired images and stale temporary files, then the oldest images
/// until the folder is within `max_bytes`, keeping `newest`. Another replica
/// may delete the same files at the same time: a file already gone is fine.
fn evict(dir: &Path, newest: &str, max_bytes: u64, ttl: Duration) -> io::Result<()> {
    let remove = |name: &str| match std::fs::remove_file(dir.join(name)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    };
    let mut images = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let modified = meta.modified().ok();
        if name.starts_with(TEMP_PREFIX) {
            if expired(modified, STALE_TEMP) {
                remove(&name)?;
            }
        } else if content_type(&name).is_some() {
            if name != newest && expired(modified, ttl) {
                remove(&name)?;
            } else {
                images.push((modified, name, meta.len()));
            }
        }
    }
    let mut total: u64 = images.iter().map(|(_, _, len)| len).sum();
    images.sort();
    for (_, name, len) in images {
        if total <= max_bytes {
            break;
        }
        if name != newest {
            remove(&name)?;
            total -= len;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_image_names_are_valid() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(content_type(&format!("{id}.png")), Some("image/png"));
        assert_eq!(content_type(&format!("{id}.jpeg")), Some("image/jpeg"));
        assert_eq!(content_type(&format!("{id}.webp")), Some("image/webp"));
        for bad in [
            format!("{id}.gif"),
            id.to_string(),
            id.to_uppercase() + ".png",
            format!("../{id}.png"),
            format!("{}.png", &id[1..]),
            format!(".tmp-{id}.png"),
            format!("{id}.png/.."),
        ] {
            assert_eq!(content_type(&bad), None, "{bad}");
        }
    }

    #[test]
    fn the_memory_store_keeps_within_its_count_and_its_bytes() {
        let ImageStore::Memory(store) = ImageStore::in_memory(Duration::from_secs(60), 4, 1000)
        else {
            unreachable!()
        };
        let held = |store: &MemoryStore| {
            let images = store.images.lock().unwrap();
            (
                images.len(),
                images.values().map(|(b, _)| b.len()).sum::<usize>(),
            )
        };
        for i in 0..10 {
            store.put(format!("small{i}"), vec![0; 100]);
        }
        assert_eq!(held(&store), (4, 400), "the count");
        store.put("big".into(), vec![0; 901]);
        assert_eq!(held(&store), (1, 901), "the bytes: the oldest went");
        assert!(store.get("big").is_some());
        store.put("huge".into(), vec![0; 5000]);
        assert_eq!(held(&store), (1, 5000), "the newest always stays");
    }
}
