//! Products with quantized weights in 8-bit integers, on AVX-512 VNNI.
//!
//! The second of issue 26's two designs, the one ggml uses: each input row
//! is rounded in blocks of 32 to 8 bits with an f32 scale, and each panel
//! of weight rows is laid out in 8 bits too, so that `vpdpbusd` multiplies
//! and adds 64 byte pairs per instruction where an f32 FMA does 16. Each
//! block's integer sums are scaled into f32 accumulators, so the scales
//! stay per block. Q8_0 and Q4_0 blocks go into the panel as they are (an
//! f16 scale and 32 small integers); other types are dequantized by candle
//! and rounded again per block of 32.
//!
//! The result is not the f32 product: the inputs are rounded, as ggml's and
//! candle's own quantized products round them. On random rows that puts a
//! product 0.53% (root mean square, relative) from the f32 panels' for
//! Q8_0 and Q4_0, and 0.75% for the types rounded twice. It is exactly the
//! f32 product of the rounded operands, up to f32 summation order, which is
//! what the tests pin.
//!
//! Measured per type against the f32 panels (`cargo bench --bench
//! quantized_products`, BENCHMARKS.md): 1.5-2.5× as fast at every type and
//! FLUX shape, so it is the default wherever the CPU has VNNI (see
//! `quantized::QuantizedProduct`). T5 stays on f32 panels (see
//! `t5_encoder`).

use rayon::prelude::*;

use super::kernels::{grown, Rows, Scratch, SendPtr, SCRATCH};

/// Values per scale, in the inputs and in the re-quantized weights: the
/// block of Q8_0, Q4_0 and Q5_0, and the sub-block of Q4_K and Q5_K.
const BLOCK: usize = 32;

/// Output columns in one vector of sums.
const LANES: usize = 16;

/// Bytes of one block of `LANES` weight rows: `BLOCK / 4` runs of four
/// bytes per lane, which is what `vpdpbusd` multiplies against four input
/// bytes broadcast to every lane.
const GROUP_BLOCK: usize = BLOCK * LANES;

/// Input rows and groups of `LANES` columns in one tile: 4 × 2 vectors of
/// integer sums and as many of f32 sums, two weight vectors and a broadcast
/// fit AVX-512's 32 registers (4 × 4 spills, and was 2-5% slower).
const TILE_ROWS: usize = 4;
const TILE_GROUPS: usize = 2;

/// Whether this CPU has the instructions the 8-bit products use.
pub(super) fn available() -> bool {
    use std::arch::is_x86_feature_detected as has;
    has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512vnni") && has!("f16c")
}

/// Whether inputs split into parts of these lengths can be quantized in
/// whole blocks.
pub(super) fn fits(parts: &[Rows]) -> bool {
    parts.iter().all(|x| x.len % BLOCK == 0)
}

/// The inputs rounded to 8 bits: each value plus 128 (so unsigned, as
/// `vpdpbusd` wants its first operand), and a scale per block of each row.
struct Inputs {
    values: Vec<u8>,
    scales: Vec<f32>,
}

fn quantize_inputs(inputs: &[Rows], m: usize, k: usize) -> Inputs {
    let blocks = k / BLOCK;
    let mut values = vec![0u8; m * k];
    let mut scales = vec![0f32; m * blocks];
    values
        .par_chunks_mut(k)
        .zip(scales.par_chunks_mut(blocks))
        .enumerate()
        .for_each(|(i, (values, scales))| {
            let mut k0 = 0;
            for x in inputs {
                let part = k0..k0 + x.len;
                // SAFETY: `available()` (asserted by `accumulate_product`),
                // and the part's places in `values` and `scales`.
                unsafe {
                    quantize_row(
                        x.row(i),
                        &mut values[part.clone()],
                        &mut scales[part.start / BLOCK..part.end / BLOCK],
                    )
                };
                k0 += x.len;
            }
        });
    Inputs { values, scales }
}

/// A block's scale and its inverse: the largest magnitude goes to ±127.
fn block_scale(largest: f32) -> (f32, f32) {
    let scale = largest / 127.0;
    (scale, if scale > 0.0 { 1.0 / scale } else { 0.0 })
}

/// A block of 32 rounded to 8 bits (to nearest, ties to even), as 32-bit
/// lanes, and its scale.
///
/// # Safety
/// The CPU has AVX-512F; `block` holds `BLOCK` values.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn round_block(block: &[f32]) -> ([std::arch::x86_64::__m512i; 2], f32) {
    use std::arch::x86_64::*;
    assert!(block.len() >= BLOCK, "a block of {} values", block.len());
    // SAFETY: 32 values behind `block`.
    let (low, high) = unsafe {
        (
            _mm512_loadu_ps(block.as_ptr()),
            _mm512_loadu_ps(block.as_ptr().add(LANES)),
        )
    };
    let largest = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(low), _mm512_abs_ps(high)));
    let (scale, inverse) = block_scale(largest);
    let inverse = _mm512_set1_ps(inverse);
    // The rounding mode is the default, to nearest with ties to even.
    let round = |v| _mm512_cvtps_epi32(_mm512_mul_ps(v, inverse));
    ([round(low), round(high)], scale)
}

/// The inputs' rows, as `values + 128` and a scale per block.
///
/// # Safety
/// The CPU has AVX-512F and BW; `values` is as long as `row`, `scales`
/// has a place per block.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_row(row: &[f32], values: &mut [u8], scales: &mut [f32]) {
    use std::arch::x86_64::*;
    for ((block, values), scale) in row
        .chunks_exact(BLOCK)
        .zip(values.chunks_exact_mut(BLOCK))
        .zip(scales.iter_mut())
    {
        // SAFETY: whole blocks, on this CPU (the caller's word).
        unsafe {
            let ([low, high], s) = round_block(block);
            *scale = s;
            let offset = _mm512_set1_epi32(128);
            // Each lane holds 1..=255: its low byte is the value.
            let at = values.as_mut_ptr().cast::<__m128i>();
            _mm_storeu_si128(at, _mm512_cvtepi32_epi8(_mm512_add_epi32(low, offset)));
            _mm_storeu_si128(
                at.add(1),
                _mm512_cvtepi32_epi8(_mm512_add_epi32(high, offset)),
            );
        }
    }
}

/// Where one thread's panel of weights lives: per group of `LANES` rows and
/// block, `GROUP_BLOCK` signed bytes, `LANES` scales, and `LANES` offsets
/// `-128 · Σ q` that take the inputs' `+ 128` back out of the sums.
struct Panel<'a> {
    values: &'a mut [i8],
    scales: &'a mut [f32],
    offsets: &'a mut [i32],
}

/// Writes one block of a group's lane: its values in `vpdpbusd`'s runs of
/// four, its scale, and the offset that takes the inputs' `+ 128` out.
#[inline(always)]
fn put_block(
    q: &[i8; BLOCK],
    scale: f32,
    (lane, b): (usize, usize),
    values: &mut [i8],
    scales: &mut [f32],
    offsets: &mut [i32],
) {
    scales[b * LANES + lane] = scale;
    offsets[b * LANES + lane] = -128 * q.iter().map(|&v| i32::from(v)).sum::<i32>();
    let block = &mut values[b * GROUP_BLOCK..][..GROUP_BLOCK];
    for (run, four) in q.chunks_exact(4).enumerate() {
        block[run * 4 * LANES + lane * 4..][..4].copy_from_slice(four);
    }
}

/// `rows` (the first `valid` of `LANES` rows, each `k` long) rounded to 8
/// bits per block into one group of the panel; the missing rows are zeros.
///
/// # Safety
/// The CPU has AVX-512F and BW.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_group(
    rows: &[f32],
    valid: usize,
    k: usize,
    values: &mut [i8],
    scales: &mut [f32],
    offsets: &mut [i32],
) {
    use std::arch::x86_64::*;
    for lane in 0..LANES {
        for b in 0..k / BLOCK {
            let mut q = [0i8; BLOCK];
            let mut scale = 0.0;
            if lane < valid {
                // SAFETY: on this CPU (the caller's word), a whole block.
                unsafe {
                    let ([low, high], s) = round_block(&rows[lane * k + b * BLOCK..][..BLOCK]);
                    scale = s;
                    let at = q.as_mut_ptr().cast::<__m128i>();
                    _mm_storeu_si128(at, _mm512_cvtepi32_epi8(low));
                    _mm_storeu_si128(at.add(1), _mm512_cvtepi32_epi8(high));
                }
            }
            put_block(&q, scale, (lane, b), values, scales, offsets);
        }
    }
}

/// Bytes of a GGUF block of 32: an f16 scale, then 32 bytes (Q8_0) or
/// 16 bytes of nibbles, the low ones the first 16 values (Q4_0).
const Q8_0_BYTES: usize = 34;
const Q4_0_BYTES: usize = 18;

/// One group from `valid` rows of GGUF Q8_0 or Q4_0 blocks of `SIZE`
/// bytes, their integers and scales as they are; the missing rows are
/// zeros. Compiled for AVX-512 and F16C (the scales), which it is only
/// called with: in the baseline the f16 scales alone took a third of it.
///
/// # Safety
/// The CPU has AVX-512F, BW and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn copy_group<const SIZE: usize>(
    rows: &[u8],
    valid: usize,
    k: usize,
    values: &mut [i8],
    scales: &mut [f32],
    offsets: &mut [i32],
) {
    use std::arch::x86_64::*;
    let blocks = k / BLOCK;
    for lane in 0..LANES {
        for b in 0..blocks {
            let mut q = [0i8; BLOCK];
            let mut scale = 0.0;
            if lane < valid {
                let block = &rows[(lane * blocks + b) * SIZE..][..SIZE];
                let bits = i32::from(u16::from_le_bytes([block[0], block[1]]));
                scale = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits)));
                let data = &block[2..];
                if SIZE == Q8_0_BYTES {
                    for (q, &v) in q.iter_mut().zip(data) {
                        *q = v as i8;
                    }
                } else {
                    for (i, &v) in data.iter().enumerate() {
                        q[i] = (v & 0x0f) as i8 - 8;
                        q[i + BLOCK / 2] = (v >> 4) as i8 - 8;
                    }
                }
            }
            put_block(&q, scale, (lane, b), values, scales, offsets);
        }
    }
}

/// Where a product's weight rows come from.
pub(super) enum WeightRows<'a> {
    /// Any type: `f(j, values)` writes row `j` as f32, which is then
    /// rounded to 8 bits per block.
    Dequantized(&'a (dyn Fn(usize, &mut [f32]) + Sync)),
    /// GGUF Q8_0 rows of `row_bytes`: each block's scale and integers are
    /// taken as they are, exactly.
    Q8_0 { bytes: &'a [u8], row_bytes: usize },
    /// GGUF Q4_0 rows: each block's scale and its nibbles less 8, exactly.
    Q4_0 { bytes: &'a [u8], row_bytes: usize },
}

/// `out += x · wᵀ` for `x` the columns of `inputs` side by side (`m` rows,
/// each part a whole number of blocks, see [`fits`]), `w` the `(n, k)`
/// matrix, `out` `m × n` rows of stride `n`. Only where [`available`].
pub(super) fn accumulate_product(
    out: SendPtr,
    inputs: &[Rows],
    n: usize,
    k: usize,
    panel_columns: usize,
    w: &WeightRows,
) {
    assert!(
        available() && fits(inputs),
        "an 8-bit product it cannot run"
    );
    let m = inputs.first().map_or(0, |x| x.count);
    let blocks = k / BLOCK;
    let x = quantize_inputs(inputs, m, k);
    (0..n.div_ceil(panel_columns))
        .into_par_iter()
        .for_each(|p| {
            let (j0, cols) = (p * panel_columns, panel_columns.min(n - p * panel_columns));
            let groups = cols.div_ceil(LANES);
            SCRATCH.with_borrow_mut(|scratch| {
                let Scratch {
                    row: rows,
                    int8_values,
                    int8_scales,
                    int8_offsets,
                    ..
                } = scratch;
                let rows = grown(rows, LANES * k);
                let panel = Panel {
                    values: grown(int8_values, groups * blocks * GROUP_BLOCK),
                    scales: grown(int8_scales, groups * blocks * LANES),
                    offsets: grown(int8_offsets, groups * blocks * LANES),
                };
                for g in 0..groups {
                    let valid = LANES.min(cols - g * LANES);
                    let values =
                        &mut panel.values[g * blocks * GROUP_BLOCK..][..blocks * GROUP_BLOCK];
                    let scales = &mut panel.scales[g * blocks * LANES..][..blocks * LANES];
                    let offsets = &mut panel.offsets[g * blocks * LANES..][..blocks * LANES];
                    let first = j0 + g * LANES;
                    match *w {
                        WeightRows::Dequantized(row) => {
                            for (r, values) in rows.chunks_exact_mut(k).take(valid).enumerate() {
                                row(first + r, values);
                            }
                            // SAFETY: `available()`, asserted above.
                            unsafe { quantize_group(rows, valid, k, values, scales, offsets) };
                        }
                        WeightRows::Q8_0 { bytes, row_bytes } => {
                            let rows = &bytes[first * row_bytes..][..valid * row_bytes];
                            // SAFETY: `available()`, asserted above.
                            unsafe {
                                copy_group::<Q8_0_BYTES>(rows, valid, k, values, scales, offsets)
                            };
                        }
                        WeightRows::Q4_0 { bytes, row_bytes } => {
                            let rows = &bytes[first * row_bytes..][..valid * row_bytes];
                            // SAFETY: as above.
                            unsafe {
                                copy_group::<Q4_0_BYTES>(rows, valid, k, values, scales, offsets)
                            };
                        }
                    }
                }
                for i0 in (0..m).step_by(TILE_ROWS) {
                    for g0 in (0..groups).step_by(TILE_GROUPS) {
                        let tile = Tile {
                            rows: TILE_ROWS.min(m - i0),
                            groups: TILE_GROUPS.min(groups - g0),
                            // Lanes past the panel's last column are not stored.
                            last_lanes: (cols - g0 * LANES).min(TILE_GROUPS * LANES),
                        };
                        // SAFETY: the tile's rows `i0..` and columns
                        // `j0 + g0·LANES..` lie in the `m × n` output and
                        // in this panel (its lanes are cut at `cols`), no
                        // other panel writes them, and `available()`.
                        unsafe {
                            tile.run(&x, i0, k, &panel, g0, out.at(i0 * n + j0 + g0 * LANES), n)
                        };
                    }
                }
            });
        });
}

/// A tile's size: up to `TILE_ROWS` rows by `TILE_GROUPS` groups, of
/// which `last_lanes` columns are stored.
struct Tile {
    rows: usize,
    groups: usize,
    last_lanes: usize,
}

impl Tile {
    /// # Safety
    /// As [`tile`].
    #[allow(clippy::too_many_arguments)]
    unsafe fn run(
        &self,
        x: &Inputs,
        i0: usize,
        k: usize,
        panel: &Panel,
        g0: usize,
        out: *mut f32,
        n: usize,
    ) {
        let blocks = k / BLOCK;
        let args = TileArgs {
            values: x.values[i0 * k..].as_ptr(),
            scales: x.scales[i0 * blocks..].as_ptr(),
            k,
            weights: panel.values[g0 * blocks * GROUP_BLOCK..].as_ptr(),
            weight_scales: panel.scales[g0 * blocks * LANES..].as_ptr(),
            offsets: panel.offsets[g0 * blocks * LANES..].as_ptr(),
            out,
            n,
            last_lanes: self.last_lanes,
        };
        // SAFETY: passed on from the caller.
        unsafe {
            match (self.rows, self.groups) {
                (4, 2) => tile::<4, 2>(&args),
                (3, 2) => tile::<3, 2>(&args),
                (2, 2) => tile::<2, 2>(&args),
                (1, 2) => tile::<1, 2>(&args),
                (4, 1) => tile::<4, 1>(&args),
                (3, 1) => tile::<3, 1>(&args),
                (2, 1) => tile::<2, 1>(&args),
                (1, 1) => tile::<1, 1>(&args),
                other => unreachable!("a tile of {other:?}"),
            }
        }
    }
}

/// A tile's operands: the first of its input rows (values and scales), the
/// first of its groups in the panel, its first output element.
struct TileArgs {
    values: *const u8,
    scales: *const f32,
    k: usize,
    weights: *const i8,
    weight_scales: *const f32,
    offsets: *const i32,
    out: *mut f32,
    n: usize,
    last_lanes: usize,
}

/// `R` input rows times `C` groups of `LANES` weight rows, added onto the
/// output: per block, integer sums started at the offsets, then scaled by
/// the two blocks' scales into f32 sums.
///
/// # Safety
/// The CPU has AVX-512F, BW and VNNI; `R` rows of `k` input values and
/// their scales, `C` groups of the panel and `R` output rows of stride `n`
/// with `(C - 1)·LANES + min(LANES, last_lanes - (C - 1)·LANES)` columns
/// lie behind the pointers.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
// Indices, not iterators: each loop reads and writes several register arrays
// at the same `r` and `c`, which the compiler keeps in registers.
#[allow(clippy::needless_range_loop)]
unsafe fn tile<const R: usize, const C: usize>(a: &TileArgs) {
    use std::arch::x86_64::*;
    let blocks = a.k / BLOCK;
    let mut sums = [[_mm512_setzero_ps(); C]; R];
    // SAFETY (every access below): inside the operands, by the caller.
    unsafe {
        for b in 0..blocks {
            let mut ints = [[_mm512_setzero_si512(); C]; R];
            for c in 0..C {
                let offsets = _mm512_loadu_si512(a.offsets.add((c * blocks + b) * LANES).cast());
                for r in 0..R {
                    ints[r][c] = offsets;
                }
            }
            for run in 0..BLOCK / 4 {
                let mut weights = [_mm512_setzero_si512(); C];
                for c in 0..C {
                    let at = (c * blocks + b) * GROUP_BLOCK + run * 4 * LANES;
                    weights[c] = _mm512_loadu_si512(a.weights.add(at).cast());
                }
                for r in 0..R {
                    let four = a.values.add(r * a.k + b * BLOCK + run * 4);
                    let four = _mm512_set1_epi32(four.cast::<i32>().read_unaligned());
                    for c in 0..C {
                        ints[r][c] = _mm512_dpbusd_epi32(ints[r][c], four, weights[c]);
                    }
                }
            }
            for c in 0..C {
                let weight_scales = _mm512_loadu_ps(a.weight_scales.add((c * blocks + b) * LANES));
                for r in 0..R {
                    let scale =
                        _mm512_mul_ps(weight_scales, _mm512_set1_ps(*a.scales.add(r * blocks + b)));
                    sums[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ints[r][c]), scale, sums[r][c]);
                }
            }
        }
        for c in 0..C {
            let lanes = a.last_lanes.saturating_sub(c * LANES).min(LANES);
            let mask: __mmask16 = ((1u32 << lanes) - 1) as u16;
            for r in 0..R {
                let at = a.out.add(r * a.n + c * LANES);
                let sum = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, at), sums[r][c]);
                _mm512_mask_storeu_ps(at, mask, sum);
            }
        }
    }
}

/// `values` (a whole number of blocks) rounded to 8 bits per block and
/// back, as the products round their operands: what the tests compare with.
#[cfg(test)]
pub(super) fn round_to_8_bits(values: &[f32]) -> Vec<f32> {
    values
        .chunks_exact(BLOCK)
        .flat_map(|block| {
            let largest = block.iter().fold(0f32, |a, v| a.max(v.abs()));
            let (scale, inverse) = block_scale(largest);
            block
                .iter()
                .map(move |v| (v * inverse).round_ties_even() * scale)
        })
        .collect()
}
