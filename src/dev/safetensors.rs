//! Random weights as safetensors, written one tensor at a time.

use std::borrow::Cow;
use std::path::Path;

use candle_core::DType;
use safetensors::tensor::{Dtype, View};
use serde_json::json;

use super::error::DevResult;
use super::json::json_bytes;
use super::random::{in_parallel, Recorded};

/// A tensor whose bytes are drawn only when the writer asks for them.
struct Lazy<'a> {
    tensor: &'a Recorded,
    dtype: DType,
}

impl View for Lazy<'_> {
    fn dtype(&self) -> Dtype {
        match self.dtype {
            DType::BF16 => Dtype::BF16,
            DType::F16 => Dtype::F16,
            _ => Dtype::F32,
        }
    }

    fn shape(&self) -> &[usize] {
        &self.tensor.dims
    }

    fn data(&self) -> Cow<'_, [u8]> {
        let values = self.tensor.values();
        let width = self.data_len() / values.len().max(1);
        let mut bytes = vec![0u8; self.data_len()];
        in_parallel(&mut bytes, width, |start, out| {
            let first = start / width;
            let values = &values[first..first + out.len() / width];
            for (v, out) in values.iter().zip(out.chunks_exact_mut(width)) {
                match self.dtype {
                    DType::BF16 => out.copy_from_slice(&half::bf16::from_f32(*v).to_le_bytes()),
                    DType::F16 => out.copy_from_slice(&half::f16::from_f32(*v).to_le_bytes()),
                    _ => out.copy_from_slice(&v.to_le_bytes()),
                }
            }
        });
        Cow::Owned(bytes)
    }

    fn data_len(&self) -> usize {
        let size = match self.dtype {
            DType::BF16 | DType::F16 => 2,
            _ => 4,
        };
        self.tensor.elem_count() * size
    }
}

/// Writes `tensors` in `dtype` (F32, F16 or BF16) to `path`.
pub fn write(path: &Path, tensors: &[Recorded], dtype: DType) -> DevResult<()> {
    let views = tensors
        .iter()
        .map(|t| (t.name.as_str(), Lazy { tensor: t, dtype }));
    safetensors::tensor::serialize_to_file(views, None, path)?;
    Ok(())
}

/// Two BF16 shards and their index (`weight_map`), as the FLUX repo's T5.
pub fn write_sharded(
    first: &Path,
    second: &Path,
    index: &Path,
    tensors: &[Recorded],
) -> DevResult<()> {
    let half = tensors.len() / 2;
    let file_name = |p: &Path| {
        p.file_name()
            .expect("a file")
            .to_string_lossy()
            .into_owned()
    };
    let mut weight_map = serde_json::Map::new();
    for (i, t) in tensors.iter().enumerate() {
        let shard = if i < half { first } else { second };
        weight_map.insert(t.name.clone(), json!(file_name(shard)));
    }
    let total: usize = tensors.iter().map(|t| t.elem_count() * 2).sum();
    write(first, &tensors[..half], DType::BF16)?;
    write(second, &tensors[half..], DType::BF16)?;
    let index_json = json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
    std::fs::write(index, json_bytes(&index_json))?;
    Ok(())
}
