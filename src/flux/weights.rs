//! Local weight files, memory-mapped, with their Hub names for errors.

use std::fmt;
use std::path::PathBuf;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use super::FluxError;
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
        std::fs::read(&self.path).map_err(|e| FluxError::Load {
            file: self.to_string(),
            reason: e.to_string(),
        })
    }
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
        unsafe { MmapedSafetensors::new(&f.path) }.map_err(|e| FluxError::Load {
            file: f.to_string(),
            reason: format!(
                "not a valid safetensors file: {}",
                super::error::candle_message(&e)
            ),
        })?;
    }
    let paths: Vec<&PathBuf> = files.iter().map(|f| &f.path).collect();
    // SAFETY: as above.
    unsafe { VarBuilder::from_mmaped_safetensors(&paths, dtype, device) }.map_err(|e| {
        FluxError::Load {
            file: files
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            reason: e.to_string(),
        }
    })
}
