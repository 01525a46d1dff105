//! f32 layers for the CPU, each pinned by a test to candle's within f32
//! rounding:
//! - `conv`: the VAE decoder's, on channels-last feature maps: a Winograd
//!   3×3 convolution and 1×1 convolutions; `norm`: group norm fused with
//!   SiLU;
//! - `linear`: the transformer's linear layers, with the bias, GELU or a
//!   gated residual add in the product's pass; `quantized`: their products
//!   with GGUF weights, dequantized a panel at a time, or (`int8`) in 8-bit
//!   integers with AVX-512 VNNI, pinned to the f32 product of the rounded
//!   operands (`design` says which runs);
//! - `transformer_ops`: softmax, q and k normed and rotated in one pass, the
//!   modulated layer norm;
//! - `attention`: in row blocks whose scores stay in cache, heads merged.
//!
//! Here: the `multiversion!` AVX-512 dispatch. In `kernels`: matrix views
//! and products on `gemm`, per-thread scratch, and a vectorisable `exp`
//! (candle calls libm's `expf` and `tanhf` once per element: a fifth of a
//! step's time at 256²).
//!
//! Why own them: candle 0.11's CPU `conv2d` gathers its im2col tiles one
//! element at a time, in NCHW, into a fresh buffer per tile; a profile of
//! the decode at 256² put 35% of the time there and 25% in the products.
//! Winograd F(2×2, 3×3) computes a 3×3 convolution as 16 matrix products
//! over a quarter of the pixels each: 4/9 of the direct multiply-adds, and
//! no im2col at all. Its transforms' coefficients are 0, ±½ and ±1, so it
//! stays within f32 rounding of the direct sum (pinned against candle's
//! `conv2d` in `conv/tests.rs`).

/// Defines a function whose body is compiled twice: for the baseline
/// x86-64 target (SSE2) and for AVX-512, chosen at run time. The loops
/// here are written for the compiler to vectorise; without this they would
/// get 4 lanes where this machine has 16. Helpers they call must be
/// `#[inline(always)]` to be compiled with the same features. In the body,
/// the const `FMA` says whether fused multiply-adds are there (see
/// [`madd`]).
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(non_snake_case)]
            fn body<const FMA: bool>($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx2,fma")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    body::<true>($($arg),*)
                }
                if crate::flux::model::cpu_ops::has_avx512() {
                    // SAFETY: the CPU has every feature `avx512` is compiled for.
                    return unsafe { avx512($($arg),*) };
                }
            }
            body::<false>($($arg),*)
        }
    };
}

/// Whether the CPU has every feature `multiversion!`'s AVX-512 copy is
/// compiled for.
#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    use std::arch::is_x86_feature_detected as has;
    has!("avx512f") && has!("avx512vl") && has!("avx512dq") && has!("fma")
}

/// The instruction sets this CPU's layers run with, chosen at run time:
/// gemm's products use AVX-512 where the CPU has it, else AVX2 with FMA,
/// else the baseline (NEON on aarch64); the owned loops (`multiversion!`)
/// AVX-512 or the baseline.
pub fn cpu_kernels() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has_avx512() {
            return "AVX-512";
        }
        if has!("avx2") && has!("fma") {
            return "AVX2 with FMA in the matrix products, SSE2 elsewhere";
        }
        "SSE2"
    }
    #[cfg(target_arch = "aarch64")]
    {
        "NEON"
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        "portable"
    }
}

mod attention;
mod conv;
mod design;
// AVX-512 VNNI's products: x86-64 only.
#[cfg(target_arch = "x86_64")]
mod int8;
mod kernels;
mod linear;
mod norm;
mod quantized;
mod transformer_ops;

pub use attention::{attention, attention_merged_heads, attention_tensors};
pub use conv::{Conv1x1, Conv3x3, FeatureMap, Resample};
pub use design::{
    quantized_kernels, set_quantized_product, with_quantized_product, QuantizedProduct,
};
pub use kernels::{on_cpu_f32, release_scratch};
pub use linear::{linear, linear_gated_residual, linear_gelu, Weight};
pub use norm::GroupNorm;
pub use quantized::{dequantize_rows, takes_quantized};
pub use transformer_ops::{heads_norm_rope, layer_norm_modulate, softmax_last_dim};

/// What the tests of the submodules share.
#[cfg(test)]
mod test_support {
    use super::FeatureMap;
    use candle_core::{Device, Tensor};

    /// `(1, c, h, w)` NCHW → a channels-last map.
    pub fn to_map(t: &Tensor) -> FeatureMap {
        let (_, c, h, w) = t.dims4().unwrap();
        let data = t.squeeze(0).unwrap().permute((1, 2, 0)).unwrap();
        let data = data.flatten_all().unwrap().to_vec1().unwrap();
        FeatureMap::new(h, w, c, data)
    }

    pub fn randn(shape: &[usize]) -> Tensor {
        Tensor::randn(0f32, 1., shape, &Device::Cpu).unwrap()
    }

    pub fn vec(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// The largest difference, relative to the largest value of `reference`.
    pub fn relative_error(ours: &FeatureMap, reference: &FeatureMap) -> f32 {
        assert_eq!(
            (ours.h, ours.w, ours.c),
            (reference.h, reference.w, reference.c)
        );
        let top = reference.data.iter().fold(0f32, |a, b| a.max(b.abs()));
        let diff = ours
            .data
            .iter()
            .zip(&reference.data)
            .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
        diff / top
    }
}
