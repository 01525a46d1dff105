//! GGUF files: opening them with errors that name the file, checking that a
//! file holds the type its name promises, T5's llama.cpp tensor names, and a
//! header writer (for renaming at load time and for the random-model writer).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};

use candle_core::quantized::gguf_file::{Content, Value, ValueType};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Device;
use candle_transformers::quantized_var_builder::VarBuilder;

use crate::flux::error::FluxError;
use crate::flux::weights::named::{load_failure, Named};

/// GGUF's default data alignment.
pub const ALIGNMENT: u64 = 32;

fn load_error(file: &Named, reason: impl Into<String>) -> FluxError {
    load_failure(std::slice::from_ref(file), reason.into())
}

/// A GGUF file's header, read once.
pub struct GgufFile<'a> {
    pub named: &'a Named,
    pub content: Content,
}

impl<'a> GgufFile<'a> {
    /// Reads the header (blocking). Not GGUF, or a type candle cannot read,
    /// is an error naming the file.
    pub fn open(named: &'a Named) -> Result<Self, FluxError> {
        let file = File::open(&named.path).map_err(|e| load_error(named, e.to_string()))?;
        let content = Content::read(&mut BufReader::new(file)).map_err(|e| {
            let e = crate::flux::error::candle_message(&e);
            load_error(named, format!("not a GGUF file candle can read: {e}"))
        })?;
        Ok(Self { named, content })
    }

    /// Checks that the matrices named by `is_matrix` are mostly of `expected`,
    /// the type the file's name promises; a file of another type is an error
    /// naming one of its tensors.
    pub fn check_type(
        &self,
        expected: GgmlDType,
        is_matrix: impl Fn(&str) -> bool,
    ) -> Result<(), FluxError> {
        let mut counts: HashMap<GgmlDType, usize> = HashMap::new();
        let mut names: Vec<&String> = self.content.tensor_infos.keys().collect();
        names.sort();
        let matrices: Vec<&String> = names.into_iter().filter(|n| is_matrix(n)).collect();
        for name in &matrices {
            *counts
                .entry(self.content.tensor_infos[*name].ggml_dtype)
                .or_default() += 1;
        }
        let most = counts
            .iter()
            .max_by_key(|(dtype, n)| (**n, **dtype == expected))
            .map(|(dtype, _)| *dtype);
        match most {
            None => Err(load_error(
                self.named,
                "holds none of the model's block matrices (is it the right model?)",
            )),
            Some(found) if found == expected => Ok(()),
            Some(found) => {
                let example = matrices
                    .iter()
                    .find(|n| self.content.tensor_infos[**n].ggml_dtype == found)
                    .expect("counted above");
                Err(load_error(
                    self.named,
                    format!(
                        "tensor {example} is {found:?}, and so are {} of its {} block matrices, but the file's name promises {expected:?}",
                        counts[&found],
                        matrices.len()
                    ),
                ))
            }
        }
    }

    /// Every tensor, into memory or onto the device, under its own name.
    pub fn var_builder(&self, device: &Device) -> Result<VarBuilder, FluxError> {
        VarBuilder::from_gguf(&self.named.path, device)
            .map_err(|e| load_error(self.named, e.to_string()))
    }

    /// Every tensor under the names `rename` gives (others keep theirs),
    /// without touching the file on disk: a new header with the new names
    /// is put in front of the file's own tensor data, in memory, and candle
    /// reads that. Costs the file's size in memory while candle copies.
    pub fn renamed_var_builder(
        &self,
        device: &Device,
        rename: impl Fn(&str) -> Option<String>,
    ) -> Result<VarBuilder, FluxError> {
        let buffer = self.renamed(rename)?;
        VarBuilder::from_gguf_buffer(&buffer, device)
            .map_err(|e| load_error(self.named, e.to_string()))
    }

    /// The file's bytes with its tensors renamed; its metadata is dropped
    /// (candle reads none of it) but for the alignment.
    pub fn renamed(&self, rename: impl Fn(&str) -> Option<String>) -> Result<Vec<u8>, FluxError> {
        let named = self.named;
        let io = |e: std::io::Error| load_error(named, e.to_string());
        let mut infos: Vec<_> = self.content.tensor_infos.iter().collect();
        infos.sort_by_key(|(_, info)| info.offset);
        let entries: Vec<TensorEntry> = infos
            .iter()
            .map(|(name, info)| TensorEntry {
                name: rename(name).unwrap_or_else(|| (*name).clone()),
                dims: info.shape.dims().to_vec(),
                dtype: info.ggml_dtype,
                offset: info.offset,
            })
            .collect();
        let alignment = self.alignment();
        let alignment_kv = Value::U32(alignment as u32);
        let mut buffer = Vec::new();
        write_header(
            &mut buffer,
            &[("general.alignment", &alignment_kv)],
            &entries,
            alignment,
        )
        .map_err(io)?;
        let mut file = File::open(&named.path).map_err(io)?;
        let data_len =
            (file.metadata().map_err(io)?.len()).saturating_sub(self.content.tensor_data_offset);
        buffer
            .try_reserve_exact(data_len as usize)
            .map_err(|e| load_error(named, format!("no memory to rename its tensors: {e}")))?;
        file.seek(SeekFrom::Start(self.content.tensor_data_offset))
            .map_err(io)?;
        file.take(data_len).read_to_end(&mut buffer).map_err(io)?;
        Ok(buffer)
    }

    fn alignment(&self) -> u64 {
        match self.content.metadata.get("general.alignment") {
            Some(Value::U32(a)) => *a as u64,
            Some(Value::U64(a)) => *a,
            _ => ALIGNMENT,
        }
    }
}

/// Is this one of the FLUX transformer's block matrices (the quantized ones)?
pub fn is_flux_block_matrix(name: &str) -> bool {
    (name.starts_with("double_blocks.") || name.starts_with("single_blocks."))
        && name.ends_with(".weight")
        && !name.contains("norm")
}

/// Is this one of T5's matrices in llama.cpp's names (not a norm, not the
/// relative attention bias, which llama.cpp never quantizes)?
pub fn is_t5_matrix(name: &str) -> bool {
    name.starts_with("enc.blk.")
        && name.ends_with(".weight")
        && !name.contains("norm")
        && !name.contains("attn_rel_b")
}

/// llama.cpp's T5 encoder names beside the names candle's `quantized_t5`
/// reads (transformers' names). Per block, after `enc.blk.{i}.` and
/// `encoder.block.{i}.`.
const T5_BLOCK_NAMES: [(&str, &str); 10] = [
    ("attn_q.weight", "layer.0.SelfAttention.q.weight"),
    ("attn_k.weight", "layer.0.SelfAttention.k.weight"),
    ("attn_v.weight", "layer.0.SelfAttention.v.weight"),
    ("attn_o.weight", "layer.0.SelfAttention.o.weight"),
    (
        "attn_rel_b.weight",
        "layer.0.SelfAttention.relative_attention_bias.weight",
    ),
    ("attn_norm.weight", "layer.0.layer_norm.weight"),
    ("ffn_gate.weight", "layer.1.DenseReluDense.wi_0.weight"),
    ("ffn_up.weight", "layer.1.DenseReluDense.wi_1.weight"),
    ("ffn_down.weight", "layer.1.DenseReluDense.wo.weight"),
    ("ffn_norm.weight", "layer.1.layer_norm.weight"),
];
const T5_TOP_NAMES: [(&str, &str); 2] = [
    ("token_embd.weight", "shared.weight"),
    ("enc.output_norm.weight", "encoder.final_layer_norm.weight"),
];

/// llama.cpp's name → candle's; `None` for a name not in the map.
pub fn t5_llama_to_hf(name: &str) -> Option<String> {
    map_t5_name(name, false)
}

/// candle's name → llama.cpp's (for writing files as city96's are written).
pub fn t5_hf_to_llama(name: &str) -> Option<String> {
    map_t5_name(name, true)
}

fn map_t5_name(name: &str, to_llama: bool) -> Option<String> {
    fn pick<'a>(to_llama: bool, (llama, hf): (&'a str, &'a str)) -> (&'a str, &'a str) {
        if to_llama {
            (hf, llama)
        } else {
            (llama, hf)
        }
    }
    let pick = |pair| pick(to_llama, pair);
    for pair in T5_TOP_NAMES {
        let (from, to) = pick(pair);
        if name == from {
            return Some(to.to_string());
        }
    }
    let (from_prefix, to_prefix) = pick(("enc.blk.", "encoder.block."));
    let rest = name.strip_prefix(from_prefix)?;
    let (index, suffix) = rest.split_once('.')?;
    index.parse::<usize>().ok()?;
    T5_BLOCK_NAMES.into_iter().find_map(|pair| {
        let (from, to) = pick(pair);
        (suffix == from).then(|| format!("{to_prefix}{index}.{to}"))
    })
}

/// One tensor's entry in a GGUF header. `dims` in candle's (PyTorch) order;
/// `offset` from the start of the tensor data.
#[derive(Clone, Debug)]
pub struct TensorEntry {
    pub name: String,
    pub dims: Vec<usize>,
    pub dtype: GgmlDType,
    pub offset: u64,
}

impl TensorEntry {
    pub fn data_bytes(&self) -> u64 {
        let elems: usize = self.dims.iter().product();
        (elems / self.dtype.block_size() * self.dtype.type_size()) as u64
    }
}

/// Lays tensors out one after another, each padded to the alignment.
pub fn layout(
    tensors: impl IntoIterator<Item = (String, Vec<usize>, GgmlDType)>,
) -> Vec<TensorEntry> {
    let mut offset = 0;
    tensors
        .into_iter()
        .map(|(name, dims, dtype)| {
            let entry = TensorEntry {
                name,
                dims,
                dtype,
                offset,
            };
            offset += entry.data_bytes().div_ceil(ALIGNMENT) * ALIGNMENT;
            entry
        })
        .collect()
}

/// Writes a GGUF v3 header and pads it to `alignment`: tensor data follows.
pub fn write_header(
    w: &mut impl Write,
    metadata: &[(&str, &Value)],
    tensors: &[TensorEntry],
    alignment: u64,
) -> std::io::Result<u64> {
    let mut out = CountingWriter { inner: w, count: 0 };
    out.write_all(b"GGUF")?;
    out.write_all(&3u32.to_le_bytes())?;
    out.write_all(&(tensors.len() as u64).to_le_bytes())?;
    out.write_all(&(metadata.len() as u64).to_le_bytes())?;
    for (key, value) in metadata {
        write_string(&mut out, key)?;
        out.write_all(&value_type_id(value.value_type()).to_le_bytes())?;
        write_value(&mut out, value)?;
    }
    for t in tensors {
        write_string(&mut out, &t.name)?;
        out.write_all(&(t.dims.len() as u32).to_le_bytes())?;
        for d in t.dims.iter().rev() {
            out.write_all(&(*d as u64).to_le_bytes())?;
        }
        out.write_all(&ggml_type_id(t.dtype).to_le_bytes())?;
        out.write_all(&t.offset.to_le_bytes())?;
    }
    let padding = out.count.div_ceil(alignment) * alignment - out.count;
    out.write_all(&vec![0u8; padding as usize])?;
    Ok(out.count)
}

/// Writes one tensor's data and its padding.
pub fn write_tensor_data(w: &mut impl Write, tensor: &QTensor) -> std::io::Result<()> {
    let data = tensor.data().map_err(std::io::Error::other)?;
    w.write_all(&data)?;
    let padded = (data.len() as u64).div_ceil(ALIGNMENT) * ALIGNMENT;
    w.write_all(&vec![0u8; (padded - data.len() as u64) as usize])
}

struct CountingWriter<'a, W: Write> {
    inner: &'a mut W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// GGML's type id (candle's own mapping is private).
pub fn ggml_type_id(dtype: GgmlDType) -> u32 {
    match dtype {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}

/// GGUF's metadata value type id.
fn value_type_id(t: ValueType) -> u32 {
    match t {
        ValueType::U8 => 0,
        ValueType::I8 => 1,
        ValueType::U16 => 2,
        ValueType::I16 => 3,
        ValueType::U32 => 4,
        ValueType::I32 => 5,
        ValueType::F32 => 6,
        ValueType::Bool => 7,
        ValueType::String => 8,
        ValueType::Array => 9,
        ValueType::U64 => 10,
        ValueType::I64 => 11,
        ValueType::F64 => 12,
    }
}

fn write_string(w: &mut impl Write, s: &str) -> std::io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn write_value(w: &mut impl Write, value: &Value) -> std::io::Result<()> {
    match value {
        Value::U8(v) => w.write_all(&v.to_le_bytes()),
        Value::I8(v) => w.write_all(&v.to_le_bytes()),
        Value::U16(v) => w.write_all(&v.to_le_bytes()),
        Value::I16(v) => w.write_all(&v.to_le_bytes()),
        Value::U32(v) => w.write_all(&v.to_le_bytes()),
        Value::I32(v) => w.write_all(&v.to_le_bytes()),
        Value::U64(v) => w.write_all(&v.to_le_bytes()),
        Value::I64(v) => w.write_all(&v.to_le_bytes()),
        Value::F32(v) => w.write_all(&v.to_le_bytes()),
        Value::F64(v) => w.write_all(&v.to_le_bytes()),
        Value::Bool(v) => w.write_all(&[*v as u8]),
        Value::String(v) => write_string(w, v),
        Value::Array(values) => {
            let item_type = values.first().map_or(ValueType::U32, Value::value_type);
            if values.iter().any(|v| v.value_type() != item_type) {
                return Err(std::io::Error::other("a GGUF array mixes types"));
            }
            w.write_all(&value_type_id(item_type).to_le_bytes())?;
            w.write_all(&(values.len() as u64).to_le_bytes())?;
            values.iter().try_for_each(|v| write_value(w, v))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t5_names_map_both_ways() {
        for (llama, hf) in [
            ("token_embd.weight", "shared.weight"),
            (
                "enc.blk.23.attn_o.weight",
                "encoder.block.23.layer.0.SelfAttention.o.weight",
            ),
            (
                "enc.blk.0.attn_rel_b.weight",
                "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            ),
            (
                "enc.blk.7.ffn_gate.weight",
                "encoder.block.7.layer.1.DenseReluDense.wi_0.weight",
            ),
            (
                "enc.blk.7.ffn_norm.weight",
                "encoder.block.7.layer.1.layer_norm.weight",
            ),
            ("enc.output_norm.weight", "encoder.final_layer_norm.weight"),
        ] {
            assert_eq!(t5_llama_to_hf(llama).as_deref(), Some(hf));
            assert_eq!(t5_hf_to_llama(hf).as_deref(), Some(llama));
        }
        assert_eq!(t5_llama_to_hf("enc.blk.x.attn_q.weight"), None);
        assert_eq!(t5_llama_to_hf("dec.blk.0.attn_q.weight"), None);
    }

    #[test]
    fn a_written_header_reads_back_with_its_data() {
        let tensors = [
            (
                "a.weight",
                candle_core::Tensor::arange(0f32, 64., &Device::Cpu)
                    .unwrap()
                    .reshape((2, 32))
                    .unwrap(),
                GgmlDType::Q8_0,
            ),
            (
                "b",
                candle_core::Tensor::new(&[1f32, 2., 3.], &Device::Cpu).unwrap(),
                GgmlDType::F16,
            ),
        ];
        let q: Vec<(String, QTensor)> = tensors
            .iter()
            .map(|(n, t, d)| (n.to_string(), QTensor::quantize(t, *d).unwrap()))
            .collect();
        let entries = layout(
            q.iter()
                .map(|(n, t)| (n.clone(), t.shape().dims().to_vec(), t.dtype())),
        );
        let mut bytes = Vec::new();
        let arch = Value::String("flux".into());
        write_header(
            &mut bytes,
            &[("general.architecture", &arch)],
            &entries,
            ALIGNMENT,
        )
        .unwrap();
        for (_, t) in &q {
            write_tensor_data(&mut bytes, t).unwrap();
        }
        let mut cursor = std::io::Cursor::new(&bytes);
        let content = Content::read(&mut cursor).unwrap();
        assert_eq!(
            content.metadata["general.architecture"]
                .to_string()
                .unwrap(),
            "flux"
        );
        let b = content
            .tensor(&mut cursor, "b", &Device::Cpu)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap();
        assert_eq!(b.to_vec1::<f32>().unwrap(), [1., 2., 3.]);
        let a = content
            .tensor(&mut cursor, "a.weight", &Device::Cpu)
            .unwrap();
        assert_eq!(a.dtype(), GgmlDType::Q8_0);
        assert_eq!(a.shape().dims(), [2, 32]);
    }
}
