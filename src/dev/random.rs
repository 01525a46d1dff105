//! Random weights under real names: a model's constructor is run against a
//! recording backend that notes every tensor it asks for (name, shape), and
//! each tensor's values are drawn later, one at a time, from a generator
//! seeded by the model's seed and the tensor's name. So a real-size model is
//! written without ever holding it in memory, and every file made from the
//! same recording (safetensors or GGUF of any type) holds the same weights.

use std::sync::Mutex;

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

/// One tensor a constructor asked for.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The tensor's name in the checkpoint.
    pub name: String,
    /// Its shape.
    pub dims: Vec<usize>,
    /// A constant the constructor asked for (CLIP's `logit_scale`).
    constant: Option<f64>,
    seed: u64,
}

/// Runs `construct` against a backend that records what it asks for. The
/// tensors it gets back are zeros broadcast to their shape: no memory.
pub fn record(
    seed: u64,
    construct: impl FnOnce(VarBuilder) -> Result<()>,
) -> Result<Vec<Recorded>> {
    let recorder = Recorder {
        seed,
        seen: Mutex::new(Vec::new()),
    };
    let recorder = std::sync::Arc::new(recorder);
    construct(VarBuilder::from_backend(
        Box::new(Shared(recorder.clone())),
        DType::F32,
        Device::Cpu,
    ))?;
    let mut seen = std::mem::take(&mut *recorder.seen.lock().expect("not poisoned"));
    seen.sort_by(|a, b| a.name.cmp(&b.name));
    seen.dedup_by(|a, b| a.name == b.name);
    Ok(seen)
}

struct Recorder {
    seed: u64,
    seen: Mutex<Vec<Recorded>>,
}

struct Shared(std::sync::Arc<Recorder>);

impl SimpleBackend for Shared {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let constant = match h {
            Init::Const(c) if c != 0.0 => Some(c),
            _ => None,
        };
        self.0.seen.lock().expect("not poisoned").push(Recorded {
            name: name.to_string(),
            dims: s.dims().to_vec(),
            constant,
            seed: self.0.seed,
        });
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> Result<Tensor> {
        candle_core::bail!("the recorder cannot guess the shape of {name}")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        // Constructors that probe for optional tensors take the default path.
        false
    }
}

impl Recorded {
    /// Its number of elements.
    pub fn elem_count(&self) -> usize {
        self.dims.iter().product()
    }

    /// Is this a norm's scale (kept near 1: a zero scale would erase the
    /// signal), a bias (small), or a weight (uniform by fan-in)?
    fn range(&self) -> (f32, f32) {
        let name = &self.name;
        let vector = self.dims.len() <= 1;
        if vector
            && (name.ends_with("scale") || (name.contains("norm") && name.ends_with("weight")))
        {
            (0.9, 1.1)
        } else if name.ends_with("bias") {
            (-0.02, 0.02)
        } else {
            let fan_in: usize = self.dims.iter().skip(1).product::<usize>().max(1);
            let a = (1.0 / (fan_in as f32).sqrt()).min(0.5);
            (-a, a)
        }
    }

    /// The values, the same every time for this seed and name.
    pub fn values(&self) -> Vec<f32> {
        let n = self.elem_count();
        if let Some(c) = self.constant {
            return vec![c as f32; n];
        }
        let digest = Sha256::new()
            .chain_update(self.seed.to_le_bytes())
            .chain_update(self.name.as_bytes())
            .finalize();
        let mut key = [0u8; 32];
        key.copy_from_slice(&digest);
        let (lo, hi) = self.range();
        let scale = (hi - lo) / (1u32 << 24) as f32;
        let mut values = vec![0f32; n];
        // Each slice starts at its own word of the same ChaCha stream (one
        // word per value), so the values are those of one sequential pass.
        in_parallel(&mut values, 1, |start, slice| {
            let mut rng = rand_chacha::ChaCha8Rng::from_seed(key);
            rng.set_word_pos(start as u128);
            for v in slice {
                *v = lo + (rng.next_u32() >> 8) as f32 * scale;
            }
        });
        values
    }

    /// The values as an F32 tensor of the recorded shape.
    pub fn tensor(&self) -> Result<Tensor> {
        Tensor::from_vec(self.values(), self.dims.as_slice(), &Device::Cpu)
    }
}

/// Runs `fill(start, slice)` over `out` cut into one slice per core, each
/// starting at a multiple of `granule`; large tensors only, where a thread is
/// worth its start.
pub fn in_parallel<T: Send>(out: &mut [T], granule: usize, fill: impl Fn(usize, &mut [T]) + Sync) {
    const MIN_SLICE: usize = 1 << 20;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let slice_len = out
        .len()
        .div_ceil(threads)
        .max(MIN_SLICE)
        .next_multiple_of(granule);
    if out.len() <= slice_len {
        return fill(0, out);
    }
    std::thread::scope(|s| {
        for (i, slice) in out.chunks_mut(slice_len).enumerate() {
            let fill = &fill;
            s.spawn(move || fill(i * slice_len, slice));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_values_are_one_sequential_stream() {
        // Large enough to be cut into several slices on any machine.
        let dims = vec![3, 1 << 20];
        let t = Recorded {
            name: "blocks.0.weight".into(),
            dims: dims.clone(),
            constant: None,
            seed: 7,
        };
        let digest = Sha256::new()
            .chain_update(7u64.to_le_bytes())
            .chain_update(b"blocks.0.weight")
            .finalize();
        let mut rng = rand_chacha::ChaCha8Rng::from_seed(digest.into());
        let a = 1.0 / ((1 << 20) as f32).sqrt();
        let scale = 2.0 * a / (1u32 << 24) as f32;
        let sequential: Vec<f32> = (0..3 << 20)
            .map(|_| -a + (rng.next_u32() >> 8) as f32 * scale)
            .collect();
        assert_eq!(t.values(), sequential);
    }
}
