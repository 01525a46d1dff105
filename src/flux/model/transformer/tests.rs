use super::*;
use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::flux::model as candle_flux;

use crate::flux::test_util::max_abs_diff;

/// FLUX's real rotary layout: head dim 128 over axes (16, 56, 56).
fn real_embedder() -> (EmbedNd, candle_flux::EmbedNd) {
    (
        EmbedNd::new(128, 10_000, vec![16, 56, 56]),
        candle_flux::EmbedNd::new(128, 10_000, vec![16, 56, 56]),
    )
}

/// The ids `State::new` makes for a `side`² image: (0, row, col) per patch.
fn image_ids(side: usize) -> Tensor {
    let patches = side / 16;
    let ids: Vec<f32> = (0..patches * patches)
        .flat_map(|i| [0.0, (i / patches) as f32, (i % patches) as f32])
        .collect();
    Tensor::from_vec(ids, (1, patches * patches, 3), &Device::Cpu).unwrap()
}

#[test]
fn bf16_positions_match_f32_ones_at_2048px() {
    let (ours, candles) = real_embedder();
    let ids = image_ids(2048);
    let reference = ours.forward(&ids, DType::F32).unwrap();
    // The F32 path is candle's, unchanged.
    assert_eq!(max_abs_diff(&reference, &ids.apply(&candles).unwrap()), 0.0);

    let bf16_ids = ids.to_dtype(DType::BF16).unwrap();
    let ours_bf16 = ours.forward(&bf16_ids, DType::BF16).unwrap();
    assert_eq!(ours_bf16.dtype(), DType::BF16);
    // Only the final rounding to bf16 remains: half an ulp of values in [-1, 1].
    let err = max_abs_diff(&ours_bf16, &reference);
    assert!(err <= 1.0 / 256.0, "bf16 positions off by {err}");
    // candle's own bf16 path, for scale: angles rounded to bf16 first.
    let candle_err = max_abs_diff(&bf16_ids.apply(&candles).unwrap(), &reference);
    assert!(
        candle_err > 0.1,
        "candle's bf16 error was only {candle_err}"
    );
}

/// A small FLUX with random weights shared by both implementations.
fn tiny_pair_in(dtype: DType) -> (Flux, candle_flux::Flux) {
    let cfg = Config {
        in_channels: 64,
        vec_in_dim: 24,
        context_in_dim: 40,
        hidden_size: 64,
        mlp_ratio: 4.0,
        num_heads: 2,
        depth: 2,
        depth_single_blocks: 2,
        axes_dim: vec![8, 12, 12],
        theta: 10_000,
        qkv_bias: true,
        guidance_embed: false,
    };
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, dtype, &Device::Cpu);
    let theirs = candle_flux::Flux::new(&cfg, vb.clone()).unwrap();
    // A VarMap makes norm scales of zero, which would zero q and k and
    // leave the attention (and RoPE) untested: give them values.
    for (name, var) in vars.data().lock().unwrap().iter() {
        if name.ends_with("_norm.scale") {
            let scale = Tensor::randn(1f64, 0.5, var.dims(), &Device::Cpu).unwrap();
            var.set(&scale.to_dtype(dtype).unwrap()).unwrap();
        }
    }
    // The second model reads the tensors the first created.
    let ours = Flux::new(&cfg, vb).unwrap();
    (ours, theirs)
}

/// Both models' outputs for one random input in `dtype`, and the
/// largest output value.
fn both_forwards(dtype: DType) -> (Tensor, Tensor, f32) {
    let (ours, theirs) = tiny_pair_in(dtype);
    let dev = Device::Cpu;
    let randn = |shape: (usize, usize, usize)| {
        let t = Tensor::randn(0f32, 1., shape, &dev).unwrap();
        t.to_dtype(dtype).unwrap()
    };
    let img = randn((1, 16, 64));
    let img_ids = image_ids(64).to_dtype(dtype).unwrap();
    let txt = randn((1, 7, 40));
    let txt_ids = Tensor::zeros((1, 7, 3), dtype, &dev).unwrap();
    let t = Tensor::new(&[0.75f32], &dev)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let y = randn((1, 1, 24)).squeeze(0).unwrap();
    let a = ours
        .forward(&img, &img_ids, &txt, &txt_ids, &t, &y, None)
        .unwrap();
    let b = theirs
        .forward(&img, &img_ids, &txt, &txt_ids, &t, &y, None)
        .unwrap();
    assert_eq!(a.dims(), &[1, 16, 64]);
    assert_eq!(a.dtype(), dtype);
    let top = max_abs_diff(&a, &Tensor::zeros_like(&a).unwrap());
    assert!(top > 0.0);
    (a, b, top)
}

#[test]
fn f32_forward_is_candles_within_f32_rounding() {
    let (a, b, top) = both_forwards(DType::F32);
    // GELU, softmax, q/k norm + RoPE and attention are `cpu_ops`' on
    // the CPU; the rest is candle's.
    let err = max_abs_diff(&a, &b);
    assert!(err < 1e-5 * top, "off by {err} (values up to {top})");
}

/// The path GPUs take (candle's layers, q and k rotated per stream
/// before the streams join), run here in f64, where `cpu_ops` steps
/// aside: candle's values, within the f32 rounding of the comparison
/// (`max_abs_diff` subtracts in f32).
#[test]
fn the_other_devices_path_is_candles() {
    let (a, b, top) = both_forwards(DType::F64);
    let err = max_abs_diff(&a, &b);
    assert!(
        err <= 2.0 * f32::EPSILON * top,
        "off by {err} (values up to {top})"
    );
}
