//! Tiled decoding: overlapping tiles of latent pixels, blended linearly, for images whose whole decode would not fit.

use candle_core::{Result, Tensor};

use super::codec::Decoder;

/// Latent pixels per side of a tile in [`Decoder::decode_tiled`] (512 image
/// pixels).
pub const TILE: usize = 64;
/// Latent pixels of overlap between neighbouring tiles.
pub const OVERLAP: usize = 8;

/// Where tiles of `TILE` start along a side of `len` latent pixels: every
/// `TILE - OVERLAP`, the last one flush with the end.
pub(super) fn tile_starts(len: usize) -> Vec<usize> {
    if len <= TILE {
        return vec![0];
    }
    let mut starts: Vec<usize> = (0..len - TILE).step_by(TILE - OVERLAP).collect();
    starts.push(len - TILE);
    starts
}

/// A tile pixel's weight along one axis: rising over the overlap from an
/// edge shared with a neighbour, 1 elsewhere; never 0.
pub(super) fn ramp(p: usize, len: usize, neighbour_before: bool, neighbour_after: bool) -> f32 {
    let o = (OVERLAP * 8) as f32;
    let up = if neighbour_before {
        ((p as f32 + 0.5) / o).min(1.0)
    } else {
        1.0
    };
    let down = if neighbour_after {
        ((len - p) as f32 - 0.5) / o
    } else {
        1.0
    };
    up.min(down.min(1.0))
}

impl Decoder {
    /// Decodes in overlapping tiles of [`TILE`] latent pixels, blended
    /// linearly where they overlap: the activations of one tile instead of
    /// the whole image's, for images that would not fit otherwise. Each
    /// tile's attention and group norms see only that tile, so the result is
    /// close to a whole decode but not the same (as with diffusers' tiled
    /// decoding). One tile is a whole decode.
    pub fn decode_tiled(
        &self,
        xs: &Tensor,
        keep_going: &mut dyn FnMut() -> bool,
    ) -> Result<Option<Tensor>> {
        let (_, _, h, w) = xs.dims4()?;
        if h <= TILE && w <= TILE {
            return self.decode(xs, keep_going);
        }
        let (oh, ow) = (h * 8, w * 8);
        let mut sum = vec![0f32; 3 * oh * ow];
        let mut weights = vec![0f32; oh * ow];
        let (ys, xs_) = (tile_starts(h), tile_starts(w));
        for &y0 in &ys {
            for &x0 in &xs_ {
                let (th, tw) = (TILE.min(h), TILE.min(w));
                let tile = xs.narrow(2, y0, th)?.narrow(3, x0, tw)?.contiguous()?;
                let Some(image) = self.decode(&tile, keep_going)? else {
                    return Ok(None);
                };
                let pixels = image
                    .to_dtype(candle_core::DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let (ph, pw) = (th * 8, tw * 8);
                for yy in 0..ph {
                    let wy = ramp(yy, ph, y0 > 0, y0 + th < h);
                    for xx in 0..pw {
                        let wgt = wy * ramp(xx, pw, x0 > 0, x0 + tw < w);
                        let at = (y0 * 8 + yy) * ow + x0 * 8 + xx;
                        weights[at] += wgt;
                        for c in 0..3 {
                            sum[c * oh * ow + at] += wgt * pixels[(c * ph + yy) * pw + xx];
                        }
                    }
                }
            }
        }
        for c in 0..3 {
            for (v, wgt) in sum[c * oh * ow..(c + 1) * oh * ow].iter_mut().zip(&weights) {
                *v /= wgt;
            }
        }
        Tensor::from_vec(sum, (1, 3, oh, ow), &candle_core::Device::Cpu)?
            .to_device(xs.device())?
            .to_dtype(xs.dtype())
            .map(Some)
    }
}
