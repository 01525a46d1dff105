//! The transformer's linear layers and what follows them, in one pass over
//! the product: the bias, GELU, or a gated residual add.
//!
//! candle's `Linear` on the CPU zeroes its output, multiplies into it, then
//! adds the bias in a second pass into a third buffer; the gate and the
//! residual add are two more passes and buffers. Here the output starts as
//! the bias, `gemm` adds the product onto it, and GELU or the gated residual
//! is applied to each row while it is in cache: a single block's `linear1`
//! (1280 × 5376) takes 34 ms this way, against 40 ms for candle's.

use candle_core::{CpuStorage, Layout, Result, Tensor};
use rayon::prelude::*;

use super::kernels::*;

/// What happens to each output row after the product and its bias.
#[derive(Clone, Copy)]
enum Then<'a> {
    Nothing,
    /// GELU on the columns from `from` on.
    Gelu {
        from: usize,
    },
    /// `residual + gate ⊙ row`, with one gate row per batch item: each
    /// covers an equal run of rows.
    GatedResidual {
        residual: Rows<'a>,
        gate: Rows<'a>,
    },
}

/// The weight `(n, k)` as the right operand `k × n` of `x · wᵀ`, read in
/// place whatever its two strides (see `transformer::linear_b`).
fn weight_view<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<View<'a>> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("linear: the weight is not f32");
    };
    let (n, k) = layout.shape().dims2()?;
    let &[row_stride, col_stride] = layout.stride() else {
        unreachable!("two dims, two strides")
    };
    let view = View {
        data: &data[layout.start_offset()..],
        rows: k,
        cols: n,
        row_stride: col_stride,
        col_stride: row_stride,
    };
    if n > 0 && k > 0 && (k - 1) * col_stride + (n - 1) * row_stride >= view.data.len() {
        candle_core::bail!("linear: the weight runs past its storage");
    }
    Ok(view)
}

/// `then(x · wᵀ + bias)` for `x` the columns of `parts` side by side (each
/// read in place, and multiplied by its rows of `wᵀ`: no concatenation),
/// rows of `n` values, as a `(…, n)` tensor of the parts' leading dims.
fn product(parts: &[&Tensor], weight: &Tensor, bias: &Tensor, then: &Then) -> Result<Tensor> {
    let Some(first) = parts.first() else {
        candle_core::bail!("linear: no input");
    };
    let parts = parts
        .iter()
        .map(|x| with_even_rows(x))
        .collect::<Result<Vec<_>>>()?;
    let guards: Vec<_> = parts.iter().map(|x| x.storage_and_layout()).collect();
    let (w_storage, w_layout) = weight.storage_and_layout();
    let (b_storage, b_layout) = bias.storage_and_layout();
    use candle_core::Storage::Cpu;
    let (Cpu(ws), Cpu(bs)) = (&*w_storage, &*b_storage) else {
        candle_core::bail!("linear: CPU tensors only");
    };
    let w = weight_view(ws, w_layout)?;
    let bias = Rows::of(bs, b_layout, "linear", "bias")?;
    let mut inputs = Vec::with_capacity(parts.len());
    for (storage, layout) in &guards {
        let Cpu(xs) = &**storage else {
            candle_core::bail!("linear: CPU tensors only");
        };
        inputs.push(Rows::of(xs, layout, "linear", "input")?);
    }
    let (n, m) = (w.cols, inputs[0].count);
    let k: usize = inputs.iter().map(|x| x.len).sum();
    if k != w.rows || inputs.iter().any(|x| x.count != m) || bias.count != 1 || bias.len != n {
        candle_core::bail!(
            "linear: input {:?}, weight {:?}, bias {:?}",
            parts.iter().map(|x| x.dims().to_vec()).collect::<Vec<_>>(),
            w_layout.shape(),
            b_layout.shape()
        );
    }
    if let Then::GatedResidual { residual, gate } = then {
        let fits = residual.count == m && residual.len == n && gate.len == n;
        if !fits || gate.count == 0 || m % gate.count != 0 {
            candle_core::bail!(
                "linear: a gated residual of {}×{} (gates {}×{}) onto {m}×{n}",
                residual.count,
                residual.len,
                gate.count,
                gate.len
            );
        }
    }
    let bias = bias.row(0);
    // Rows of the bias, for gemm to add onto: a pass of writes only, where
    // a zeroed buffer costs the same and the bias would need another pass.
    let mut out = Vec::with_capacity(m * n);
    if m * n > 0 {
        out.spare_capacity_mut()[..m * n]
            .par_chunks_mut(n)
            .with_min_len(64)
            .for_each(|row| {
                for (o, &b) in row.iter_mut().zip(bias) {
                    o.write(b);
                }
            });
    }
    // SAFETY: all `m · n` elements were written just above.
    unsafe { out.set_len(m * n) };
    let mut k0 = 0;
    for x in &inputs {
        let lhs = View {
            data: x.data,
            rows: m,
            cols: x.len,
            row_stride: x.stride,
            col_stride: 1,
        };
        let rhs = View {
            data: &w.data[k0 * w.row_stride..],
            rows: x.len,
            ..w
        };
        matmul(&mut out, n, true, lhs, rhs, 1.0, all_threads());
        k0 += x.len;
    }
    match *then {
        Then::Nothing => {}
        Then::Gelu { from } if from < n => out
            .par_chunks_mut(n)
            .with_min_len(16)
            .for_each(|row| gelu_in_place(&mut row[from..])),
        Then::Gelu { .. } => {}
        Then::GatedResidual { residual, gate } => {
            let per_gate = m / gate.count;
            out.par_chunks_mut(n.max(1))
                .with_min_len(16)
                .enumerate()
                .for_each(|(i, row)| gated_add(row, residual.row(i), gate.row(i / per_gate)));
        }
    }
    let mut dims = first.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = n;
    }
    drop((guards, w_storage, b_storage));
    Tensor::from_vec(out, dims, first.device())
}

/// GELU, tanh approximation: `0.5·x·(1 + tanh z)` is `x·σ(2z)`, which
/// needs one `exp`.
#[inline(always)]
fn gelu_one<const FMA: bool>(x: f32) -> f32 {
    const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;
    let z = SQRT_TWO_OVER_PI * x * (1.0 + 0.044_715 * x * x);
    x / (1.0 + exp::<FMA>(-2.0 * z))
}

multiversion! {
    fn gelu_in_place(xs: &mut [f32]) {
        for v in xs {
            *v = gelu_one::<FMA>(*v);
        }
    }
}

multiversion! {
    /// `row = residual + gate ⊙ row`.
    fn gated_add(row: &mut [f32], residual: &[f32], gate: &[f32]) {
        let n = row.len();
        let (residual, gate) = (&residual[..n], &gate[..n]);
        for i in 0..n {
            row[i] = residual[i] + gate[i] * row[i];
        }
    }
}

/// candle-nn's `Linear` with a bias, `x · wᵀ + b`, for f32 tensors on the
/// CPU; `w` may be stored either way round.
pub fn linear(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    product(&[x], weight, bias, &Then::Nothing)
}

/// `x · wᵀ + b` with GELU (tanh approximation) applied to its columns from
/// `from` on, as [`linear`]: a single block's `linear1`, whose columns are
/// q, k, v and then the MLP's hidden layer.
pub fn linear_gelu(x: &Tensor, weight: &Tensor, bias: &Tensor, from: usize) -> Result<Tensor> {
    product(&[x], weight, bias, &Then::Gelu { from })
}

/// `residual + gate ⊙ (x · wᵀ + b)`, as [`linear`], for a `(b, L, n)`
/// residual and a `(b, 1, n)` gate, and `x` the columns of `parts` side by
/// side.
pub fn linear_gated_residual(
    parts: &[&Tensor],
    weight: &Tensor,
    bias: &Tensor,
    gate: &Tensor,
    residual: &Tensor,
) -> Result<Tensor> {
    let (residual, gate) = (with_even_rows(residual)?, with_even_rows(gate)?);
    let (r_storage, r_layout) = residual.storage_and_layout();
    let (g_storage, g_layout) = gate.storage_and_layout();
    use candle_core::Storage::Cpu;
    let (Cpu(rs), Cpu(gs)) = (&*r_storage, &*g_storage) else {
        candle_core::bail!("linear: CPU tensors only");
    };
    let then = Then::GatedResidual {
        residual: Rows::of(rs, r_layout, "linear", "residual")?,
        gate: Rows::of(gs, g_layout, "linear", "gate")?,
    };
    let out = product(parts, weight, bias, &then)?;
    if out.dims() != residual.dims() {
        candle_core::bail!(
            "linear: a residual {:?} for a product {:?}",
            residual.shape(),
            out.shape()
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use candle_core::Module;

    fn close(a: &Tensor, b: &Tensor, what: &str) {
        let err = crate::flux::test_util::max_abs_diff(a, b);
        let top = crate::flux::test_util::max_abs_diff(b, &b.zeros_like().unwrap());
        assert!(err <= 1e-5 * top.max(1.0), "{what} off by {err}");
    }

    #[test]
    fn linear_and_its_epilogues_match_candles() {
        let (k, n) = (37, 53);
        let weight = randn(&[n, k]);
        let bias = randn(&[n]);
        let reference = candle_nn::Linear::new(weight.clone(), Some(bias.clone()));
        // The weight stored transposed, as the transformer keeps it.
        let transposed = weight.t().unwrap().contiguous().unwrap().t().unwrap();
        let x = randn(&[2, 9, k]);
        let expected = reference.forward(&x).unwrap();
        for w in [&weight, &transposed] {
            close(&linear(&x, w, &bias).unwrap(), &expected, "linear");
        }
        // A narrow view of a wider tensor is read in place.
        let wide = randn(&[2, 9, k + 10]);
        let view = wide.narrow(2, 4, k).unwrap();
        let expected_view = reference.forward(&view.contiguous().unwrap()).unwrap();
        close(
            &linear(&view, &transposed, &bias).unwrap(),
            &expected_view,
            "a view",
        );
        // Rows of two batch items with a gap between them are copied first.
        let rows = x.narrow(1, 3, 4).unwrap();
        close(
            &linear(&rows, &transposed, &bias).unwrap(),
            &expected.narrow(1, 3, 4).unwrap(),
            "a row range",
        );
        close(
            &linear_gelu(&x, &transposed, &bias, 0).unwrap(),
            &expected.gelu().unwrap(),
            "linear_gelu",
        );
        let from = 20;
        let partly = Tensor::cat(
            &[
                &expected.narrow(2, 0, from).unwrap(),
                &expected.narrow(2, from, n - from).unwrap().gelu().unwrap(),
            ],
            2,
        )
        .unwrap();
        close(
            &linear_gelu(&x, &transposed, &bias, from).unwrap(),
            &partly,
            "GELU from a column on",
        );
        // One gate per batch item, a view of the modulation's columns.
        let gate = randn(&[2, 1, 3 * n]).narrow(2, n, n).unwrap();
        let residual = randn(&[2, 9, n]);
        let gated = (&residual + gate.broadcast_mul(&expected).unwrap()).unwrap();
        close(
            &linear_gated_residual(&[&x], &transposed, &bias, &gate, &residual).unwrap(),
            &gated,
            "linear_gated_residual",
        );
        // The input in two parts, the second a view, as the single blocks'
        // attention output and MLP hidden layer.
        let (left, right) = (
            x.narrow(2, 0, 12).unwrap(),
            x.narrow(2, 12, k - 12).unwrap(),
        );
        let wide_right = Tensor::cat(&[&randn(&[2, 9, 3]), &right], 2).unwrap();
        let right_view = wide_right.narrow(2, 3, k - 12).unwrap();
        close(
            &linear_gated_residual(
                &[&left.contiguous().unwrap(), &right_view],
                &transposed,
                &bias,
                &gate,
                &residual,
            )
            .unwrap(),
            &gated,
            "two parts",
        );
    }

    #[test]
    fn mismatched_shapes_are_errors_naming_the_layer() {
        let (weight, bias) = (randn(&[5, 4]), randn(&[5]));
        let err = linear(&randn(&[2, 3]), &weight, &bias).unwrap_err();
        assert!(err.to_string().contains("linear"), "{err}");
        assert!(linear(&randn(&[2, 4]), &weight, &randn(&[6])).is_err());
        let gate = randn(&[1, 5]);
        assert!(
            linear_gated_residual(&[&randn(&[2, 4])], &weight, &bias, &gate, &randn(&[3, 5]))
                .is_err(),
            "a residual of other rows"
        );
        assert!(
            linear_gated_residual(
                &[&randn(&[2, 4])],
                &weight,
                &bias,
                &randn(&[1, 4]),
                &randn(&[2, 5])
            )
            .is_err(),
            "a gate of other columns"
        );
        let parts = [&randn(&[2, 3]), &randn(&[3, 1])];
        assert!(
            linear_gated_residual(&parts, &weight, &bias, &randn(&[1, 5]), &randn(&[2, 5]))
                .is_err(),
            "parts of other rows"
        );
    }
}
