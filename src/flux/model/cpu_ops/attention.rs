//! Attention in row blocks, on `gemm`.

use gemm::Parallelism;
use rayon::prelude::*;

use super::conv::FeatureMap;
use super::kernels::*;

/// Single-head `softmax(q·kᵀ/√c)·v` over `(pixels, c)` maps.
pub fn attention(q: &FeatureMap, k: &FeatureMap, v: &FeatureMap) -> FeatureMap {
    let (len, c) = (q.h * q.w, q.c);
    assert_eq!(
        (k.data.len(), v.data.len()),
        (len * c, len * c),
        "q, k and v of one shape"
    );
    let mut out = vec![0f32; len * c];
    attention_heads(&q.data, &k.data, &v.data, &mut out, len, len, c);
    FeatureMap::new(q.h, q.w, c, out)
}

/// `softmax(q·kᵀ/√d)·v` over `(b, h, L, d)` f32 tensors on the CPU
/// (`super::attention` sends them here), as `(b, h, L, d)`.
pub fn attention_tensors(
    q: &candle_core::Tensor,
    k: &candle_core::Tensor,
    v: &candle_core::Tensor,
) -> candle_core::Result<candle_core::Tensor> {
    let (b, h, l, d) = q.dims4()?;
    attention_merged_heads(q, k, v)?
        .reshape((b, l, h, d))?
        .transpose(1, 2)?
        .contiguous()
}

/// `softmax(q·kᵀ/√d)·v` over `(b, h, L, d)` f32 tensors on the CPU, each
/// read in place (any strides but a unit last one), v also as `(b, L, h·d)`
/// (a view of the qkv projection), with the heads merged in the result:
/// `(b, L, h·d)`, the
/// transformer's next input, with no transpose to copy. Each task takes a
/// block of query rows through every head; a head's scores (at most 1 MiB)
/// stay in cache between the two products and the softmax, and the whole
/// `L × L` matrix never exists.
pub fn attention_merged_heads(
    q: &candle_core::Tensor,
    k: &candle_core::Tensor,
    v: &candle_core::Tensor,
) -> candle_core::Result<candle_core::Tensor> {
    // Views whose last dim is strided are copied; the rest are read as they are.
    let unit_last = |t: &candle_core::Tensor| match t.stride().last() {
        Some(1) => Ok(t.clone()),
        _ => t.contiguous(),
    };
    let (q, k, v) = (&unit_last(q)?, &unit_last(k)?, &unit_last(v)?);
    let (b, h, lq, d) = q.dims4()?;
    let (b2, h2, lk, d2) = k.dims4()?;
    let v_fits = v.dims() == k.dims() || v.dims() == [b, lk, h * d];
    if (b2, h2, d2) != (b, h, d) || !v_fits {
        candle_core::bail!(
            "attention: q {:?}, k {:?}, v {:?}",
            q.shape(),
            k.shape(),
            v.shape()
        );
    }
    let (q_storage, q_layout) = q.storage_and_layout();
    let (k_storage, k_layout) = k.storage_and_layout();
    let (v_storage, v_layout) = v.storage_and_layout();
    use candle_core::Storage::Cpu;
    let (Cpu(qs), Cpu(ks), Cpu(vs)) = (&*q_storage, &*k_storage, &*v_storage) else {
        candle_core::bail!("attention: CPU tensors only");
    };
    let (qs, ks, vs) = (
        qs.as_slice::<f32>()?,
        ks.as_slice::<f32>()?,
        vs.as_slice::<f32>()?,
    );
    // (offset, batch stride, head stride, row stride)
    let strides = |layout: &candle_core::Layout| match *layout.stride() {
        [sb, sh, sr, 1] => Some((layout.start_offset(), sb, sh, sr)),
        // Heads merged: each is the next `d` columns.
        [sb, sr, 1] => Some((layout.start_offset(), sb, d, sr)),
        _ => None,
    };
    let (Some(qo), Some(ko), Some(vo)) = (strides(q_layout), strides(k_layout), strides(v_layout))
    else {
        candle_core::bail!("attention: q, k and v need a unit last stride");
    };
    let width = h * d;
    let mut out = vec![0f32; b * lq * width];
    if out.is_empty() || lk == 0 {
        return candle_core::Tensor::from_vec(out, (b, lq, width), q.device());
    }
    // Blocks of at most 1 MiB of scores, at least two per thread, and a
    // multiple of the threads in all, so that none waits at the end.
    let threads = rayon::current_num_threads().max(1);
    let most = ((1 << 18) / lk).max(16);
    let blocks = lq.div_ceil(most).max(2 * threads).next_multiple_of(threads);
    let rows = lq.div_ceil(blocks).max(1);
    let scale = 1.0 / (d as f32).sqrt();
    out.par_chunks_mut(lq * width)
        .enumerate()
        .for_each(|(i, out)| {
            out.par_chunks_mut(rows * width)
                .enumerate()
                .for_each(|(block, out)| {
                    let (n, r0) = (out.len() / width, block * rows);
                    // Nothing in here calls into rayon, so the borrow is
                    // never taken twice on one thread.
                    SCRATCH.with_borrow_mut(|scratch| {
                        for head in 0..h {
                            let q = View {
                                data: &qs[qo.0 + i * qo.1 + head * qo.2 + r0 * qo.3..],
                                rows: n,
                                cols: d,
                                row_stride: qo.3,
                                col_stride: 1,
                            };
                            let k = View {
                                data: &ks[ko.0 + i * ko.1 + head * ko.2..],
                                rows: lk,
                                cols: d,
                                row_stride: ko.3,
                                col_stride: 1,
                            };
                            let v = View {
                                data: &vs[vo.0 + i * vo.1 + head * vo.2..],
                                rows: lk,
                                cols: d,
                                row_stride: vo.3,
                                col_stride: 1,
                            };
                            attend(q, k, v, &mut out[head * d..], width, scale, scratch);
                        }
                    });
                });
        });
    drop((q_storage, k_storage, v_storage));
    candle_core::Tensor::from_vec(out, (b, lq, width), q.device())
}

/// Multi-head attention over row-major `(heads, lq, d)` queries and
/// `(heads, lk, d)` keys and values into `out` `(heads, lq, d)`. Each task
/// takes one head's block of query rows: its scores (at most 1 MiB, or 64
/// rows) are all that is made, and stay in cache between the two products
/// and the softmax; the whole `L × L` matrix never exists.
fn attention_heads(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
    lq: usize,
    lk: usize,
    d: usize,
) {
    if lq == 0 || d == 0 {
        return;
    }
    let rows = ((1 << 18) / lk.max(1)).clamp(64, 256);
    let scale = 1.0 / (d as f32).sqrt();
    out.par_chunks_mut(lq * d)
        .enumerate()
        .for_each(|(head, out)| {
            let (k, v) = (&k[head * lk * d..][..lk * d], &v[head * lk * d..][..lk * d]);
            out.par_chunks_mut(rows * d)
                .enumerate()
                .for_each(|(block, out)| {
                    let n = out.len() / d;
                    let q = &q[(head * lq + block * rows) * d..][..n * d];
                    // Nothing in here calls into rayon, so the borrow is
                    // never taken twice on one thread.
                    SCRATCH.with_borrow_mut(|scratch| {
                        let view = |data, rows| View {
                            data,
                            rows,
                            cols: d,
                            row_stride: d,
                            col_stride: 1,
                        };
                        attend(view(q, n), view(k, lk), view(v, lk), out, d, scale, scratch);
                    });
                });
        });
}

/// One head's block of query rows: `out = softmax(q·kᵀ·scale)·v` for `q`
/// `n × d` and `k`, `v` `lk × d`, into the `n` rows of `out` (row stride
/// `out_stride`, `d` columns each). The scores are `scratch`'s; the
/// softmax's 1/sum is applied to the `d` output values, not the `lk` scores.
fn attend(
    q: View,
    k: View,
    v: View,
    out: &mut [f32],
    out_stride: usize,
    scale: f32,
    scratch: &mut Scratch,
) {
    let (n, lk, d) = (q.rows, k.rows, q.cols);
    let scores = grown(&mut scratch.scores, n * lk);
    let factors = grown(&mut scratch.factors, n);
    let kt = View {
        rows: k.cols,
        cols: k.rows,
        row_stride: k.col_stride,
        col_stride: k.row_stride,
        ..k
    };
    matmul(scores, lk, false, q, kt, scale, Parallelism::None);
    for (row, f) in scores.chunks_exact_mut(lk).zip(&mut *factors) {
        *f = softmax_unscaled(row);
    }
    let p = View {
        data: scores,
        rows: n,
        cols: lk,
        row_stride: lk,
        col_stride: 1,
    };
    matmul(out, out_stride, false, p, v, 1.0, Parallelism::None);
    for (r, &f) in factors.iter().enumerate() {
        scale_in_place(&mut out[r * out_stride..][..d], f);
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use candle_core::Tensor;

    #[test]
    fn multi_head_attention_matches_candles_in_row_blocks() {
        // 300 queries: blocks of 256 rows and a partial one; 70 keys.
        let q = randn(&[2, 3, 300, 16]);
        let [k, v] = [0, 1].map(|_| randn(&[2, 3, 70, 16]));
        let scores = (q.matmul(&k.t().unwrap()).unwrap() * 0.25).unwrap();
        let expected = candle_nn::ops::softmax_last_dim(&scores)
            .unwrap()
            .matmul(&v)
            .unwrap();
        let got = attention_tensors(&q, &k, &v).unwrap();
        assert_eq!(got.dims(), expected.dims());
        let err = crate::flux::test_util::max_abs_diff(&got, &expected);
        assert!(err < 1e-5, "off by {err}");
        // A transposed view, as the transformer's v is.
        let vt = v
            .transpose(2, 3)
            .unwrap()
            .contiguous()
            .unwrap()
            .transpose(2, 3)
            .unwrap();
        let got = attention_tensors(&q, &k, &vt).unwrap();
        assert!(crate::flux::test_util::max_abs_diff(&got, &expected) < 1e-5);
        // Views read in place (v from a wider tensor), the heads merged.
        let merged_expected = expected
            .transpose(1, 2)
            .unwrap()
            .reshape((2, 300, 48))
            .unwrap();
        let wide = Tensor::cat(&[&v, &v], 3)
            .unwrap()
            .narrow(3, 16, 16)
            .unwrap();
        let vh = v
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .transpose(1, 2)
            .unwrap();
        // v with its heads merged, as columns of a wider projection: (b, L, h·d).
        let columns = Tensor::cat(
            &[
                &vh.transpose(1, 2).unwrap().flatten_from(2).unwrap(),
                &randn(&[2, 70, 48]),
            ],
            2,
        )
        .unwrap()
        .narrow(2, 0, 48)
        .unwrap();
        for v in [&wide, &vh, &columns] {
            let merged = attention_merged_heads(&q, &k, v).unwrap();
            assert!(crate::flux::test_util::max_abs_diff(&merged, &merged_expected) < 1e-5);
        }
        assert!(
            attention_tensors(&q, &q, &v).is_err(),
            "mismatched keys and values"
        );
    }

    #[test]
    fn attention_matches_candles() {
        let (c, h, w) = (32, 5, 6);
        let [q, k, v] = [0, 1, 2].map(|_| randn(&[1, c, h, w]));
        // (1, c, h, w) → (1, 1, h·w, c), as the decoder's attention sees it.
        let seq = |t: &Tensor| {
            t.flatten_from(2)
                .unwrap()
                .t()
                .unwrap()
                .unsqueeze(1)
                .unwrap()
        };
        let expected =
            crate::flux::model::attention::attention(&seq(&q), &seq(&k), &seq(&v)).unwrap();
        let expected = FeatureMap::new(h, w, c, vec(&expected));
        let got = attention(&to_map(&q), &to_map(&k), &to_map(&v));
        assert!(relative_error(&got, &expected) < 1e-5);
    }
}
