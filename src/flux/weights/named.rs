//! Local weight files, memory-mapped, with their Hub names for errors.

use std::fmt;
use std::path::PathBuf;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::flux::error::FluxError;
use crate::hub::{FetchedFile, HubFile};

/// A fetched file: what it is on the Hub and where it is on disk.
#[derive(Clone, Debug)]
pub struct Named {
    pub file: HubFile,
    pub path: PathBuf,
}

impl From<&FetchedFile> for Named {
    fn from(f: &FetchedFile) -> Self {
        Self {
            file: f.file.clone(),
            path: f.path().to_path_buf(),
        }
    }
}

impl fmt::Display for Named {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {}", self.file, self.path.display())
    }
}

impl Named {
    /// Blocking read of a small file (a config).
    pub fn read(&self) -> Result<Vec<u8>, FluxError> {
        std::fs::read(&self.path).map_err(|e| load_failure(std::slice::from_ref(self), e))
    }
}

/// A file that cannot be loaded, perhaps damaged in the cache: the error
/// names it and says how to check and repair it.
pub(crate) fn load_failure(files: &[Named], reason: impl fmt::Display) -> FluxError {
    FluxError::Load {
        file: files
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        reason: format!(
            "{reason}; if a cached file is damaged, {} checks it and downloads it again",
            verify_command(files.iter().map(|f| &f.file))
        ),
    }
}

/// `schnell fetch --verify` for exactly these files, one command per
/// repository and revision.
pub(crate) fn verify_command<'a>(files: impl IntoIterator<Item = &'a HubFile>) -> String {
    let mut groups: Vec<(&str, &str, Vec<&str>)> = Vec::new();
    for f in files {
        match groups
            .iter_mut()
            .find(|(repo, rev, _)| *repo == f.repo && *rev == f.revision)
        {
            Some((_, _, paths)) if !paths.contains(&f.path.as_str()) => paths.push(&f.path),
            Some(_) => {}
            None => groups.push((&f.repo, &f.revision, vec![&f.path])),
        }
    }
    groups
        .iter()
        .map(|(repo, rev, paths)| {
            format!(
                "`schnell fetch --verify --repo {repo} --revision {rev} --file {}`",
                paths.join(" ")
            )
        })
        .collect::<Vec<_>>()
        .join(" and ")
}

/// Memory-maps safetensors files into one `VarBuilder`. Each file is opened
/// alone first, so that a broken one is named. The mapped files are cache
/// blobs, which are never modified in place.
pub fn mmap(
    files: &[Named],
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>, FluxError> {
    for f in files {
        // SAFETY: cache blobs are immutable once renamed into place.
        unsafe { MmapedSafetensors::new(&f.path) }.map_err(|e| {
            load_failure(
                std::slice::from_ref(f),
                format!(
                    "not a valid safetensors file: {}",
                    crate::flux::error::candle_message(&e)
                ),
            )
        })?;
    }
    let paths: Vec<&PathBuf> = files.iter().map(|f| &f.path).collect();
    // SAFETY: as above.
    unsafe { VarBuilder::from_mmaped_safetensors(&paths, dtype, device) }
        .map_err(|e| load_failure(files, crate::flux::error::candle_message(&e)))
}
