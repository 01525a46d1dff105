//! f32 layers for the CPU. For the VAE decoder (`super::vae_cpu`), on
//! channels-last feature maps: a Winograd 3×3 convolution, 1×1 convolutions
//! and matrix products on `gemm`, group norm fused with SiLU, and softmax.
//! For the transformer, on candle tensors: GELU and softmax, vectorised
//! (candle's call libm's `tanhf` and `expf` once per element: a fifth of a
//! step's time at 256²), GELU joined to its neighbour, q and k normed and
//! rotated in one pass, and attention with the heads merged.
//!
//! Why own them: candle 0.11's CPU `conv2d` gathers its im2col tiles one
//! element at a time, in NCHW, into a fresh buffer per tile; a profile of
//! the decode at 256² put 35% of the time there and 25% in the products.
//! Winograd F(2×2, 3×3) computes a 3×3 convolution as 16 matrix products
//! over a quarter of the pixels each: 4/9 of the direct multiply-adds, and
//! no im2col at all. Its transforms' coefficients are 0, ±½ and ±1, so it
//! stays within f32 rounding of the direct sum (pinned against candle's
//! `conv2d` below).

use gemm::Parallelism;
use rayon::prelude::*;

/// Defines a function whose body is compiled twice: for the baseline
/// x86-64 target (SSE2) and for AVX-512, chosen at run time. The loops
/// here are written for the compiler to vectorise; without this they would
/// get 4 lanes where this machine has 16. Helpers they call must be
/// `#[inline(always)]` to be compiled with the same features.
macro_rules! multiversion {
    ($(#[$meta:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx2,fma")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512dq")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has every feature `avx512` is compiled for.
                    return unsafe { avx512($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

/// A channels-last feature map of one image: `data[(y * w + x) * c + ch]`.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureMap {
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub data: Vec<f32>,
}

impl FeatureMap {
    pub fn new(h: usize, w: usize, c: usize, data: Vec<f32>) -> Self {
        assert_eq!(data.len(), h * w * c, "a {h}×{w}×{c} feature map");
        Self { h, w, c, data }
    }

    fn pixel(&self, y: usize, x: usize) -> &[f32] {
        &self.data[(y * self.w + x) * self.c..][..self.c]
    }
}

/// Pixels per rayon task in the passes over whole feature maps.
const PIXELS_PER_TASK: usize = 1024;

/// A matrix inside a slice, with its row and column strides.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl View<'_> {
    fn checked(self) -> Self {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride;
            assert!(last < self.data.len(), "a matrix view past its slice");
        }
        self
    }
}

/// `dst = (accumulate ? dst : 0) + scale · lhs · rhs`, with `dst` a
/// `lhs.rows × rhs.cols` matrix of row stride `dst_stride`.
fn matmul(
    dst: &mut [f32],
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
    assert!(
        (m - 1) * dst_stride + n <= dst.len(),
        "a product past its slice"
    );
    // SAFETY: every element the three views and `dst` reach lies inside its
    // slice (checked above), and `dst` is borrowed mutably, so apart from
    // the inputs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
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

fn all_threads() -> Parallelism {
    Parallelism::Rayon(rayon::current_num_threads())
}

/// A 3×3 convolution with padding 1 and stride 1, by Winograd F(2×2, 3×3).
#[derive(Clone, Debug)]
pub struct Conv3x3 {
    cin: usize,
    cout: usize,
    /// As candle and PyTorch keep it: `(cout, cin, 3, 3)`. The transformed
    /// weights (16/9 as large) are made per call, so memory stays as it was.
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl Conv3x3 {
    pub fn new(cout: usize, cin: usize, weight: Vec<f32>, bias: Vec<f32>) -> Self {
        assert_eq!(
            weight.len(),
            cout * cin * 9,
            "a ({cout}, {cin}, 3, 3) weight"
        );
        assert_eq!(bias.len(), cout, "a bias of {cout}");
        Self {
            cin,
            cout,
            weight,
            bias,
        }
    }

    /// `U = G g Gᵀ` for every pair of channels, laid out
    /// `u[(ci * 16 + e) * cout + co]`: each of the 16 products' right-hand
    /// side is a `cin × cout` matrix of row stride `16 · cout`.
    fn transformed_weights(&self) -> Vec<f32> {
        let (cin, cout) = (self.cin, self.cout);
        let mut u = vec![0f32; cin * 16 * cout];
        u.par_chunks_mut(16 * cout).enumerate().for_each(|(ci, u)| {
            for co in 0..cout {
                let g = &self.weight[(co * cin + ci) * 9..][..9];
                // G = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1], down the kernel's rows…
                let mut gg = [[0f32; 3]; 4];
                for x in 0..3 {
                    let (a, b, c) = (g[x], g[3 + x], g[6 + x]);
                    gg[0][x] = a;
                    gg[1][x] = 0.5 * (a + b + c);
                    gg[2][x] = 0.5 * (a - b + c);
                    gg[3][x] = c;
                }
                // …then along them.
                for (i, &[a, b, c]) in gg.iter().enumerate() {
                    let row = [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c];
                    for (j, v) in row.into_iter().enumerate() {
                        u[(i * 4 + j) * cout + co] = v;
                    }
                }
            }
        });
        u
    }

    /// The convolution of `x`, or of `x` upsampled ×2 by nearest neighbour
    /// (read in place, never made), plus `residual` if given.
    pub fn forward(
        &self,
        x: &FeatureMap,
        upsample: bool,
        residual: Option<&FeatureMap>,
    ) -> FeatureMap {
        assert_eq!(x.c, self.cin, "a convolution's input channels");
        let (cin, cout) = (self.cin, self.cout);
        let (h, w) = if upsample {
            (2 * x.h, 2 * x.w)
        } else {
            (x.h, x.w)
        };
        if let Some(r) = residual {
            assert_eq!((r.h, r.w, r.c), (h, w, cout), "a residual's shape");
        }
        let u = self.transformed_weights();
        // Tiles of 2×2 output pixels, taken a band of tile rows per task.
        let (tiles_h, tiles_w) = (h.div_ceil(2), w.div_ceil(2));
        let band = band_rows(tiles_h, tiles_w, cin.max(cout));
        let mut out = vec![0f32; h * w * cout];
        out.par_chunks_mut(2 * band * w * cout)
            .enumerate()
            .for_each(|(task, out)| {
                let band = Band {
                    x,
                    upsample,
                    h,
                    w,
                    ty0: task * band,
                    tile_rows: band.min(tiles_h - task * band),
                    tiles_w,
                };
                SCRATCH
                    .with_borrow_mut(|scratch| winograd_band(&band, &u, &self.bias, out, scratch));
                if let Some(r) = residual {
                    let start = 2 * band.ty0 * w * cout;
                    add_assign(out, &r.data[start..start + out.len()]);
                }
            });
        FeatureMap::new(h, w, cout, out)
    }
}

/// One task's rows of tiles, and where they come from.
struct Band<'a> {
    x: &'a FeatureMap,
    upsample: bool,
    /// The output's size (the input's, or twice it when upsampled).
    h: usize,
    w: usize,
    /// The first tile row, and how many.
    ty0: usize,
    tile_rows: usize,
    tiles_w: usize,
}

thread_local! {
    /// Each thread's transformed inputs and products (and attention
    /// scores), reused from call to call: fresh buffers of this size would
    /// be zeroed (or faulted in) every time.
    static SCRATCH: std::cell::RefCell<Scratch> = Default::default();
}

#[derive(Default)]
struct Scratch {
    scores: Vec<f32>,
    v: Vec<f32>,
    m: Vec<f32>,
    transform: Vec<f32>,
    zeros: Vec<f32>,
}

/// Frees every pool thread's scratch: after a decode it holds up to about
/// 10 MB per thread, which on a many-core machine adds up.
pub fn release_scratch() {
    rayon::broadcast(|_| SCRATCH.with_borrow_mut(|scratch| *scratch = Scratch::default()));
}

fn grown(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    &mut buffer[..len]
}

multiversion! {
    /// The convolution of one band of tiles into `out` (the band's rows):
    /// transformed in, 16 products, transformed out.
    fn winograd_band(band: &Band, u: &[f32], bias: &[f32], out: &mut [f32], scratch: &mut Scratch) {
        let (x, cin, cout) = (band.x, band.x.c, bias.len());
        let (h, w) = (band.h as isize, band.w as isize);
        let tiles = band.tile_rows * band.tiles_w;
        let Scratch {
            v, m, transform, zeros, ..
        } = scratch;
        let v = grown(v, tiles * 16 * cin);
        let m = grown(m, tiles * 16 * cout);
        let transform = grown(transform, 16 * cin.max(cout));
        let zeros = &*grown(zeros, cin);
        let input = |y: isize, x_: isize| -> &[f32] {
            if y < 0 || x_ < 0 || y >= h || x_ >= w {
                zeros
            } else if band.upsample {
                x.pixel(y as usize / 2, x_ as usize / 2)
            } else {
                x.pixel(y as usize, x_ as usize)
            }
        };
        for (t, v) in v.chunks_exact_mut(16 * cin).enumerate() {
            let (ty, tx) = (band.ty0 + t / band.tiles_w, t % band.tiles_w);
            let d: [&[f32]; 16] = std::array::from_fn(|i| {
                input((2 * ty + i / 4) as isize - 1, (2 * tx + i % 4) as isize - 1)
            });
            input_transform(&d, v, &mut transform[..16 * cin], cin);
        }
        for e in 0..16 {
            matmul(
                &mut m[e * cout..],
                16 * cout,
                false,
                View {
                    data: &v[e * cin..],
                    rows: tiles,
                    cols: cin,
                    row_stride: 16 * cin,
                    col_stride: 1,
                },
                View {
                    data: &u[e * cout..],
                    rows: cin,
                    cols: cout,
                    row_stride: 16 * cout,
                    col_stride: 1,
                },
                1.0,
                Parallelism::None,
            );
        }
        let (y, rows) = transform[..12 * cout].split_at_mut(4 * cout);
        for (t, m) in m.chunks_exact(16 * cout).enumerate() {
            let (ty, tx) = (t / band.tiles_w, t % band.tiles_w);
            output_transform(m, bias, y, rows, cout);
            for (i, j) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                let (oy, ox) = (2 * ty + i, 2 * tx + j);
                if 2 * band.ty0 + oy < band.h && ox < band.w {
                    out[(oy * band.w + ox) * cout..][..cout]
                        .copy_from_slice(&y[(i * 2 + j) * cout..][..cout]);
                }
            }
        }
    }
}

/// Tile rows per task: about 4 MB of transformed input per task, and at
/// least two tasks per thread where the image allows.
fn band_rows(tiles_h: usize, tiles_w: usize, channels: usize) -> usize {
    let tiles = (1 << 16) / channels.max(1);
    let balanced = tiles_h.div_ceil(2 * rayon::current_num_threads());
    (tiles / tiles_w.max(1)).clamp(1, balanced.max(1))
}

#[inline(always)]
/// `V = Bᵀ d B` for one 4×4 patch `d` (row-major pixels of `c` channels),
/// with `Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]`.
fn input_transform(d: &[&[f32]; 16], v: &mut [f32], scratch: &mut [f32], c: usize) {
    // Down the columns: scratch row r holds (Bᵀ d)[r][·].
    for s in 0..4 {
        let col = |r: usize| d[r * 4 + s];
        let mut t = scratch.chunks_exact_mut(c).skip(s).step_by(4);
        set_sub(t.next().unwrap(), col(0), col(2));
        set_add(t.next().unwrap(), col(1), col(2));
        set_sub(t.next().unwrap(), col(2), col(1));
        set_sub(t.next().unwrap(), col(1), col(3));
    }
    // Along the rows.
    for r in 0..4 {
        let t = |s: usize| &scratch[(r * 4 + s) * c..][..c];
        let mut v = v[r * 4 * c..].chunks_exact_mut(c);
        set_sub(v.next().unwrap(), t(0), t(2));
        set_add(v.next().unwrap(), t(1), t(2));
        set_sub(v.next().unwrap(), t(2), t(1));
        set_sub(v.next().unwrap(), t(1), t(3));
    }
}

/// `Y = Aᵀ m A + bias` for one tile, with `Aᵀ = [1 1 1 0; 0 1 -1 -1]`:
/// 2×2 output pixels of `c` channels, row-major, into `y`; `rows` (8·c)
/// holds `Aᵀ m` on the way.
#[inline(always)]
fn output_transform(m: &[f32], bias: &[f32], y: &mut [f32], rows: &mut [f32], c: usize) {
    let m = |r: usize, s: usize| &m[(r * 4 + s) * c..][..c];
    // Down the columns: rows[i * 4 + s] = (Aᵀ m)[i][s].
    for s in 0..4 {
        let (r0, r1) = rows[s * c..].split_at_mut(4 * c);
        combine4(
            &mut r0[..c],
            m(0, s),
            m(1, s),
            m(2, s),
            m(3, s),
            |a, b, c, _| a + b + c,
        );
        combine4(
            &mut r1[..c],
            m(0, s),
            m(1, s),
            m(2, s),
            m(3, s),
            |_, b, c, d| b - c - d,
        );
    }
    // Along the rows, plus the bias.
    for (i, y) in y.chunks_exact_mut(2 * c).enumerate() {
        let t = |s: usize| &rows[(i * 4 + s) * c..][..c];
        let (y0, y1) = y.split_at_mut(c);
        combine4(y0, t(0), t(1), t(2), bias, |a, b, c, bias| a + b + c + bias);
        combine4(y1, t(1), t(2), t(3), bias, |b, c, d, bias| b - c - d + bias);
    }
}

/// `out[i] = f(a[i], b[i], c[i], d[i])`, in a loop the compiler vectorises.
#[inline(always)]
fn combine4(
    out: &mut [f32],
    a: &[f32],
    b: &[f32],
    c: &[f32],
    d: &[f32],
    f: impl Fn(f32, f32, f32, f32) -> f32,
) {
    let n = out.len();
    let (a, b, c, d) = (&a[..n], &b[..n], &c[..n], &d[..n]);
    for i in 0..n {
        out[i] = f(a[i], b[i], c[i], d[i]);
    }
}

#[inline(always)]
fn set_sub(out: &mut [f32], a: &[f32], b: &[f32]) {
    for ((o, a), b) in out.iter_mut().zip(a).zip(b) {
        *o = a - b;
    }
}

#[inline(always)]
fn set_add(out: &mut [f32], a: &[f32], b: &[f32]) {
    for ((o, a), b) in out.iter_mut().zip(a).zip(b) {
        *o = a + b;
    }
}

multiversion! {
    fn add_assign(out: &mut [f32], a: &[f32]) {
        for (o, a) in out.iter_mut().zip(a) {
            *o += a;
        }
    }
}

/// A 1×1 convolution: one matrix product over all pixels.
#[derive(Clone, Debug)]
pub struct Conv1x1 {
    cin: usize,
    cout: usize,
    /// `(cout, cin)`, as candle keeps a `(cout, cin, 1, 1)` weight.
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl Conv1x1 {
    pub fn new(cout: usize, cin: usize, weight: Vec<f32>, bias: Vec<f32>) -> Self {
        assert_eq!(weight.len(), cout * cin, "a ({cout}, {cin}, 1, 1) weight");
        assert_eq!(bias.len(), cout, "a bias of {cout}");
        Self {
            cin,
            cout,
            weight,
            bias,
        }
    }

    /// The convolution of `x`, plus `residual` if given.
    pub fn forward(&self, x: &FeatureMap, residual: Option<&FeatureMap>) -> FeatureMap {
        assert_eq!(x.c, self.cin, "a convolution's input channels");
        let pixels = x.h * x.w;
        let mut out = match residual {
            Some(r) => {
                assert_eq!((r.h, r.w, r.c), (x.h, x.w, self.cout), "a residual's shape");
                r.data.clone()
            }
            None => vec![0f32; pixels * self.cout],
        };
        out.par_chunks_mut(PIXELS_PER_TASK * self.cout)
            .for_each(|o| {
                o.chunks_exact_mut(self.cout)
                    .for_each(|o| add_assign(o, &self.bias))
            });
        matmul(
            &mut out,
            self.cout,
            true,
            View {
                data: &x.data,
                rows: pixels,
                cols: self.cin,
                row_stride: self.cin,
                col_stride: 1,
            },
            View {
                data: &self.weight,
                rows: self.cin,
                cols: self.cout,
                row_stride: 1,
                col_stride: self.cin,
            },
            1.0,
            all_threads(),
        );
        FeatureMap::new(x.h, x.w, self.cout, out)
    }
}

/// Group normalisation over channels-last maps, optionally followed by SiLU.
#[derive(Clone, Debug)]
pub struct GroupNorm {
    groups: usize,
    eps: f64,
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

impl GroupNorm {
    pub fn new(groups: usize, eps: f64, gamma: Vec<f32>, beta: Vec<f32>) -> Self {
        assert_eq!(gamma.len(), beta.len(), "a group norm's weight and bias");
        assert!(
            groups > 0 && gamma.len().is_multiple_of(groups),
            "{} channels in {groups} groups",
            gamma.len()
        );
        Self {
            groups,
            eps,
            gamma,
            beta,
        }
    }

    /// Per channel, the `(scale, shift)` that normalises `x`: each group's
    /// mean and variance, folded with γ and β. One pass: sums of the values
    /// less the first pixel's (so that an offset mean cancels nothing),
    /// each task's in f32, all tasks' in f64.
    fn affine(&self, x: &FeatureMap) -> (Vec<f32>, Vec<f32>) {
        let c = x.c;
        assert_eq!(c, self.gamma.len(), "a group norm's channels");
        let per_group = c / self.groups;
        let pixels = (x.h * x.w) as f64;
        let origin = x.data[..c].to_vec();
        let (sums, squares) = x
            .data
            .par_chunks(PIXELS_PER_TASK * c)
            .map(|chunk| {
                let (mut sums, mut squares) = (vec![0f32; c], vec![0f32; c]);
                shifted_sums(chunk, &origin, &mut sums, &mut squares);
                let wide = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<_>>();
                (wide(sums), wide(squares))
            })
            .reduce(
                || (vec![0f64; c], vec![0f64; c]),
                |(mut s, mut q), (s2, q2)| {
                    s.iter_mut().zip(s2).for_each(|(a, b)| *a += b);
                    q.iter_mut().zip(q2).for_each(|(a, b)| *a += b);
                    (s, q)
                },
            );
        let (mut scale, mut shift) = (vec![0f32; c], vec![0f32; c]);
        for g in (0..c).step_by(per_group) {
            let group = g..g + per_group;
            let count = pixels * per_group as f64;
            let mean = group
                .clone()
                .map(|ch| origin[ch] as f64 * pixels + sums[ch])
                .sum::<f64>()
                / count;
            // Σ(v − mean)² = Σd² + 2(o − mean)Σd + n(o − mean)², d = v − o.
            let var = group
                .clone()
                .map(|ch| {
                    let o = origin[ch] as f64 - mean;
                    squares[ch] + 2.0 * o * sums[ch] + pixels * o * o
                })
                .sum::<f64>()
                / count;
            for ch in group {
                let a = self.gamma[ch] as f64 / (var + self.eps).sqrt();
                scale[ch] = a as f32;
                shift[ch] = (self.beta[ch] as f64 - mean * a) as f32;
            }
        }
        (scale, shift)
    }

    /// The normalised `x` (then SiLU'd if `silu`) as a new map.
    pub fn forward(&self, x: &FeatureMap, silu: bool) -> FeatureMap {
        let mut y = x.clone();
        self.forward_in_place(&mut y, silu);
        y
    }

    /// [`Self::forward`] over `x` itself.
    pub fn forward_in_place(&self, x: &mut FeatureMap, silu: bool) {
        let (scale, shift) = self.affine(x);
        x.data
            .par_chunks_mut(PIXELS_PER_TASK * x.c)
            .for_each(|chunk| scale_shift(chunk, &scale, &shift, silu));
    }
}

multiversion! {
    /// Per channel over whole pixels: `Σ(v − origin)` into `sums` and
    /// `Σ(v − origin)²` into `squares`.
    fn shifted_sums(chunk: &[f32], origin: &[f32], sums: &mut [f32], squares: &mut [f32]) {
        let c = origin.len();
        let (sums, squares) = (&mut sums[..c], &mut squares[..c]);
        for px in chunk.chunks_exact(c) {
            for i in 0..c {
                let d = px[i] - origin[i];
                sums[i] += d;
                squares[i] += d * d;
            }
        }
    }
}

multiversion! {
    /// `v · scale + shift` per channel over whole pixels, then SiLU if asked.
    fn scale_shift(chunk: &mut [f32], scale: &[f32], shift: &[f32], silu: bool) {
        let c = scale.len();
        let shift = &shift[..c];
        for px in chunk.chunks_exact_mut(c) {
            for i in 0..c {
                px[i] = px[i] * scale[i] + shift[i];
            }
            if silu {
                silu_in_place(px);
            }
        }
    }
}

/// `eˣ` in a form the compiler vectorises: Cephes' `expf` (range reduction
/// by ln 2, a degree-6 polynomial, the exponent set through the bits),
/// within 2 ulp of the true value over its range; clamped to ±88, where f32
/// over- or underflows anyway.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // Adding 1.5·2²³ rounds to an integer, which then sits in the low bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.3);
    let t = x * LOG2_E + ROUND;
    let n = t - ROUND;
    let n_bits = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_2e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((n_bits + 127) << 23) as u32)
}

/// `x · σ(x)` in place, as candle computes it (`x / (1 + e⁻ˣ)`).
#[inline(always)]
fn silu_in_place(xs: &mut [f32]) {
    for v in xs {
        *v /= 1.0 + exp(-*v);
    }
}

/// Each `len`-long row of `rows` replaced by its softmax.
fn softmax_rows(rows: &mut [f32], len: usize) {
    rows.par_chunks_mut(len).for_each(softmax);
}

multiversion! {
    /// `row` replaced by its softmax; the maximum and the sum are taken in
    /// 16 lanes, so that they vectorise.
    fn softmax(row: &mut [f32]) {
        let mut lanes = [f32::NEG_INFINITY; 16];
        let mut chunks = row.chunks_exact(16);
        for chunk in &mut chunks {
            for i in 0..16 {
                lanes[i] = lanes[i].max(chunk[i]);
            }
        }
        let max = chunks.remainder().iter().chain(&lanes).copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sums = [0f32; 16];
        let mut chunks = row.chunks_exact_mut(16);
        for chunk in &mut chunks {
            for i in 0..16 {
                chunk[i] = exp(chunk[i] - max);
                sums[i] += chunk[i];
            }
        }
        let mut sum: f32 = sums.iter().sum();
        for v in chunks.into_remainder() {
            *v = exp(*v - max);
            sum += *v;
        }
        let inv = 1.0 / sum;
        row.iter_mut().for_each(|v| *v *= inv);
    }
}

/// GELU, tanh approximation: `0.5·x·(1 + tanh z)` is `x·σ(2z)`, which
/// needs one `exp`.
#[inline(always)]
fn gelu_one(x: f32) -> f32 {
    const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;
    let z = SQRT_TWO_OVER_PI * x * (1.0 + 0.044_715 * x * x);
    x / (1.0 + exp(-2.0 * z))
}

multiversion! {
    fn gelu_in_place(xs: &mut [f32]) {
        for v in xs {
            *v = gelu_one(*v);
        }
    }
}

multiversion! {
    fn gelu_into(out: &mut [f32], xs: &[f32]) {
        for (o, &x) in out.iter_mut().zip(xs) {
            *o = gelu_one(x);
        }
    }
}

/// Elements per rayon task in elementwise passes over a tensor.
const ELEMENTS_PER_TASK: usize = 1 << 14;

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

struct Gelu;

impl candle_core::CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "schnell-gelu"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape), candle_core::Error> {
        map_cpu_f32(storage, layout, self.name(), |xs| {
            xs.par_chunks_mut(ELEMENTS_PER_TASK).for_each(gelu_in_place)
        })
    }
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

fn on_cpu_f32(x: &candle_core::Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == candle_core::DType::F32
}

/// candle's `Tensor::gelu` (tanh approximation); vectorised for f32 on the
/// CPU, within f32 rounding of candle's there; candle's elsewhere.
pub fn gelu(x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
    if on_cpu_f32(x) {
        x.contiguous()?.apply_op1_no_bwd(&Gelu)
    } else {
        x.gelu()
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

struct CatGelu;

impl candle_core::CustomOp2 for CatGelu {
    fn name(&self) -> &'static str {
        "schnell-cat-gelu"
    }

    fn cpu_fwd(
        &self,
        left: &candle_core::CpuStorage,
        left_layout: &candle_core::Layout,
        right: &candle_core::CpuStorage,
        right_layout: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape), candle_core::Error> {
        use candle_core::CpuStorage::F32;
        let (F32(left), F32(right)) = (left, right) else {
            candle_core::bail!("cat_gelu: f32 only");
        };
        let (b, l, n1) = left_layout.shape().dims3()?;
        let (b2, l2, n2) = right_layout.shape().dims3()?;
        // Rows of unit stride, anywhere: `right` is a narrow view of a wider
        // projection.
        let rows = |layout: &candle_core::Layout| match layout.stride() {
            &[s0, s1, 1] => Some((layout.start_offset(), s0, s1)),
            _ => None,
        };
        let (Some((o1, s10, s11)), Some((o2, s20, s21)), true) =
            (rows(left_layout), rows(right_layout), (b, l) == (b2, l2))
        else {
            candle_core::bail!(
                "cat_gelu: {:?} and {:?} with rows of unit stride",
                left_layout.shape(),
                right_layout.shape()
            );
        };
        let n = n1 + n2;
        let mut out = vec![0f32; b * l * n];
        if n > 0 {
            out.par_chunks_mut(n)
                .with_min_len(16)
                .enumerate()
                .for_each(|(row, out)| {
                    let (i, j) = (row / l.max(1), row % l.max(1));
                    let (a, g) = out.split_at_mut(n1);
                    a.copy_from_slice(&left[o1 + i * s10 + j * s11..][..n1]);
                    gelu_into(g, &right[o2 + i * s20 + j * s21..][..n2]);
                });
        }
        Ok((F32(out), candle_core::Shape::from((b, l, n))))
    }
}

/// `cat([left, gelu(right)], 2)` for `(b, L, ·)` tensors, in one pass on the
/// CPU in f32 (the single blocks' input to `linear2`; candle's `gelu` of the
/// strided projection and its `cat` take 27 ms at 1280 tokens, this 10);
/// candle's elsewhere.
pub fn cat_gelu(
    left: &candle_core::Tensor,
    right: &candle_core::Tensor,
) -> candle_core::Result<candle_core::Tensor> {
    if on_cpu_f32(left) && on_cpu_f32(right) {
        left.apply_op2_no_bwd(right, &CatGelu)
    } else {
        candle_core::Tensor::cat(&[left, &right.gelu()?], 2)
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
/// read in place (any strides but a unit last one: v may be a view of the
/// qkv projection), with the heads merged in the result: `(b, L, h·d)`, the
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
    if (b2, h2, d2) != (b, h, d) || v.dims() != k.dims() {
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
    let strides = |layout: &candle_core::Layout| match layout.stride() {
        &[sb, sh, sr, 1] => Some((layout.start_offset(), sb, sh, sr)),
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
                        let scores = grown(&mut scratch.scores, n * lk);
                        for head in 0..h {
                            let q = View {
                                data: &qs[qo.0 + i * qo.1 + head * qo.2 + r0 * qo.3..],
                                rows: n,
                                cols: d,
                                row_stride: qo.3,
                                col_stride: 1,
                            };
                            let kt = View {
                                data: &ks[ko.0 + i * ko.1 + head * ko.2..],
                                rows: d,
                                cols: lk,
                                row_stride: 1,
                                col_stride: ko.3,
                            };
                            matmul(scores, lk, false, q, kt, scale, Parallelism::None);
                            scores.chunks_exact_mut(lk).for_each(softmax);
                            let p = View {
                                data: scores,
                                rows: n,
                                cols: lk,
                                row_stride: lk,
                                col_stride: 1,
                            };
                            let v = View {
                                data: &vs[vo.0 + i * vo.1 + head * vo.2..],
                                rows: lk,
                                cols: d,
                                row_stride: vo.3,
                                col_stride: 1,
                            };
                            matmul(
                                &mut out[head * d..],
                                width,
                                false,
                                p,
                                v,
                                1.0,
                                Parallelism::None,
                            );
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
                        let scores = grown(&mut scratch.scores, n * lk);
                        let q = View {
                            data: q,
                            rows: n,
                            cols: d,
                            row_stride: d,
                            col_stride: 1,
                        };
                        let kt = View {
                            data: k,
                            rows: d,
                            cols: lk,
                            row_stride: 1,
                            col_stride: d,
                        };
                        matmul(scores, lk, false, q, kt, scale, Parallelism::None);
                        scores.chunks_exact_mut(lk).for_each(softmax);
                        let scores = View {
                            data: scores,
                            rows: n,
                            cols: lk,
                            row_stride: lk,
                            col_stride: 1,
                        };
                        let v = View {
                            data: v,
                            rows: lk,
                            cols: d,
                            row_stride: d,
                            col_stride: 1,
                        };
                        matmul(out, d, false, scores, v, 1.0, Parallelism::None);
                    });
                });
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, IndexOp, Module, Tensor};

    /// `(1, c, h, w)` NCHW → a channels-last map.
    fn to_map(t: &Tensor) -> FeatureMap {
        let (_, c, h, w) = t.dims4().unwrap();
        let data = t.squeeze(0).unwrap().permute((1, 2, 0)).unwrap();
        let data = data.flatten_all().unwrap().to_vec1().unwrap();
        FeatureMap::new(h, w, c, data)
    }

    fn randn(shape: &[usize]) -> Tensor {
        Tensor::randn(0f32, 1., shape, &Device::Cpu).unwrap()
    }

    fn vec(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// The largest difference, relative to the largest value of `reference`.
    fn relative_error(ours: &FeatureMap, reference: &FeatureMap) -> f32 {
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

    #[test]
    fn winograd_convolution_matches_candles_conv2d() {
        // Odd and even sides, channels below and above a vector's width.
        for (cin, cout, h, w) in [(3, 5, 7, 9), (16, 32, 8, 8), (40, 24, 13, 6), (64, 3, 1, 1)] {
            let x = randn(&[1, cin, h, w]);
            let weight = randn(&[cout, cin, 3, 3]);
            let bias = randn(&[cout]);
            let conv = candle_nn::Conv2d::new(
                weight.clone(),
                Some(bias.clone()),
                candle_nn::Conv2dConfig {
                    padding: 1,
                    ..Default::default()
                },
            );
            let ours = Conv3x3::new(cout, cin, vec(&weight), vec(&bias));
            let expected = to_map(&conv.forward(&x).unwrap());
            let got = ours.forward(&to_map(&x), false, None);
            let err = relative_error(&got, &expected);
            assert!(err < 1e-5, "{cin}→{cout} at {h}×{w}: off by {err}");

            // Upsampled ×2 first, and a residual added.
            let up = x.upsample_nearest2d(2 * h, 2 * w).unwrap();
            let residual = randn(&[1, cout, 2 * h, 2 * w]);
            let expected = to_map(&(conv.forward(&up).unwrap() + &residual).unwrap());
            let got = ours.forward(&to_map(&x), true, Some(&to_map(&residual)));
            let err = relative_error(&got, &expected);
            assert!(
                err < 1e-5,
                "upsampled {cin}→{cout} at {h}×{w}: off by {err}"
            );
        }
    }

    #[test]
    fn one_by_one_convolution_matches_candles() {
        let (cin, cout) = (24, 40);
        let x = randn(&[1, cin, 5, 7]);
        let weight = randn(&[cout, cin, 1, 1]);
        let bias = randn(&[cout]);
        let conv = candle_nn::Conv2d::new(weight.clone(), Some(bias.clone()), Default::default());
        let ours = Conv1x1::new(cout, cin, vec(&weight), vec(&bias));
        let residual = randn(&[1, cout, 5, 7]);
        let expected = to_map(&(conv.forward(&x).unwrap() + &residual).unwrap());
        let got = ours.forward(&to_map(&x), Some(&to_map(&residual)));
        assert!(relative_error(&got, &expected) < 1e-6);
    }

    #[test]
    fn group_norm_and_silu_match_candles() {
        let c = 64;
        // An offset mean, as activations have, tests the two-pass variance.
        let x = randn(&[1, c, 9, 11]).affine(3.0, 20.0).unwrap();
        let gamma = randn(&[c]);
        let beta = randn(&[c]);
        let norm = candle_nn::GroupNorm::new(gamma.clone(), beta.clone(), c, 32, 1e-6).unwrap();
        let ours = GroupNorm::new(32, 1e-6, vec(&gamma), vec(&beta));
        let normed = norm.forward(&x).unwrap();
        let got = ours.forward(&to_map(&x), false);
        assert!(relative_error(&got, &to_map(&normed)) < 1e-5);
        let expected = to_map(&candle_nn::ops::silu(&normed).unwrap());
        let got = ours.forward(&to_map(&x), true);
        assert!(relative_error(&got, &expected) < 1e-5);
    }

    #[test]
    fn exp_is_within_two_ulp_of_the_standard_one() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (ours, exact) = (exp(x), (x as f64).exp() as f32);
            worst = worst.max(((ours - exact) / exact).abs());
            x += 0.013;
        }
        assert!(worst < 2.0 * f32::EPSILON, "relative error {worst}");
        assert_eq!(exp(-1000.0), exp(-87.3));
        assert!(exp(1000.0).is_finite());
    }

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
        for v in [&wide, &vh] {
            let merged = attention_merged_heads(&q, &k, v).unwrap();
            assert!(crate::flux::test_util::max_abs_diff(&merged, &merged_expected) < 1e-5);
        }
        assert!(
            attention_tensors(&q, &q, &v).is_err(),
            "mismatched keys and values"
        );
    }

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
    fn gelu_and_softmax_match_candles() {
        let x = (randn(&[3, 7, 129]) * 4.0).unwrap();
        let close = |a: &Tensor, b: &Tensor, what: &str| {
            let err = crate::flux::test_util::max_abs_diff(a, b);
            assert!(err < 2e-6 * 16.0, "{what} off by {err}");
        };
        close(&gelu(&x).unwrap(), &x.gelu().unwrap(), "gelu");
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
        close(&gelu(&t).unwrap(), &t.gelu().unwrap(), "gelu of a view");
        // Beside another tensor, from a narrow view, as the single blocks
        // take it.
        let left = randn(&[3, 7, 5]);
        let right = x.narrow(2, 100, 29).unwrap();
        let expected = Tensor::cat(&[&left, &right.gelu().unwrap()], 2).unwrap();
        close(&cat_gelu(&left, &right).unwrap(), &expected, "cat_gelu");
        assert!(
            cat_gelu(&left, &randn(&[3, 6, 5])).is_err(),
            "rows that do not pair"
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
        let expected = crate::flux::attention::attention(&seq(&q), &seq(&k), &seq(&v)).unwrap();
        let expected = FeatureMap::new(h, w, c, vec(&expected));
        let got = attention(&to_map(&q), &to_map(&k), &to_map(&v));
        assert!(relative_error(&got, &expected) < 1e-5);
    }
}
