//! The VAE's layers on channels-last maps.

use rayon::prelude::*;

use super::kernels::*;
use gemm::Parallelism;

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

/// Where a 3×3 convolution reads and writes, against its input's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resample {
    /// Padding 1, stride 1: the input's size (most of the VAE's).
    Same,
    /// Of the input upsampled ×2 by nearest neighbour (read in place, never
    /// made): the decoder's upsampling.
    Up,
    /// Padded by one below and to the right, stride 2: half the input's
    /// size (the encoder's downsampling). Each output pixel is the
    /// odd-indexed one of a `Same` convolution (its window is the same
    /// nine pixels, the zero padding included), so only those are written.
    Down,
}

/// Pixels per rayon task in the passes over whole feature maps.
pub(super) const PIXELS_PER_TASK: usize = 1024;

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

    /// The convolution of `x`, resampled as `resample` says, plus
    /// `residual` if given.
    pub fn forward(
        &self,
        x: &FeatureMap,
        resample: Resample,
        residual: Option<&FeatureMap>,
    ) -> FeatureMap {
        assert_eq!(x.c, self.cin, "a convolution's input channels");
        let (cin, cout) = (self.cin, self.cout);
        let upsample = resample == Resample::Up;
        let down = resample == Resample::Down;
        // The stride-1 convolution computed, and the output kept of it.
        let (h, w) = if upsample {
            (2 * x.h, 2 * x.w)
        } else {
            (x.h, x.w)
        };
        if down {
            assert!(h % 2 == 0 && w % 2 == 0, "downsampling an even {h}×{w} map");
        }
        let (out_h, out_w, rows_per_tile) = if down { (h / 2, w / 2, 1) } else { (h, w, 2) };
        if let Some(r) = residual {
            assert_eq!((r.h, r.w, r.c), (out_h, out_w, cout), "a residual's shape");
        }
        let u = self.transformed_weights();
        // Tiles of 2×2 output pixels, taken a band of tile rows per task.
        let (tiles_h, tiles_w) = (h.div_ceil(2), w.div_ceil(2));
        let band = band_rows(tiles_h, tiles_w, cin.max(cout));
        let mut out = vec![0f32; out_h * out_w * cout];
        out.par_chunks_mut(rows_per_tile * band * out_w * cout)
            .enumerate()
            .for_each(|(task, out)| {
                let band = Band {
                    x,
                    upsample,
                    down,
                    h,
                    w,
                    ty0: task * band,
                    tile_rows: band.min(tiles_h - task * band),
                    tiles_w,
                };
                SCRATCH
                    .with_borrow_mut(|scratch| winograd_band(&band, &u, &self.bias, out, scratch));
                if let Some(r) = residual {
                    let start = rows_per_tile * band.ty0 * out_w * cout;
                    add_assign(out, &r.data[start..start + out.len()]);
                }
            });
        FeatureMap::new(out_h, out_w, cout, out)
    }
}

/// One task's rows of tiles, and where they come from.
struct Band<'a> {
    x: &'a FeatureMap,
    upsample: bool,
    /// Only each tile's odd pixel is written (`Resample::Down`).
    down: bool,
    /// The stride-1 convolution's size (the input's, or twice it when
    /// upsampled).
    h: usize,
    w: usize,
    /// The first tile row, and how many.
    ty0: usize,
    tile_rows: usize,
    tiles_w: usize,
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
            if band.down {
                // The tile's odd pixel, (1, 1), is the output's (ty, tx).
                out[(ty * (band.w / 2) + tx) * cout..][..cout].copy_from_slice(&y[3 * cout..][..cout]);
                continue;
            }
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

#[cfg(test)]
mod tests;
