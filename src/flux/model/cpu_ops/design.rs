//! Which of the two designs of `quantized`'s products runs: 8 bits
//! (`int8`) or f32 panels, chosen by the process (an environment variable
//! or [`set_quantized_product`]) and, for a scope, by a thread
//! ([`with_quantized_product`]: T5, and the tests of each design).

#[cfg(target_arch = "x86_64")]
use {super::int8, candle_core::quantized::GgmlDType};

/// How the products with GGUF weights multiply, where there are enough
/// input rows for panels (the few-row products always dot f32 rows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum QuantizedProduct {
    /// Panels dequantized to f32 and multiplied by gemm: within f32
    /// rounding of candle's dequantize-then-matmul.
    F32Panels,
    /// Inputs and panels in 8 bits, multiplied with AVX-512 VNNI (see
    /// `int8`), for the block-quantized types; F32, F16 and BF16 matrices
    /// stay on f32 panels. Where the CPU lacks VNNI, f32 panels.
    Int8,
}

/// 0: not chosen yet; else `QuantizedProduct as u8 + 1`.
static PRODUCT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Chooses the design of every later product with GGUF weights in this
/// process. Without a call, `SCHNELL_CPU_QUANTIZED_PRODUCT` (`f32` or
/// `int8`) chooses, else [`QuantizedProduct::Int8`]: the faster at every
/// type measured (BENCHMARKS.md).
pub fn set_quantized_product(product: QuantizedProduct) {
    PRODUCT.store(product as u8 + 1, std::sync::atomic::Ordering::Relaxed);
}

thread_local! {
    /// A design for the products this thread starts (see
    /// [`with_quantized_product`]).
    static THIS_THREAD: std::cell::Cell<Option<QuantizedProduct>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with the products it starts on this thread made by `design`,
/// whatever the process chose: tests pin each design while others run.
pub fn with_quantized_product<R>(design: QuantizedProduct, f: impl FnOnce() -> R) -> R {
    /// Gives the thread its design back, even if `f` panics.
    struct Restore(Option<QuantizedProduct>);
    impl Drop for Restore {
        fn drop(&mut self) {
            THIS_THREAD.set(self.0);
        }
    }
    let _restore = Restore(THIS_THREAD.replace(Some(design)));
    f()
}

/// The design for a product started on this thread: the one
/// [`with_quantized_product`] gives, else [`set_quantized_product`]'s or the
/// environment's.
pub fn quantized_product() -> QuantizedProduct {
    use std::sync::atomic::Ordering::Relaxed;
    if let Some(design) = THIS_THREAD.get() {
        return design;
    }
    match PRODUCT.load(Relaxed) {
        1 => QuantizedProduct::F32Panels,
        2 => QuantizedProduct::Int8,
        _ => {
            let asked =
                std::env::var("SCHNELL_CPU_QUANTIZED_PRODUCT").map(|v| v.to_ascii_lowercase());
            let chosen = match asked.as_deref() {
                Ok("f32") => QuantizedProduct::F32Panels,
                Ok("int8") | Err(_) => QuantizedProduct::Int8,
                Ok(other) => {
                    tracing::warn!(
                        "SCHNELL_CPU_QUANTIZED_PRODUCT={other:?} is neither f32 nor int8: int8"
                    );
                    QuantizedProduct::Int8
                }
            };
            // A racing `set_quantized_product` wins.
            let _ = PRODUCT.compare_exchange(0, chosen as u8 + 1, Relaxed, Relaxed);
            quantized_product()
        }
    }
}

/// How this process multiplies by GGUF weights, for `schnell devices`.
pub fn quantized_kernels() -> &'static str {
    if quantized_product() == QuantizedProduct::Int8 && has_vnni() {
        "GGUF weights in 8-bit products (AVX-512 VNNI)"
    } else {
        "GGUF weights dequantized to f32 a panel at a time"
    }
}

/// Whether this CPU runs the 8-bit products.
fn has_vnni() -> bool {
    cfg_if::cfg_if! {
        if #[cfg(target_arch = "x86_64")] {
            int8::available()
        } else {
            false
        }
    }
}

/// Whether a product with a `dtype` weight runs in 8 bits here.
#[cfg(target_arch = "x86_64")]
pub(super) fn in_8_bits(dtype: GgmlDType) -> bool {
    let quantized = !matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
    quantized && quantized_product() == QuantizedProduct::Int8 && has_vnni()
}
