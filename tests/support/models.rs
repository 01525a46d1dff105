//! Model files for tests: random bytes, and the tiny random-weight FLUX models.

use std::path::Path;

/// Writes `len` bytes of seeded pseudo-random data.
pub fn write_random(path: &Path, len: usize, seed: u64) {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; len];
    rng.fill_bytes(&mut data);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

/// Tiny random-weight FLUX models, written once per test binary (read-only)
/// and removed when it exits.
pub fn tiny_models() -> &'static Path {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    // A static is never dropped, so a `TempDir` in one would never be
    // removed: each run of each test binary left 62 MB in the temp folder.
    extern "C" fn remove() {
        if let Some(dir) = DIR.get() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        // SAFETY: `remove` is a plain function that only reads a static
        // set before it is registered.
        unsafe { libc::atexit(remove) };
        schnell::dev::write_tiny_models(&dir).unwrap();
        dir
    })
}

/// A private copy of the tiny models, for tests that break a file.
pub fn tiny_copy() -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    for entry in walkdir::WalkDir::new(tiny_models()) {
        let entry = entry.unwrap();
        let to = copy
            .path()
            .join(entry.path().strip_prefix(tiny_models()).unwrap());
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&to).unwrap();
        } else {
            std::fs::copy(entry.path(), &to).unwrap();
        }
    }
    copy
}
