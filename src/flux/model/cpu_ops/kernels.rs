//! What the layers share: matrix views and products on `gemm`, per-thread
//! scratch, and the vectorisable `exp`, SiLU and softmax.

use gemm::Parallelism;

/// A matrix inside a slice, with its row and column strides.
#[derive(Clone, Copy)]
pub(super) struct View<'a> {
    pub(super) data: &'a [f32],
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) row_stride: usize,
    pub(super) col_stride: usize,
}

impl View<'_> {
    pub(super) fn checked(self) -> Self {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride;
            assert!(last < self.data.len(), "a matrix view past its slice");
        }
        self
    }
}

/// The distance between the rows of a tensor if its last dim has unit
/// stride and every other steps evenly through them: the innermost dim that
/// is not 1 sets the stride, and each outer one must step over all the rows
/// inside it.
pub(super) fn row_stride(layout: &candle_core::Layout) -> Option<usize> {
    let (dims, strides) = (layout.dims(), layout.stride());
    let len = dims.last().copied().unwrap_or(1);
    if len > 1 && strides.last() != Some(&1) {
        return None;
    }
    let (mut stride, mut span) = (None, 1);
    for (&d, &s) in dims.iter().zip(strides).rev().skip(1) {
        if d == 1 {
            continue;
        }
        match stride {
            None => stride = Some(s),
            Some(first) if s == first * span => {}
            Some(_) => return None,
        }
        span *= d;
    }
    Some(stride.unwrap_or(len))
}

/// `x` itself if its rows can be read in place (see [`Rows`]), else a
/// contiguous copy.
pub(super) fn with_even_rows(x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
    match row_stride(x.layout()) {
        Some(_) => Ok(x.clone()),
        None => x.contiguous(),
    }
}

/// The rows of a tensor whose last dim has unit stride and whose other dims
/// step through memory evenly (contiguous tensors, and narrow views of
/// them such as `attn.narrow(1, …)` or a projection's columns).
#[derive(Clone, Copy)]
pub(super) struct Rows<'a> {
    pub(super) data: &'a [f32],
    pub(super) count: usize,
    pub(super) len: usize,
    pub(super) stride: usize,
}

impl<'a> Rows<'a> {
    pub(super) fn of(
        storage: &'a candle_core::CpuStorage,
        layout: &candle_core::Layout,
        op: &str,
        what: &str,
    ) -> candle_core::Result<Self> {
        let candle_core::CpuStorage::F32(data) = storage else {
            candle_core::bail!("{op}: the {what} is not f32");
        };
        let dims = layout.dims();
        let (len, count) = match dims.split_last() {
            Some((&len, lead)) => (len, lead.iter().product::<usize>()),
            None => (1, 1),
        };
        let Some(stride) = row_stride(layout) else {
            candle_core::bail!("{op}: the {what}'s rows are not evenly spaced with unit steps");
        };
        let data = &data[layout.start_offset()..];
        if count > 0 && len > 0 && (count - 1) * stride + len > data.len() {
            candle_core::bail!("{op}: the {what}'s rows run past its storage");
        }
        Ok(Self {
            data,
            count,
            len,
            stride,
        })
    }

    pub(super) fn row(&self, i: usize) -> &'a [f32] {
        &self.data[i * self.stride..][..self.len]
    }

    /// The rows as a `count × len` matrix.
    pub(super) fn as_matrix(&self) -> View<'a> {
        View {
            data: self.data,
            rows: self.count,
            cols: self.len,
            row_stride: self.stride,
            col_stride: 1,
        }
    }
}

/// `dst = (accumulate ? dst : 0) + scale · lhs · rhs`, with `dst` a
/// `lhs.rows × rhs.cols` matrix of row stride `dst_stride`.
pub(super) fn matmul(
    dst: &mut [f32],
    dst_stride: usize,
    accumulate: bool,
    lhs: View,
    rhs: View,
    scale: f32,
    parallelism: Parallelism,
) {
    let (m, n) = (lhs.rows, rhs.cols);
    if m > 0 && n > 0 {
        assert!(
            (m - 1) * dst_stride + n <= dst.len(),
            "a product past its slice"
        );
    }
    // SAFETY: `dst` holds the product's rows (checked above), and is
    // borrowed mutably, so apart from the inputs.
    unsafe {
        matmul_unchecked(
            dst.as_mut_ptr(),
            dst_stride,
            accumulate,
            lhs,
            rhs,
            scale,
            parallelism,
        )
    }
}

/// [`matmul`] into a raw `dst`, for threads that write disjoint columns of
/// one output.
///
/// # Safety
/// `dst` must be valid for writes of `lhs.rows` rows of `rhs.cols` values,
/// `dst_stride` apart, that nothing else reads or writes meanwhile.
pub(super) unsafe fn matmul_unchecked(
    dst: *mut f32,
    dst_stride: usize,
    accumulate: bool,
    lhs: View,
    rhs: View,
    scale: f32,
    parallelism: Parallelism,
) {
    let (lhs, rhs) = (lhs.checked(), rhs.checked());
    assert_eq!(lhs.cols, rhs.rows, "matrix product of mismatched shapes");
    let (m, n, k) = (lhs.rows, rhs.cols, lhs.cols);
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: every element the two views reach lies inside its slice
    // (`checked`), and `dst` is the caller's promise.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_stride as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            if accumulate { 1.0 } else { 0.0 },
            scale,
            false,
            false,
            false,
            parallelism,
        )
    }
}

pub(super) fn all_threads() -> Parallelism {
    Parallelism::Rayon(rayon::current_num_threads())
}

thread_local! {
    /// Each thread's transformed inputs and products (and attention
    /// scores), reused from call to call: fresh buffers of this size would
    /// be zeroed (or faulted in) every time.
    pub(super) static SCRATCH: std::cell::RefCell<Scratch> = Default::default();
}

#[derive(Default)]
pub(super) struct Scratch {
    pub(super) scores: Vec<f32>,
    /// Each score row's softmax factor (see `softmax_unscaled`).
    pub(super) factors: Vec<f32>,
    pub(super) v: Vec<f32>,
    pub(super) m: Vec<f32>,
    pub(super) transform: Vec<f32>,
    pub(super) zeros: Vec<f32>,
    /// A dequantized panel of a quantized weight, and one row of it (see
    /// `quantized`).
    pub(super) panel: Vec<f32>,
    pub(super) row: Vec<f32>,
    /// A panel in 8 bits (see `int8`, x86-64 only).
    #[cfg(target_arch = "x86_64")]
    pub(super) int8_values: Vec<i8>,
    #[cfg(target_arch = "x86_64")]
    pub(super) int8_scales: Vec<f32>,
    #[cfg(target_arch = "x86_64")]
    pub(super) int8_offsets: Vec<i32>,
}

/// Frees every pool thread's scratch: after a decode it holds up to about
/// 10 MB per thread, after a quantized product up to 17 MB (a panel of a
/// single block's `linear2`), which on a many-core machine adds up.
pub fn release_scratch() {
    rayon::broadcast(|_| SCRATCH.with_borrow_mut(|scratch| *scratch = Scratch::default()));
}

pub(super) fn grown<T: Default + Clone>(buffer: &mut Vec<T>, len: usize) -> &mut [T] {
    if buffer.len() < len {
        buffer.resize(len, T::default());
    }
    &mut buffer[..len]
}

/// The output's start, shared by the threads that write its parts.
#[derive(Clone, Copy)]
pub(super) struct SendPtr(pub(super) *mut f32);

// SAFETY: each thread writes only its own part of the output (each user
// says which).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    pub(super) fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: callers stay inside the output.
        unsafe { self.0.add(offset) }
    }
}

/// `eˣ` in a form the compiler vectorises: Cephes' `expf` (range reduction
/// by ln 2, a degree-6 polynomial, the exponent set through the bits),
/// within 2 ulp of the true value over its range; clamped to ±88, where f32
/// over- or underflows anyway.
#[inline(always)]
pub(super) fn exp<const FMA: bool>(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // Adding 1.5·2²³ rounds to an integer, which then sits in the low bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.3);
    let t = madd::<FMA>(x, LOG2_E, ROUND);
    let n = t - ROUND;
    let n_bits = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = madd::<FMA>(n, 2.121_944_4e-4, madd::<FMA>(n, -0.693_359_4, x));
    let mut p = 1.987_569_1e-4f32;
    p = madd::<FMA>(p, r, 1.398_2e-3);
    p = madd::<FMA>(p, r, 8.333_452e-3);
    p = madd::<FMA>(p, r, 4.166_579_6e-2);
    p = madd::<FMA>(p, r, 0.166_666_65);
    p = madd::<FMA>(p, r, 0.5);
    let y = madd::<FMA>(p * r, r, r + 1.0);
    y * f32::from_bits(((n_bits + 127) << 23) as u32)
}

/// `a · b + c`, in one rounding where the CPU fuses them (`FMA`, in
/// `multiversion!` bodies); in two elsewhere, where `mul_add` would call
/// libm's exact and slow `fmaf`.
#[inline(always)]
pub(super) fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `x · σ(x)` in place, as candle computes it (`x / (1 + e⁻ˣ)`).
#[inline(always)]
pub(super) fn silu_in_place<const FMA: bool>(xs: &mut [f32]) {
    for v in xs {
        *v /= 1.0 + exp::<FMA>(-*v);
    }
}

/// `row` replaced by its softmax.
pub(super) fn softmax(row: &mut [f32]) {
    let inv = softmax_unscaled(row);
    scale_in_place(row, inv);
}

multiversion! {
    pub(super) fn scale_in_place(row: &mut [f32], by: f32) {
        row.iter_mut().for_each(|v| *v *= by);
    }
}

multiversion! {
    /// `row` replaced by `exp(row − max row)`, returning the factor that
    /// makes it the softmax, `1 / Σ exp(row − max row)`: attention applies
    /// it to the `d` values of its product rather than to all `L` scores.
    /// The maximum and the sum are taken in 16 lanes, so that they
    /// vectorise.
    pub(super) fn softmax_unscaled(row: &mut [f32]) -> f32 {
        // Four vectors of lanes, so that the maxima do not wait on each
        // other; `>` rather than `f32::max`, which would add NaN checks.
        let mut lanes = [f32::NEG_INFINITY; 64];
        let mut chunks = row.chunks_exact(64);
        for chunk in &mut chunks {
            for i in 0..64 {
                lanes[i] = if chunk[i] > lanes[i] { chunk[i] } else { lanes[i] };
            }
        }
        let max = chunks.remainder().iter().chain(&lanes).copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sums = [0f32; 16];
        let mut chunks = row.chunks_exact_mut(16);
        for chunk in &mut chunks {
            for i in 0..16 {
                chunk[i] = exp::<FMA>(chunk[i] - max);
                sums[i] += chunk[i];
            }
        }
        let mut sum: f32 = sums.iter().sum();
        for v in chunks.into_remainder() {
            *v = exp::<FMA>(*v - max);
            sum += *v;
        }
        1.0 / sum
    }
}

/// Whether `x` is an f32 tensor on the CPU, where these layers apply.
pub fn on_cpu_f32(x: &candle_core::Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == candle_core::DType::F32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_the_standard_one() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let exact = (x as f64).exp() as f32;
            // Both forms: with fused multiply-adds and without.
            for ours in [exp::<false>(x), exp::<true>(x)] {
                worst = worst.max(((ours - exact) / exact).abs());
            }
            x += 0.013;
        }
        assert!(worst < 2.0 * f32::EPSILON, "relative error {worst}");
        assert_eq!(exp::<false>(-1000.0), exp::<false>(-87.3));
        assert!(exp::<true>(1000.0).is_finite());
    }
}
