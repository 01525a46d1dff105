//! Content digests as the Hub names them: sha256 for LFS files, the git blob
//! sha1 for everything else. The file functions block: call them from
//! `spawn_blocking`.

use std::io::{self, Read};

use sha1::Sha1;
use sha2::{Digest, Sha256};

/// How an ETag can be checked against content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EtagKind {
    /// 64 hex digits: the sha256 of the content (LFS files).
    Sha256,
    /// 40 hex digits: the git blob sha1 (`blob {len}\0` + content).
    GitSha1,
    /// Anything else; only the size can be checked.
    Opaque,
}

impl EtagKind {
    pub(crate) fn of(etag: &str) -> Self {
        let hex = etag.bytes().all(|b| b.is_ascii_hexdigit());
        match etag.len() {
            64 if hex => EtagKind::Sha256,
            40 if hex => EtagKind::GitSha1,
            _ => EtagKind::Opaque,
        }
    }
}

/// The digest of `len` bytes from `reader` in the given form.
pub(crate) fn digest(reader: &mut impl Read, len: u64, kind: EtagKind) -> io::Result<String> {
    match kind {
        EtagKind::Sha256 => hash_reader::<Sha256>(reader, Vec::new()),
        EtagKind::GitSha1 => hash_reader::<Sha1>(reader, format!("blob {len}\0").into_bytes()),
        EtagKind::Opaque => Ok(String::new()),
    }
}

/// In-memory content against the ETag that names it: `Some(actual)` on a mismatch.
#[cfg(any(target_arch = "wasm32", test))]
pub(crate) fn bytes_mismatch(bytes: &[u8], etag: &str) -> Option<String> {
    let kind = EtagKind::of(etag);
    if kind == EtagKind::Opaque {
        return None;
    }
    let actual =
        digest(&mut &bytes[..], bytes.len() as u64, kind).expect("reading memory cannot fail");
    (!actual.eq_ignore_ascii_case(etag)).then_some(actual)
}

/// The digest of a file in the given form.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn file_digest(path: &std::path::Path, kind: EtagKind) -> io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    digest(&mut file, len, kind)
}

fn hash_reader<D: Digest>(reader: &mut impl Read, prefix: Vec<u8>) -> io::Result<String> {
    let mut hasher = D::new();
    hasher.update(&prefix);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Checks a file against the ETag that will name its blob. `Ok(None)` when it
/// matches, `Ok(Some(actual))` when it does not.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn mismatch(path: &std::path::Path, etag: &str) -> io::Result<Option<String>> {
    let kind = EtagKind::of(etag);
    if kind == EtagKind::Opaque {
        return Ok(None);
    }
    let actual = file_digest(path, kind)?;
    Ok((!actual.eq_ignore_ascii_case(etag)).then_some(actual))
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    #[test]
    fn git_blob_sha1_matches_git() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"hello\n").unwrap();
        // `printf 'hello\n' | git hash-object --stdin`
        assert_eq!(
            file_digest(&p, EtagKind::GitSha1).unwrap(),
            "ce013625030ba8dba906f756967f9e9ca394464a"
        );
        assert_eq!(
            file_digest(&p, EtagKind::Sha256).unwrap(),
            "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
        );
        assert_eq!(
            mismatch(
                &p,
                "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
            )
            .unwrap(),
            None
        );
        assert!(mismatch(&p, &"0".repeat(64)).unwrap().is_some());
        assert_eq!(
            bytes_mismatch(b"hello\n", "ce013625030ba8dba906f756967f9e9ca394464a"),
            None
        );
        assert!(bytes_mismatch(b"hello!", "ce013625030ba8dba906f756967f9e9ca394464a").is_some());
    }
}
