//! Linear layers whose weights come from safetensors or GGUF files, for the
//! transformer and T5: on the CPU in f32 their products are `cpu_ops`'
//! (quantized weights stay quantized), elsewhere candle's.

use std::sync::Arc;

use crate::flux::model::cpu_ops::{on_cpu_f32, takes_quantized, Weight};
use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::quantized_var_builder::VarBuilder as GgufVarBuilder;

/// Where a model's tensors come from: safetensors, in the model's dtype, or
/// a GGUF file, whose matrices stay quantized (its vectors are read as f32,
/// the dtype the model then computes in).
#[derive(Clone)]
pub enum Weights<'a> {
    /// Safetensors (or any candle `VarBuilder`).
    Float(VarBuilder<'a>),
    /// A GGUF file.
    Quantized(GgufVarBuilder),
}

impl<'a> From<VarBuilder<'a>> for Weights<'a> {
    fn from(vb: VarBuilder<'a>) -> Self {
        Weights::Float(vb)
    }
}

impl From<GgufVarBuilder> for Weights<'_> {
    fn from(vb: GgufVarBuilder) -> Self {
        Weights::Quantized(vb)
    }
}

impl Weights<'_> {
    pub(crate) fn pp(&self, name: impl ToString) -> Self {
        match self {
            Weights::Float(vb) => Weights::Float(vb.pp(name)),
            Weights::Quantized(vb) => Weights::Quantized(vb.pp(name)),
        }
    }

    /// The dtype the model computes in.
    pub(crate) fn dtype(&self) -> DType {
        match self {
            Weights::Float(vb) => vb.dtype(),
            Weights::Quantized(_) => DType::F32,
        }
    }

    pub(crate) fn device(&self) -> &Device {
        match self {
            Weights::Float(vb) => vb.device(),
            Weights::Quantized(vb) => vb.device(),
        }
    }

    /// A vector of `dim` values (a bias, a norm's scale), in the model's dtype.
    pub(crate) fn vector(&self, dim: usize, name: &str) -> Result<Tensor> {
        match self {
            Weights::Float(vb) => vb.get(dim, name),
            Weights::Quantized(vb) => vb.get(dim, name)?.dequantize(vb.device()),
        }
    }
}

/// A linear layer. On the CPU in f32 the product is `cpu_ops`', which adds
/// the bias (and GELU, or a gated residual) as it goes, where candle takes a
/// pass and a new tensor for each; a quantized weight stays quantized and is
/// dequantized a panel (or a row) at a time, so candle's CPU `QMatMul`,
/// which rounds the inputs to 8 bits and repacks some types into a second
/// copy of the weight, is not used for f32 inputs, the dtype GGUF models
/// compute in (`LocalModel::flux_dtype`, T5's encoder).
#[derive(Debug, Clone)]
pub(crate) enum Linear {
    Float(candle_nn::Linear),
    /// A GGUF matrix: on the CPU of any type `cpu_ops` takes; elsewhere of
    /// a quantized type (candle's `QMatMul` holds F16 and F32 ones as
    /// tensors there: those are `Float`).
    Quantized {
        weight: Arc<QTensor>,
        bias: Option<Tensor>,
    },
}

impl Linear {
    /// The weight and bias, where `cpu_ops` takes the product.
    pub(crate) fn on_cpu(&self, x: &Tensor) -> Option<(Weight<'_>, Option<&Tensor>)> {
        match self {
            Linear::Float(linear) => (on_cpu_f32(x) && on_cpu_f32(linear.weight()))
                .then(|| (Weight::F32(linear.weight()), linear.bias())),
            Linear::Quantized { weight, bias, .. } => (on_cpu_f32(x) && takes_quantized(weight))
                .then_some((Weight::Quantized(weight), bias.as_ref())),
        }
    }

    /// `gelu(x · wᵀ + b)`, GELU's tanh approximation.
    pub(crate) fn forward_gelu(&self, x: &Tensor) -> Result<Tensor> {
        match self.on_cpu(x) {
            Some((w, b)) => crate::flux::model::cpu_ops::linear_gelu(x, w, b, 0),
            None => self.forward(x)?.gelu(),
        }
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some((w, b)) = self.on_cpu(x) {
            return crate::flux::model::cpu_ops::linear(x, w, b);
        }
        match self {
            Linear::Float(linear) => linear.forward(x),
            Linear::Quantized { weight, bias } => {
                let y = match gpu_product() {
                    GpuProduct::Quantized => x.apply(&QMatMul::QTensor(weight.clone()))?,
                    GpuProduct::DequantizedBf16 => dequantized_bf16_product(x, weight)?,
                };
                match bias {
                    Some(bias) => y.broadcast_add(bias),
                    None => Ok(y),
                }
            }
        }
    }
}

/// `candle_nn::linear_b`, but on the CPU the weight is kept transposed: the
/// same `(out, in)` tensor as a view over `(in, out)` row-major storage. So
/// `x·wᵀ` multiplies by a row-major matrix, which gemm packs faster: 5–35%
/// less time per product at this model's shapes. A GGUF matrix of a
/// quantized type stays as the file has it.
pub(crate) fn linear_b(in_dim: usize, out_dim: usize, bias: bool, vb: Weights) -> Result<Linear> {
    let vb = match vb {
        Weights::Float(vb) => return Ok(Linear::Float(float_linear(in_dim, out_dim, bias, vb)?)),
        Weights::Quantized(vb) => vb,
    };
    let bias = match bias {
        true => Some(vb.get(out_dim, "bias")?.dequantize(vb.device())?),
        false => None,
    };
    let weight = vb.get((out_dim, in_dim), "weight")?;
    // On the CPU every type the products take stays as the file has it, F16
    // too (candle's `QMatMul` would widen it to an F32 copy).
    if takes_quantized(&weight) {
        return Ok(Linear::Quantized { weight, bias });
    }
    Ok(match QMatMul::from_arc(weight.clone())? {
        QMatMul::Tensor(dense) => Linear::Float(candle_nn::Linear::new(repacked(dense)?, bias)),
        QMatMul::TensorF16(dense) => Linear::Float(candle_nn::Linear::new(dense, bias)),
        QMatMul::QTensor(_) => Linear::Quantized { weight, bias },
    })
}

fn float_linear(
    in_dim: usize,
    out_dim: usize,
    bias: bool,
    vb: VarBuilder,
) -> Result<candle_nn::Linear> {
    let linear = candle_nn::linear_b(in_dim, out_dim, bias, vb)?;
    let weight = repacked(linear.weight().clone())?;
    Ok(candle_nn::Linear::new(weight, linear.bias().cloned()))
}

/// The weight `(out, in)` over `(in, out)` row-major storage, on the CPU.
fn repacked(weight: Tensor) -> Result<Tensor> {
    // A weight that is not contiguous is no checkpoint's: `schnell dev
    // random-models` records a constructor by handing out zeros broadcast
    // to each shape, which the repack would make real (48 GB in f32 for
    // the real model).
    if !weight.device().is_cpu() || !weight.is_contiguous() {
        return Ok(weight);
    }
    weight.t()?.contiguous()?.t()
}

pub(crate) fn linear(in_dim: usize, out_dim: usize, vb: Weights) -> Result<Linear> {
    linear_b(in_dim, out_dim, true, vb)
}

/// How a GGUF layer multiplies off the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GpuProduct {
    /// candle's quantized kernels (MMQ on CUDA): the inputs rounded to 8
    /// bits, the weight read once.
    Quantized,
    /// The layer dequantized for each product and multiplied by the device's
    /// matmul (cuBLAS) in bf16: transient f32 and bf16 copies of one layer.
    DequantizedBf16,
}

/// `SCHNELL_GGUF_GPU_PRODUCT=dequantize` picks [`GpuProduct::DequantizedBf16`],
/// for `scripts/gpu-bench.sh` to measure both at FLUX's row counts; the
/// default stays candle's until a GPU has said which is faster.
fn gpu_product() -> GpuProduct {
    static CHOICE: std::sync::OnceLock<GpuProduct> = std::sync::OnceLock::new();
    *CHOICE.get_or_init(
        || match std::env::var("SCHNELL_GGUF_GPU_PRODUCT").as_deref() {
            Ok("dequantize") => GpuProduct::DequantizedBf16,
            _ => GpuProduct::Quantized,
        },
    )
}

/// `x · wᵀ` with `w` dequantized to bf16 for this product only, computed in
/// bf16 and returned in `x`'s dtype.
fn dequantized_bf16_product(x: &Tensor, weight: &QTensor) -> Result<Tensor> {
    let w = weight.dequantize(x.device())?.to_dtype(DType::BF16)?;
    x.to_dtype(DType::BF16)?
        .broadcast_matmul(&w.t()?)?
        .to_dtype(x.dtype())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::GgmlDType;

    /// The GPU's other product, run here on the CPU: the dequantized
    /// weight's product, within bf16 rounding.
    #[test]
    fn the_dequantized_bf16_product_is_the_products_within_bf16_rounding() {
        let cpu = Device::Cpu;
        let w = Tensor::randn(0f32, 1., (48, 64), &cpu).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q4_0).unwrap();
        let x = Tensor::randn(0f32, 1., (2, 5, 64), &cpu).unwrap();
        let expected = x
            .broadcast_matmul(&q.dequantize(&cpu).unwrap().t().unwrap())
            .unwrap();
        let ours = dequantized_bf16_product(&x, &q).unwrap();
        assert_eq!(ours.dims(), &[2, 5, 48]);
        let err = crate::flux::test_util::max_abs_diff(&ours, &expected);
        let top = crate::flux::test_util::max_abs_diff(&expected, &expected.zeros_like().unwrap());
        // Inputs and weights rounded to 8 bits of mantissa, over 64 terms.
        assert!(err <= 0.02 * top, "off by {err} (values up to {top})");
    }
}
