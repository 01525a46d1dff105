//! One product with a random GGUF weight, timed, for
//! `benches/quantized_products.rs`: the two designs of the CPU's quantized
//! products side by side on FLUX's shapes.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use super::DevResult;
use crate::flux::model::cpu_ops::{self, QuantizedProduct};

/// A random `(n, k)` weight of `dtype` and `m` random input rows.
pub struct ProductCase {
    weight: QTensor,
    input: Tensor,
}

/// What [`ProductCase::time`] measured.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct ProductTiming {
    /// The fastest run, in seconds.
    pub seconds: f64,
    /// Multiply-adds times two, per second, in billions.
    pub gflops: f64,
    /// `‖ours − f32 panels‖ / ‖f32 panels‖` over the output.
    pub relative_error: f64,
}

impl ProductCase {
    /// Quantizes a random weight (values from a normal distribution, as a
    /// trained layer's roughly are).
    pub fn new(dtype: GgmlDType, m: usize, n: usize, k: usize) -> DevResult<Self> {
        let weight = Tensor::randn(0f32, 0.02, (n, k), &Device::Cpu)?;
        let weight = QTensor::quantize(&weight, dtype)?;
        let input = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
        Ok(Self { weight, input })
    }

    /// The best of `runs` products with `design`, and its distance from
    /// the f32 panels' result.
    pub fn time(&self, design: QuantizedProduct, runs: usize) -> DevResult<ProductTiming> {
        let (m, k) = self.input.dims2()?;
        let n = self.weight.shape().dims2()?.0;
        let product = |design| {
            cpu_ops::with_quantized_product(design, || {
                cpu_ops::linear(&self.input, &self.weight, None)
            })
        };
        let reference = product(QuantizedProduct::F32Panels)?;
        let mut seconds = f64::INFINITY;
        let mut ours = None;
        for _ in 0..runs.max(1) {
            let start = std::time::Instant::now();
            let out = product(design)?;
            seconds = seconds.min(start.elapsed().as_secs_f64());
            ours = Some(out);
        }
        let ours = ours.expect("at least one run");
        let error = (ours - &reference)?.sqr()?.sum_all()?.to_scalar::<f32>()?;
        let norm = reference.sqr()?.sum_all()?.to_scalar::<f32>()?;
        Ok(ProductTiming {
            seconds,
            gflops: 2.0 * (m * n * k) as f64 / seconds / 1e9,
            relative_error: (error as f64 / norm as f64).sqrt(),
        })
    }
}
