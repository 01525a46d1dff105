//! Products with GGUF weights that stay quantized in memory, in one of two
//! designs (issue 26), chosen by measurement (`cargo bench --bench
//! quantized_products`, BENCHMARKS.md):
//! - **8 bits** (`int8`, the default where the CPU has AVX-512 VNNI): the
//!   inputs and a panel of the weight rounded to 8 bits per block of 32 and
//!   multiplied with integer dot products, 2.5-3.3× as fast as the f32
//!   panels at FLUX's shapes on this machine's two cores (450-650 GFLOP/s);
//! - **f32 panels** (below; elsewhere, for F32, F16 and BF16 matrices, for
//!   T5, and with `SCHNELL_CPU_QUANTIZED_PRODUCT=f32`): each thread takes a
//!   panel of [`PANEL`] output columns at a time, dequantizes those rows of
//!   the weight into its own scratch, and lets gemm multiply every input
//!   row by the panel while it is still in cache, within f32 rounding of
//!   dequantize-then-matmul (170-210 GFLOP/s).
//!
//! FLUX's products have hundreds to thousands of rows (512 at 256², 1280 at
//! 512²), so each dequantized value is used that many times. candle's CPU
//! `QMatMul` instead takes a dot product per output element against 8-bit
//! quantized input rows, with no tiling (candle issue 3707): for Q4_0 at
//! 512 × 3072 × 3072 on this machine's two cores, 13 GFLOP/s.
//!
//! No f32 copy of a weight is made beyond the panel being used: a panel is
//! `PANEL × k` values, 3 MB for most of FLUX's products (`k` = 3072), 15 MB
//! for a single block's `linear2` (`k` = 15360), per thread (a quarter of
//! that in 8 bits), in scratch that the engine frees after each job
//! (`release_scratch`).

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8_0, GgmlType,
};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Result, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::kernels::{grown, madd, matmul_unchecked, Rows, Scratch, SendPtr, View, SCRATCH};
#[cfg(target_arch = "x86_64")]
use super::{design::in_8_bits, int8};

/// Output columns per panel: enough that gemm's packing of the input rows,
/// once per panel, is amortised; few enough that a layer has several panels
/// per thread. 128 was up to 6% slower at FLUX's shapes (512 was only
/// measured on a busy machine).
const PANEL: usize = 256;

/// Rows of the weight dequantized together before they are written across
/// the panel: 16 f32 are a cache line.
const GROUP: usize = 16;

/// Below this many input rows a panel's dequantized values are used too few
/// times to pay for laying them out for gemm: each row of the weight is
/// dequantized and dotted with the inputs where it is (the modulations and
/// embedders have one input row per image).
const MIN_ROWS_FOR_PANELS: usize = 16;

/// Dequantizes whole blocks: `bytes` holds `values.len() / block` of them.
type Dequantize = fn(bytes: &[u8], values: &mut [f32]);

fn dequantize<T: GgmlType>(bytes: &[u8], values: &mut [f32]) {
    let size = std::mem::size_of::<T>();
    assert!(
        bytes.len().is_multiple_of(size)
            && bytes.as_ptr().align_offset(std::mem::align_of::<T>()) == 0,
        "quantized rows that are not whole aligned blocks"
    );
    // SAFETY: the bytes are whole blocks of `T`, aligned for it (checked
    // above), and every bit pattern of a block's fields is a value.
    let blocks =
        unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), bytes.len() / size) };
    T::to_float(blocks, values);
}

/// The dequantizer of the types GGUF files of FLUX and T5 hold; `None` for
/// the others, which stay on candle's path.
fn dequantizer(dtype: GgmlDType) -> Option<Dequantize> {
    Some(match dtype {
        GgmlDType::F32 => dequantize::<f32>,
        GgmlDType::F16 => dequantize::<half::f16>,
        GgmlDType::BF16 => dequantize::<half::bf16>,
        GgmlDType::Q4_0 => dequantize::<BlockQ4_0>,
        GgmlDType::Q4_1 => dequantize::<BlockQ4_1>,
        GgmlDType::Q5_0 => dequantize::<BlockQ5_0>,
        GgmlDType::Q5_1 => dequantize::<BlockQ5_1>,
        GgmlDType::Q8_0 => dequantize::<BlockQ8_0>,
        GgmlDType::Q2K => dequantize::<BlockQ2K>,
        GgmlDType::Q3K => dequantize::<BlockQ3K>,
        GgmlDType::Q4K => dequantize::<BlockQ4K>,
        GgmlDType::Q5K => dequantize::<BlockQ5K>,
        GgmlDType::Q6K => dequantize::<BlockQ6K>,
        _ => return None,
    })
}

/// Whether `weight` is a matrix these products take: on the CPU, of a
/// type they dequantize, its rows whole blocks.
pub fn takes_quantized(weight: &QTensor) -> bool {
    let dtype = weight.dtype();
    weight.device().is_cpu()
        && dequantizer(dtype).is_some()
        && weight
            .shape()
            .dims2()
            .is_ok_and(|(_, k)| k % dtype.block_size() == 0)
}

/// The rows `ids` of a matrix `(n, k)`, as an `(ids, k)` f32 tensor on
/// `device`: an embedding lookup that leaves the table quantized on the CPU
/// (elsewhere the table is dequantized whole).
pub fn dequantize_rows(weight: &QTensor, ids: &[u32], device: &Device) -> Result<Tensor> {
    if !takes_quantized(weight) {
        let ids = Tensor::new(ids, device)?;
        return weight.dequantize(device)?.index_select(&ids, 0);
    }
    let rows = QuantizedRows::of(weight)?;
    let mut values = vec![0f32; ids.len() * rows.k];
    for (&id, row) in ids.iter().zip(values.chunks_exact_mut(rows.k.max(1))) {
        if id as usize >= rows.n {
            candle_core::bail!("embedding: token id {id} past the table's {} rows", rows.n);
        }
        rows.row(id as usize, row);
    }
    Tensor::from_vec(values, (ids.len(), rows.k), &Device::Cpu)?.to_device(device)
}

/// A GGUF matrix `(n, k)` on the CPU, read a row at a time.
pub(super) struct QuantizedRows<'a> {
    bytes: std::borrow::Cow<'a, [u8]>,
    pub(super) n: usize,
    pub(super) k: usize,
    row_bytes: usize,
    #[cfg_attr(
        not(target_arch = "x86_64"),
        allow(dead_code, reason = "read by the 8-bit products")
    )]
    dtype: GgmlDType,
    dequantize: Dequantize,
}

impl<'a> QuantizedRows<'a> {
    pub(super) fn of(weight: &'a QTensor) -> Result<Self> {
        let dtype = weight.dtype();
        let (n, k) = weight.shape().dims2()?;
        let Some(dequantize) = dequantizer(dtype).filter(|_| weight.device().is_cpu()) else {
            candle_core::bail!(
                "linear: a {dtype:?} weight on {:?}",
                weight.device().location()
            );
        };
        if k % dtype.block_size() != 0 {
            candle_core::bail!(
                "linear: a {dtype:?} weight's rows of {k} are not whole blocks of {}",
                dtype.block_size()
            );
        }
        let row_bytes = k / dtype.block_size() * dtype.type_size();
        let bytes = weight.data()?;
        if bytes.len() != n * row_bytes {
            candle_core::bail!(
                "linear: a {dtype:?} weight ({n}, {k}) holds {} bytes",
                bytes.len()
            );
        }
        Ok(Self {
            bytes,
            n,
            k,
            row_bytes,
            dtype,
            dequantize,
        })
    }

    fn row(&self, j: usize, values: &mut [f32]) {
        (self.dequantize)(&self.bytes[j * self.row_bytes..][..self.row_bytes], values);
    }
}

/// `out += x · wᵀ` for `x` the columns of `inputs` side by side, `out`
/// `m × n` rows of stride `n`.
pub(super) fn accumulate_product(out: &mut [f32], inputs: &[Rows], w: &QuantizedRows) {
    let (n, k) = (w.n, w.k);
    let m = inputs.first().map_or(0, |x| x.count);
    assert!(
        inputs.iter().map(|x| x.len).sum::<usize>() == k && out.len() >= m * n,
        "a quantized product of mismatched shapes"
    );
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let out = SendPtr(out.as_mut_ptr());
    if m < MIN_ROWS_FOR_PANELS {
        return few_rows(out, n, inputs, w);
    }
    #[cfg(target_arch = "x86_64")]
    if in_8_bits(w.dtype) && int8::fits(inputs) {
        let row = |j: usize, values: &mut [f32]| w.row(j, values);
        let (bytes, row_bytes) = (&w.bytes[..], w.row_bytes);
        let rows = match w.dtype {
            GgmlDType::Q8_0 => int8::WeightRows::Q8_0 { bytes, row_bytes },
            GgmlDType::Q4_0 => int8::WeightRows::Q4_0 { bytes, row_bytes },
            _ => int8::WeightRows::Dequantized(&row),
        };
        return int8::accumulate_product(out, inputs, n, k, PANEL, &rows);
    }
    (0..n.div_ceil(PANEL)).into_par_iter().for_each(|p| {
        let (j0, cols) = (p * PANEL, PANEL.min(n - p * PANEL));
        SCRATCH.with_borrow_mut(|scratch| {
            // Each row of the weight goes to a column of the panel, so
            // that gemm reads `k × cols` row-major, which it packs faster
            // than the weight's own layout: 3-12% per product here. The rows
            // are dequantized `GROUP` at a time and then written across, a
            // whole cache line of the panel at once.
            let Scratch { panel, row, .. } = scratch;
            let rows = grown(row, GROUP * k);
            let panel = grown(panel, cols * k);
            for g in (0..cols).step_by(GROUP) {
                let group = GROUP.min(cols - g);
                for (r, values) in rows.chunks_exact_mut(k).take(group).enumerate() {
                    w.row(j0 + g + r, values);
                }
                transpose_into(panel, cols, g, &rows[..group * k], k);
            }
            let mut k0 = 0;
            for x in inputs {
                let lhs = x.as_matrix();
                let rhs = View {
                    data: &panel[k0 * cols..],
                    rows: x.len,
                    cols,
                    row_stride: cols,
                    col_stride: 1,
                };
                let dst = out.at(j0);
                // SAFETY: this panel's columns `j0..j0 + cols` of the `m`
                // rows of stride `n` lie inside `out` (asserted above), and
                // no other panel writes them.
                unsafe { matmul_unchecked(dst, n, true, lhs, rhs, 1.0, Parallelism::None) };
                k0 += x.len;
            }
        });
    });
}

/// [`accumulate_product`] for a few input rows: each output column is the
/// dot products of one dequantized row of the weight with them.
fn few_rows(out: SendPtr, n: usize, inputs: &[Rows], w: &QuantizedRows) {
    let m = inputs[0].count;
    (0..n).into_par_iter().with_min_len(64).for_each_init(
        || vec![0f32; w.k],
        |row, j| {
            w.row(j, row);
            for i in 0..m {
                let mut k0 = 0;
                let mut sum = 0.0;
                for x in inputs {
                    sum += dot(x.row(i), &row[k0..k0 + x.len]);
                    k0 += x.len;
                }
                // SAFETY: `(i, j)` lies in the `m × n` output (asserted by
                // the caller), and only this task writes column `j`.
                unsafe { *out.at(i * n + j) += sum };
            }
        },
    );
}

multiversion! {
    /// Writes `rows` (each `k` long) as the columns `first..` of `panel`,
    /// whose rows are `cols` long: a whole group in 16×16 tiles, whose
    /// fixed sizes let the compiler keep them in registers.
    fn transpose_into(panel: &mut [f32], cols: usize, first: usize, rows: &[f32], k: usize) {
        let group = rows.len() / k;
        let whole = if group == GROUP { k / GROUP * GROUP } else { 0 };
        for kc in (0..whole).step_by(GROUP) {
            let mut tile = [[0f32; GROUP]; GROUP];
            for (r, line) in tile.iter_mut().enumerate() {
                line.copy_from_slice(&rows[r * k + kc..][..GROUP]);
            }
            for c in 0..GROUP {
                let line: &mut [f32; GROUP] = (&mut panel[(kc + c) * cols + first..][..GROUP])
                    .try_into()
                    .expect("a whole line");
                for r in 0..GROUP {
                    line[r] = tile[r][c];
                }
            }
        }
        for kk in whole..k {
            let line = &mut panel[kk * cols + first..][..group];
            for (r, v) in line.iter_mut().enumerate() {
                *v = rows[r * k + kk];
            }
        }
    }
}

multiversion! {
    /// `Σ a·b`, in 16 lanes so that it vectorises.
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (a, b) = (&a[..n], &b[..n]);
        let mut lanes = [0f32; 16];
        let (chunks_a, chunks_b) = (a.chunks_exact(16), b.chunks_exact(16));
        let tail: f32 = chunks_a.remainder().iter().zip(chunks_b.remainder()).map(|(x, y)| x * y).sum();
        for (x, y) in chunks_a.zip(chunks_b) {
            for l in 0..16 {
                lanes[l] = madd::<FMA>(x[l], y[l], lanes[l]);
            }
        }
        lanes.iter().sum::<f32>() + tail
    }
}

#[cfg(test)]
mod tests {
    use super::super::design::{with_quantized_product, QuantizedProduct};
    use super::super::test_support::*;
    use super::super::{linear, linear_gated_residual, linear_gelu};
    use super::*;
    use candle_core::{Device, Module, Tensor};

    /// Every type city96's FLUX and T5 files hold.
    const TYPES: [GgmlDType; 13] = [
        GgmlDType::F32,
        GgmlDType::F16,
        GgmlDType::BF16,
        GgmlDType::Q8_0,
        GgmlDType::Q6K,
        GgmlDType::Q5K,
        GgmlDType::Q5_1,
        GgmlDType::Q5_0,
        GgmlDType::Q4K,
        GgmlDType::Q4_1,
        GgmlDType::Q4_0,
        GgmlDType::Q3K,
        GgmlDType::Q2K,
    ];

    fn close(a: &Tensor, b: &Tensor, what: &str) {
        let err = crate::flux::test_util::max_abs_diff(a, b);
        let top = crate::flux::test_util::max_abs_diff(b, &b.zeros_like().unwrap());
        assert!(
            err <= 2e-5 * top.max(1.0),
            "{what}: off by {err} (values up to {top})"
        );
    }

    /// Each type's product is candle's dequantize-then-matmul within f32
    /// rounding: rows not a multiple of gemm's tiles, columns not a multiple
    /// of the panel, and inputs as views in parts.
    #[test]
    fn every_type_matches_dequantize_then_matmul() {
        with_quantized_product(QuantizedProduct::F32Panels, every_type_matches);
    }

    fn every_type_matches() {
        // k: two K-quant superblocks; n: two panels and a partial one.
        let (k, n) = (512, 2 * PANEL + 37);
        let bias = randn(&[n]);
        for dtype in TYPES {
            let weight = randn(&[n, k]);
            let q = QTensor::quantize(&weight, dtype).unwrap();
            assert!(takes_quantized(&q), "{dtype:?}");
            let dense = q.dequantize(&Device::Cpu).unwrap();
            let reference = candle_nn::Linear::new(dense, Some(bias.clone()));
            for rows in [1, 7, 45] {
                let x = randn(&[1, rows, k]);
                let expected = reference.forward(&x).unwrap();
                let what = format!("{dtype:?}, {rows} rows");
                close(&linear(&x, &q, Some(&bias)).unwrap(), &expected, &what);
                close(
                    &linear_gelu(&x, &q, Some(&bias), 0).unwrap(),
                    &expected.gelu().unwrap(),
                    &format!("{what}, GELU"),
                );
                // The input in two parts, the second a view.
                let (left, right) = (
                    x.narrow(2, 0, 256).unwrap(),
                    x.narrow(2, 256, k - 256).unwrap(),
                );
                let gate = randn(&[1, 1, n]);
                let residual = randn(&[1, rows, n]);
                let gated = (&residual + gate.broadcast_mul(&expected).unwrap()).unwrap();
                close(
                    &linear_gated_residual(&[&left, &right], &q, Some(&bias), &gate, &residual)
                        .unwrap(),
                    &gated,
                    &format!("{what}, gated, in parts"),
                );
            }
        }
    }

    /// In 8 bits each type's product is the f32 product of the inputs and
    /// the dequantized weight, each rounded to 8 bits per block of 32 (the
    /// weight only where it is not Q8_0 or Q4_0, whose integers are used):
    /// rows not a multiple of the tile, columns not a multiple of the
    /// panel or of 16, the input in parts. Inputs split inside a block, and
    /// F32, F16 and BF16 weights, stay on f32 panels; so does a CPU without
    /// VNNI.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn every_type_in_8_bits_is_the_product_of_the_rounded_operands() {
        let (k, n) = (512, 2 * PANEL + 37);
        let bias = randn(&[n]);
        let rounded = |t: &Tensor| {
            let dims = t.dims().to_vec();
            let values = if int8::available() {
                int8::round_to_8_bits(&vec(t))
            } else {
                vec(t)
            };
            Tensor::from_vec(values, dims, &Device::Cpu).unwrap()
        };
        for dtype in TYPES {
            let q = QTensor::quantize(&randn(&[n, k]), dtype).unwrap();
            let dense = q.dequantize(&Device::Cpu).unwrap();
            let in_8_bits = !matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
            // Q8_0's and Q4_0's integers are taken as they are.
            let rounds_weight = in_8_bits && !matches!(dtype, GgmlDType::Q8_0 | GgmlDType::Q4_0);
            let rounded_weight = if rounds_weight {
                rounded(&dense)
            } else {
                dense.clone()
            };
            for rows in [23, 45] {
                let what = format!("{dtype:?}, {rows} rows");
                let x = randn(&[1, rows, k]);
                let x_rounded = if in_8_bits { rounded(&x) } else { x.clone() };
                let expected = candle_nn::Linear::new(rounded_weight.clone(), Some(bias.clone()))
                    .forward(&x_rounded)
                    .unwrap();
                let ours = with_quantized_product(QuantizedProduct::Int8, || {
                    linear(&x, &q, Some(&bias)).unwrap()
                });
                close(&ours, &expected, &what);
                let (left, right) = (
                    x.narrow(2, 0, 256).unwrap(),
                    x.narrow(2, 256, k - 256).unwrap(),
                );
                let (gate, residual) = (randn(&[1, 1, n]), randn(&[1, rows, n]));
                let gated = with_quantized_product(QuantizedProduct::Int8, || {
                    linear_gated_residual(&[&left, &right], &q, Some(&bias), &gate, &residual)
                        .unwrap()
                });
                let expected_gated = (&residual + gate.broadcast_mul(&expected).unwrap()).unwrap();
                close(&gated, &expected_gated, &format!("{what}, gated, in parts"));
                // Split inside a block: f32 panels, exactly.
                let (left, right) = (
                    x.narrow(2, 0, 250).unwrap(),
                    x.narrow(2, 250, k - 250).unwrap(),
                );
                let exact = candle_nn::Linear::new(dense.clone(), Some(bias.clone()))
                    .forward(&x)
                    .unwrap();
                let split = with_quantized_product(QuantizedProduct::Int8, || {
                    linear_gated_residual(&[&left, &right], &q, Some(&bias), &gate, &residual)
                        .unwrap()
                });
                let exact_gated = (&residual + gate.broadcast_mul(&exact).unwrap()).unwrap();
                close(
                    &split,
                    &exact_gated,
                    &format!("{what}, split inside a block"),
                );
            }
        }
    }

    /// Rows that are not a whole number of 16-value tiles (F16 and F32
    /// have blocks of one value) take the transposition's tail.
    #[test]
    fn rows_of_any_width_match_for_unit_blocks() {
        let (k, n) = (40, PANEL + 3);
        let bias = randn(&[n]);
        for dtype in [GgmlDType::F16, GgmlDType::F32] {
            let q = QTensor::quantize(&randn(&[n, k]), dtype).unwrap();
            let dense = q.dequantize(&Device::Cpu).unwrap();
            let reference = candle_nn::Linear::new(dense, Some(bias.clone()));
            let x = randn(&[2, 20, k]);
            let expected = reference.forward(&x).unwrap();
            close(
                &linear(&x, &q, Some(&bias)).unwrap(),
                &expected,
                &format!("{dtype:?}"),
            );
        }
    }

    #[test]
    fn looked_up_rows_are_the_dequantized_tables() {
        let table = randn(&[40, 64]);
        for dtype in [GgmlDType::Q4_0, GgmlDType::Q8_0, GgmlDType::F16] {
            let q = QTensor::quantize(&table, dtype).unwrap();
            let ids = [3u32, 0, 39, 3];
            let expected = q
                .dequantize(&Device::Cpu)
                .unwrap()
                .index_select(&Tensor::new(&ids, &Device::Cpu).unwrap(), 0)
                .unwrap();
            let rows = dequantize_rows(&q, &ids, &Device::Cpu).unwrap();
            assert_eq!(vec(&rows), vec(&expected), "{dtype:?}");
            let err = dequantize_rows(&q, &[40], &Device::Cpu).unwrap_err();
            assert!(err.to_string().contains("token id 40"), "{err}");
        }
    }

    #[test]
    fn mismatched_shapes_are_errors_naming_the_layer() {
        let q = QTensor::quantize(&randn(&[8, 64]), GgmlDType::Q4_0).unwrap();
        let err = linear(&randn(&[20, 96]), &q, Some(&randn(&[8]))).unwrap_err();
        assert!(err.to_string().contains("linear"), "{err}");
        assert!(
            linear(&randn(&[20, 64]), &q, Some(&randn(&[9]))).is_err(),
            "a bias of 9"
        );
    }
}
