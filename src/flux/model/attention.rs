//! Scaled dot-product attention whose score matrix never exceeds a bound.
//!
//! candle's FLUX transformer and VAE compute `softmax(q·kᵀ/√d)·v` in one go,
//! so the scores and their softmax are `L × L` per head: 17 GB for the VAE's
//! mid-block at 2048² in f32. Here the queries are taken in row blocks small
//! enough that one block's scores stay under [`SCORE_BYTES`]; each row's
//! softmax is the same computation as before, so below the bound nothing
//! changes, and above it only the memory does.

use candle_core::{Result, Tensor, D};

/// The largest score matrix one block may make (its softmax makes another).
pub const SCORE_BYTES: usize = 512 << 20;

/// `softmax(q·kᵀ/√d)·v` over the last two dims of `(…, L, d)` tensors. On
/// the CPU in f32, `cpu_ops`' attention: a block of query rows per task,
/// whose scores stay in cache (1 MiB at most).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    if q.device().is_cpu() && q.dtype() == candle_core::DType::F32 {
        crate::flux::model::cpu_ops::attention_tensors(q, k, v)
    } else {
        attention_bounded(q, k, v, SCORE_BYTES)
    }
}

/// [`attention`] with the bound given (tests force it low).
pub fn attention_bounded(q: &Tensor, k: &Tensor, v: &Tensor, max_bytes: usize) -> Result<Tensor> {
    let dim = q.dim(D::Minus1)?;
    let scale = 1.0 / (dim as f64).sqrt();
    let rows = q.dim(D::Minus2)?;
    let keys = k.dim(D::Minus2)?;
    let batch: usize = q.dims()[..q.rank() - 2].iter().product();
    let per_row = batch * keys * q.dtype().size_in_bytes();
    let block = (max_bytes / per_row.max(1)).clamp(1, rows);
    let kt = k.t()?;
    let one = |q: &Tensor| -> Result<Tensor> {
        let scores = (q.matmul(&kt)? * scale)?;
        crate::flux::model::cpu_ops::softmax_last_dim(&scores)?.matmul(v)
    };
    if block == rows {
        return one(q);
    }
    let axis = q.rank() - 2;
    let mut parts = Vec::with_capacity(rows.div_ceil(block));
    for start in (0..rows).step_by(block) {
        let len = block.min(rows - start);
        parts.push(one(&q.narrow(axis, start, len)?.contiguous()?)?);
    }
    Tensor::cat(&parts, axis)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    use crate::flux::test_util::max_abs_diff;

    #[test]
    fn row_blocks_give_the_unblocked_result() {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1., (2, 3, 37, 16), &dev).unwrap();
        let k = Tensor::randn(0f32, 1., (2, 3, 37, 16), &dev).unwrap();
        let v = Tensor::randn(0f32, 1., (2, 3, 37, 16), &dev).unwrap();
        let whole = attention_bounded(&q, &k, &v, usize::MAX).unwrap();
        // candle's own formula, as its FLUX model computes it.
        let scores = (q.matmul(&k.t().unwrap()).unwrap() * 0.25).unwrap();
        let reference = candle_nn::ops::softmax_last_dim(&scores)
            .unwrap()
            .matmul(&v)
            .unwrap();
        // The softmax is `cpu_ops`' vectorised one: within f32 rounding.
        assert!(max_abs_diff(&whole, &reference) < 1e-6);
        // Blocks of 1, 5 (not a divisor of 37) and 36 rows.
        let row_bytes = 2 * 3 * 37 * DType::F32.size_in_bytes();
        for rows in [1, 5, 36] {
            let blocked = attention_bounded(&q, &k, &v, rows * row_bytes).unwrap();
            assert_eq!(blocked.dims(), whole.dims());
            let err = max_abs_diff(&blocked, &whole);
            assert!(err < 1e-6, "{rows}-row blocks differ by {err}");
        }
    }
}
