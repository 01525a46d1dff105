//! Random weights as GGUF, laid out as city96's files are: the transformer
//! under BFL's names with its block matrices quantized and everything else
//! F16; T5 under llama.cpp's names with its matrices quantized, norms F32
//! and the relative attention bias F16. Written one tensor at a time, the
//! quantizing spread over the machine's cores.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};

use super::error::DevResult;
use super::random::Recorded;
use crate::flux::weights::gguf::{
    ggml_type_id, is_flux_block_matrix, layout, t5_hf_to_llama, write_header, write_tensor_data,
    ALIGNMENT,
};
use crate::flux::{Quant, T5Quant};
use crate::hub::HubFile;

/// A tensor to write: its name in the file, its values, its type.
struct Planned<'a> {
    name: String,
    tensor: &'a Recorded,
    dtype: GgmlDType,
}

/// city96's FLUX layout of type `quant`.
pub fn write_flux(path: &Path, tensors: &[Recorded], quant: Quant) -> DevResult<()> {
    let block_type = quant.ggml().ok_or("`none` is not a GGUF type")?;
    let planned = tensors
        .iter()
        .map(|t| Planned {
            name: t.name.clone(),
            tensor: t,
            dtype: if is_flux_block_matrix(&t.name) && t.dims.len() == 2 {
                block_type
            } else {
                GgmlDType::F16
            },
        })
        .collect();
    let metadata = [
        ("general.architecture", Value::String("flux".into())),
        ("general.quantization_version", Value::U32(2)),
        ("general.file_type", Value::U32(ggml_type_id(block_type))),
    ];
    write(path, &metadata, planned)
}

/// city96's T5 encoder layout of type `quant`. llama.cpp's `_M` and `_L`
/// mixes give `attn_v` and `ffn_down` a larger type (in every other layer
/// for `_M`), roughly as llama-quantize does, so that loaders meet mixed
/// files.
pub fn write_t5(path: &Path, tensors: &[Recorded], quant: T5Quant, layers: usize) -> DevResult<()> {
    let base = quant.ggml().ok_or("`none` is not a GGUF type")?;
    let larger = match quant {
        T5Quant::Q3KL => Some((GgmlDType::Q5K, 1)),
        T5Quant::Q3KM => Some((GgmlDType::Q4K, 2)),
        T5Quant::Q4KM | T5Quant::Q5KM => Some((GgmlDType::Q6K, 2)),
        _ => None,
    };
    let mut planned = Vec::new();
    for t in tensors {
        let Some(name) = t5_hf_to_llama(&t.name) else {
            // The encoder-only file has no decoder and no `encoder.embed_tokens`.
            continue;
        };
        let layer: Option<usize> = name
            .strip_prefix("enc.blk.")
            .and_then(|r| r.split('.').next())
            .and_then(|i| i.parse().ok());
        let dtype = if name.contains("norm") {
            GgmlDType::F32
        } else if name.contains("attn_rel_b") {
            GgmlDType::F16
        } else {
            match (larger, layer) {
                (Some((big, every)), Some(i))
                    if (name.contains("attn_v") || name.contains("ffn_down")) && i % every == 0 =>
                {
                    big
                }
                _ => base,
            }
        };
        planned.push(Planned {
            name,
            tensor: t,
            dtype,
        });
    }
    let metadata = [
        ("general.architecture", Value::String("t5encoder".into())),
        ("general.file_type", Value::U32(ggml_type_id(base))),
        ("t5encoder.block_count", Value::U32(layers as u32)),
        ("t5encoder.attention.relative_buckets_count", Value::U32(32)),
        (
            "t5encoder.attention.layer_norm_rms_epsilon",
            Value::F32(1e-6),
        ),
    ];
    write(path, &metadata, planned)
}

/// The header first (every size is known from shapes and types), then each
/// tensor's data, quantized a few at a time in parallel and written in order.
fn write(path: &Path, metadata: &[(&str, Value)], mut planned: Vec<Planned>) -> DevResult<()> {
    planned.sort_by(|a, b| a.name.cmp(&b.name));
    for p in &planned {
        let last = *p.tensor.dims.last().unwrap_or(&1);
        if last % p.dtype.block_size() != 0 {
            return Err(format!(
                "{}: its last dimension {last} is not a multiple of {:?}'s block of {}",
                p.name,
                p.dtype,
                p.dtype.block_size()
            )
            .into());
        }
    }
    let entries = layout(
        planned
            .iter()
            .map(|p| (p.name.clone(), p.tensor.dims.clone(), p.dtype)),
    );
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let mut out = BufWriter::with_capacity(8 << 20, File::create(path)?);
    write_header(&mut out, &metadata, &entries, ALIGNMENT)?;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    for batch in planned.chunks(workers) {
        let quantized: Vec<candle_core::Result<QTensor>> = std::thread::scope(|s| {
            let handles: Vec<_> = batch
                .iter()
                .map(|p| s.spawn(move || QTensor::quantize(&p.tensor.tensor()?, p.dtype)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("quantizing does not panic"))
                .collect()
        });
        for q in quantized {
            write_tensor_data(&mut out, &q?)?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Rewrites the GGUF file at `path` with its tensors renamed by `rename`
/// (others keep their names), for tests that break a file on purpose.
pub fn rename_gguf_tensors(path: &Path, rename: impl Fn(&str) -> Option<String>) -> DevResult<()> {
    let named = crate::flux::weights::named::Named {
        file: HubFile::new("local/file", "model.gguf"),
        path: path.to_path_buf(),
    };
    let bytes = crate::flux::weights::gguf::GgufFile::open(&named)?.renamed(rename)?;
    std::fs::write(path, bytes)?;
    Ok(())
}
