//! The transformer's row-wise layers on candle tensors: softmax, q and k's
//! norm and rotation, and the modulated layer norm.

use rayon::prelude::*;

use super::kernels::*;

/// Each `len`-long row of `rows` replaced by its softmax.
fn softmax_rows(rows: &mut [f32], len: usize) {
    rows.par_chunks_mut(len).for_each(softmax);
}

/// `f` applied to a copy of a contiguous f32 CPU tensor's values.
fn map_cpu_f32(
    storage: &candle_core::CpuStorage,
    layout: &candle_core::Layout,
    op: &str,
    f: impl Fn(&mut [f32]) + Sync,
) -> Result<(candle_core::CpuStorage, candle_core::Shape), candle_core::Error> {
    let candle_core::CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op}: f32 only");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op}: contiguous tensors only");
    };
    let mut out = data[start..end].to_vec();
    f(&mut out);
    Ok((candle_core::CpuStorage::F32(out), layout.shape().clone()))
}

struct SoftmaxLastDim;

impl candle_core::CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "schnell-softmax-last-dim"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape), candle_core::Error> {
        let len = layout.dims().last().copied().unwrap_or(1).max(1);
        map_cpu_f32(storage, layout, self.name(), |xs| softmax_rows(xs, len))
    }
}

/// candle-nn's `softmax_last_dim`; vectorised for f32 on the CPU, within
/// f32 rounding of candle's there; candle's elsewhere.
pub fn softmax_last_dim(x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
    if on_cpu_f32(x) {
        x.contiguous()?.apply_op1_no_bwd(&SoftmaxLastDim)
    } else {
        candle_nn::ops::softmax_last_dim(x)
    }
}

/// One of q and k, taken from the qkv projection's columns, RMS-normed and
/// rotated (see [`heads_norm_rope`]).
struct HeadsNormRope {
    first: usize,
    heads: usize,
    eps: f32,
}

impl candle_core::CustomOp3 for HeadsNormRope {
    fn name(&self) -> &'static str {
        "schnell-heads-norm-rope"
    }

    fn cpu_fwd(
        &self,
        proj: &candle_core::CpuStorage,
        proj_layout: &candle_core::Layout,
        alpha: &candle_core::CpuStorage,
        alpha_layout: &candle_core::Layout,
        pe: &candle_core::CpuStorage,
        pe_layout: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape), candle_core::Error> {
        use candle_core::CpuStorage::F32;
        let (F32(proj), F32(alpha), F32(pe)) = (proj, alpha, pe) else {
            candle_core::bail!("heads_norm_rope: f32 only");
        };
        let (b, l, width) = proj_layout.shape().dims3()?;
        let d = alpha_layout.shape().elem_count();
        let (Some((a0, a1)), Some((p0, p1)), &[s0, s1, 1]) = (
            alpha_layout.contiguous_offsets(),
            pe_layout.contiguous_offsets(),
            proj_layout.stride(),
        ) else {
            candle_core::bail!("heads_norm_rope: contiguous α and rotations, rows of unit stride");
        };
        let h = self.heads;
        if d % 2 == 1 || self.first + h * d > width || pe_layout.dims() != [b, 1, l, d / 2, 2, 2] {
            candle_core::bail!(
                "heads_norm_rope: {h} heads of {d} from column {} of {:?}, rotations {:?}",
                self.first,
                proj_layout.shape(),
                pe_layout.shape()
            );
        }
        let (alpha, pe, start) = (&alpha[a0..a1], &pe[p0..p1], proj_layout.start_offset());
        let mut out = vec![0f32; b * h * l * d];
        if !out.is_empty() {
            out.par_chunks_mut(l * d).enumerate().for_each(|(bh, out)| {
                let (i, head) = (bh / h, bh % h);
                let column = start + i * s0 + self.first + head * d;
                let rotations = &pe[i * l * d * 2..][..l * d * 2];
                for (j, out) in out.chunks_exact_mut(d).enumerate() {
                    let x = &proj[column + j * s1..][..d];
                    norm_rotate(out, x, alpha, &rotations[j * d * 2..][..d * 2], self.eps);
                }
            });
        }
        Ok((F32(out), candle_core::Shape::from((b, h, l, d))))
    }
}

multiversion! {
    /// candle's RMS norm of one head's vector (`x / √(mean x² + ε) · α`),
    /// then FLUX's rotation of its pairs.
    fn norm_rotate(out: &mut [f32], x: &[f32], alpha: &[f32], rotations: &[f32], eps: f32) {
        let d = out.len();
        let (x, alpha) = (&x[..d], &alpha[..d]);
        let sum2: f32 = x.iter().map(|v| v * v).sum();
        let m = (sum2 / d as f32 + eps).sqrt();
        for i in 0..d {
            out[i] = x[i] / m * alpha[i];
        }
        for (o, r) in out.chunks_exact_mut(2).zip(rotations.chunks_exact(4)) {
            let (x0, x1) = (o[0], o[1]);
            o[0] = r[0] * x0 + r[1] * x1;
            o[1] = r[2] * x0 + r[3] * x1;
        }
    }
}

/// q or k for attention, in one pass on the CPU in f32: `heads` heads of
/// `alpha.len()` columns from column `first` of the `(b, L, ·)` projection
/// `proj` (a view is fine), each RMS-normed by `alpha` and rotated by `pe`
/// `(b, 1, L, d/2, 2, 2)`, as `(b, heads, L, d)`: one pass where candle
/// takes a copy of the strided view, the norm and five broadcast products.
/// `None` elsewhere, where the caller keeps candle's.
pub fn heads_norm_rope(
    proj: &candle_core::Tensor,
    first: usize,
    heads: usize,
    alpha: &candle_core::Tensor,
    eps: f64,
    pe: &candle_core::Tensor,
) -> Option<candle_core::Result<candle_core::Tensor>> {
    if !(on_cpu_f32(proj) && on_cpu_f32(alpha) && on_cpu_f32(pe)) {
        return None;
    }
    let op = HeadsNormRope {
        first,
        heads,
        eps: eps as f32,
    };
    Some((|| {
        proj.apply_op3_no_bwd(&alpha.contiguous()?, &pe.contiguous()?, &op)
    })())
}

/// FLUX's modulated layer norm (see [`layer_norm_modulate`]).
struct LayerNormModulate {
    eps: f32,
}

impl candle_core::CustomOp3 for LayerNormModulate {
    fn name(&self) -> &'static str {
        "schnell-layer-norm-modulate"
    }

    fn cpu_fwd(
        &self,
        x: &candle_core::CpuStorage,
        x_layout: &candle_core::Layout,
        shift: &candle_core::CpuStorage,
        shift_layout: &candle_core::Layout,
        scale: &candle_core::CpuStorage,
        scale_layout: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape), candle_core::Error> {
        let op = self.name();
        let (b, l, d) = x_layout.shape().dims3()?;
        let x = Rows::of(x, x_layout, op, "input")?;
        let shift = Rows::of(shift, shift_layout, op, "shift")?;
        let scale = Rows::of(scale, scale_layout, op, "scale")?;
        if (shift.count, shift.len, scale.count, scale.len) != (b, d, b, d) {
            candle_core::bail!(
                "{op}: input {:?}, shift {:?}, scale {:?}",
                x_layout.shape(),
                shift_layout.shape(),
                scale_layout.shape()
            );
        }
        let mut out = vec![0f32; b * l * d];
        if d > 0 {
            out.par_chunks_mut(d)
                .with_min_len(16)
                .enumerate()
                .for_each(|(row, out)| {
                    let i = row / l;
                    norm_modulate(out, x.row(row), shift.row(i), scale.row(i), self.eps)
                });
        }
        Ok((candle_core::CpuStorage::F32(out), x_layout.shape().clone()))
    }
}

multiversion! {
    /// One row: `(x − mean) / √(var + ε) · (1 + scale) + shift`; the
    /// variance about the mean (candle's subtracts squares, torch's is
    /// Welford's: this is nearer both than they are to each other).
    fn norm_modulate(out: &mut [f32], x: &[f32], shift: &[f32], scale: &[f32], eps: f32) {
        let d = out.len();
        let (x, shift, scale) = (&x[..d], &shift[..d], &scale[..d]);
        let mut lanes = [0f32; 16];
        let mut chunks = x.chunks_exact(16);
        for chunk in &mut chunks {
            for i in 0..16 {
                lanes[i] += chunk[i];
            }
        }
        let sum: f32 = lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>();
        let mean = sum / d as f32;
        let mut lanes = [0f32; 16];
        let mut chunks = x.chunks_exact(16);
        for chunk in &mut chunks {
            for i in 0..16 {
                let c = chunk[i] - mean;
                lanes[i] += c * c;
            }
        }
        let tail: f32 = chunks.remainder().iter().map(|v| (v - mean) * (v - mean)).sum();
        let var = (lanes.iter().sum::<f32>() + tail) / d as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for i in 0..d {
            out[i] = (x[i] - mean) * inv * (1.0 + scale[i]) + shift[i];
        }
    }
}

/// FLUX's modulated layer norm, `LN(x) · (1 + scale) + shift`, with a
/// layer norm of no weights (`elementwise_affine=False`), for `(b, L, d)`
/// f32 tensors on the CPU and `(b, 1, d)` shifts and scales (views are
/// fine): one pass where candle takes the norm and three broadcast ops,
/// each into a new tensor.
pub fn layer_norm_modulate(
    x: &candle_core::Tensor,
    shift: &candle_core::Tensor,
    scale: &candle_core::Tensor,
    eps: f64,
) -> candle_core::Result<candle_core::Tensor> {
    let op = LayerNormModulate { eps: eps as f32 };
    // A batch's image rows narrowed from the joint sequence skip the text
    // rows between items: such a view is copied; a single item's is read
    // in place.
    with_even_rows(x)?.apply_op3_no_bwd(shift, scale, &op)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use candle_core::{DType, Device, IndexOp, Tensor};

    /// candle FLUX's `apply_rope`, as the transformer keeps it for GPUs.
    fn candle_rope(x: &Tensor, pe: &Tensor) -> Tensor {
        let (b, h, l, d) = x.dims4().unwrap();
        let pairs = x.reshape((b, h, l, d / 2, 2)).unwrap();
        let x0 = pairs.narrow(4, 0, 1).unwrap();
        let x1 = pairs.narrow(4, 1, 1).unwrap();
        let fr0 = pe.get_on_dim(5, 0).unwrap();
        let fr1 = pe.get_on_dim(5, 1).unwrap();
        (fr0.broadcast_mul(&x0).unwrap() + fr1.broadcast_mul(&x1).unwrap())
            .unwrap()
            .reshape((b, h, l, d))
            .unwrap()
    }

    #[test]
    fn heads_norm_rope_is_candles_norm_then_rotation() {
        let (b, l, h, d) = (1, 6, 3, 8);
        // A narrow view of a wider projection, as the single blocks have.
        let wide = randn(&[b, l, 3 * h * d + 10]);
        let proj = wide.narrow(2, 0, 3 * h * d).unwrap();
        let alpha = randn(&[d]);
        let pe = randn(&[b, 1, l, d / 2, 2, 2]);
        let norm = candle_nn::RmsNorm::new(alpha.clone(), 1e-6);
        let heads = proj.reshape((b, l, 3, h, d)).unwrap();
        for (which, first) in [(0, 0), (1, h * d)] {
            let x = heads.i((.., .., which)).unwrap().transpose(1, 2).unwrap();
            let normed = x.contiguous().unwrap().apply(&norm).unwrap();
            let expected = candle_rope(&normed, &pe);
            let got = heads_norm_rope(&proj, first, h, &alpha, 1e-6, &pe)
                .unwrap()
                .unwrap();
            assert_eq!(got.dims(), &[b, h, l, d]);
            let err = crate::flux::test_util::max_abs_diff(&got, &expected);
            assert!(err < 1e-5, "{which}: off by {err}");
        }
        let too_far = heads_norm_rope(&proj, 2 * h * d + 1, h, &alpha, 1e-6, &pe).unwrap();
        assert!(too_far.is_err(), "columns past the projection");
    }

    #[test]
    fn softmax_matches_candles() {
        let x = (randn(&[3, 7, 129]) * 4.0).unwrap();
        let close = |a: &Tensor, b: &Tensor, what: &str| {
            let err = crate::flux::test_util::max_abs_diff(a, b);
            assert!(err < 2e-6 * 16.0, "{what} off by {err}");
        };
        let softmax = softmax_last_dim(&x).unwrap();
        close(
            &softmax,
            &candle_nn::ops::softmax_last_dim(&x).unwrap(),
            "softmax",
        );
        // Rows past f32's exp range still sum to one.
        let wide = (randn(&[2, 50]) * 100.0).unwrap();
        let sums = softmax_last_dim(&wide).unwrap().sum(1).unwrap();
        let sums: Vec<f32> = sums.to_vec1().unwrap();
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5), "{sums:?}");
        // A strided view is made contiguous first.
        let t = x.transpose(1, 2).unwrap();
        close(
            &softmax_last_dim(&t).unwrap(),
            &candle_nn::ops::softmax_last_dim(&t.contiguous().unwrap()).unwrap(),
            "softmax of a view",
        );
    }

    #[test]
    fn layer_norm_modulate_is_candles_norm_then_modulation() {
        // Rows offset far from zero, where a variance by squares loses digits.
        let x = (randn(&[2, 7, 67]) + 30.0).unwrap();
        // Shifts and scales per batch item, views of the modulation's columns.
        let modulation = randn(&[2, 1, 3 * 67]);
        let shift = modulation.narrow(2, 0, 67).unwrap();
        let scale = modulation.narrow(2, 67, 67).unwrap();
        let norm = candle_nn::LayerNorm::new_no_bias(
            Tensor::ones(67, DType::F32, &Device::Cpu).unwrap(),
            1e-6,
        );
        let expected = x
            .to_dtype(DType::F64)
            .unwrap()
            .apply(&candle_nn::LayerNorm::new_no_bias(
                Tensor::ones(67, DType::F64, &Device::Cpu).unwrap(),
                1e-6,
            ))
            .unwrap()
            .broadcast_mul(&(scale.to_dtype(DType::F64).unwrap() + 1.0).unwrap())
            .unwrap()
            .broadcast_add(&shift.to_dtype(DType::F64).unwrap())
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let got = layer_norm_modulate(&x, &shift, &scale, 1e-6).unwrap();
        let err = crate::flux::test_util::max_abs_diff(&got, &expected);
        assert!(err < 1e-4, "off by {err}");
        // A batch's image rows, narrowed from a longer joint sequence: the
        // items' rows are not evenly spaced, and the result is the same.
        let joint = Tensor::cat(&[&randn(&[2, 3, 67]), &x], 1).unwrap();
        let narrowed = joint.narrow(1, 3, 7).unwrap();
        let got = layer_norm_modulate(&narrowed, &shift, &scale, 1e-6).unwrap();
        assert_eq!(crate::flux::test_util::max_abs_diff(&got, &expected), err);
        // candle's f32 norm, for scale: within its own rounding of the same.
        let candles = x
            .apply(&norm)
            .unwrap()
            .broadcast_mul(&(&scale + 1.0).unwrap())
            .unwrap()
            .broadcast_add(&shift)
            .unwrap();
        assert!(crate::flux::test_util::max_abs_diff(&candles, &expected) < 1e-2);
        assert!(
            layer_norm_modulate(&x, &shift.narrow(0, 0, 1).unwrap(), &scale, 1e-6).is_err(),
            "a shift for one batch item of two"
        );
    }
}
