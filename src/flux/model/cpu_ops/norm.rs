//! Group norm over a channels-last feature map, with the SiLU that follows it fused in.

use super::conv::{FeatureMap, PIXELS_PER_TASK};
use super::kernels::*;
use rayon::prelude::*;

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
                silu_in_place::<FMA>(px);
            }
        }
    }
}
