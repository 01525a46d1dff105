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

fn tiny_config() -> Config {
    Config {
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
    }
}

/// Random weights for candle's tiny FLUX, in `dtype`, and that model.
fn tiny_vars(cfg: &Config, dtype: DType) -> (VarMap, candle_flux::Flux) {
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, dtype, &Device::Cpu);
    let theirs = candle_flux::Flux::new(cfg, vb).unwrap();
    // A VarMap makes norm scales of zero, which would zero q and k and
    // leave the attention (and RoPE) untested: give them values.
    for (name, var) in vars.data().lock().unwrap().iter() {
        if name.ends_with("_norm.scale") {
            let scale = Tensor::randn(1f64, 0.5, var.dims(), &Device::Cpu).unwrap();
            var.set(&scale.to_dtype(dtype).unwrap()).unwrap();
        }
    }
    (vars, theirs)
}

/// A small FLUX with random weights shared by both implementations.
fn tiny_pair_in(dtype: DType) -> (Flux, candle_flux::Flux) {
    let cfg = tiny_config();
    let (vars, theirs) = tiny_vars(&cfg, dtype);
    let vb = VarBuilder::from_varmap(&vars, dtype, &Device::Cpu);
    // The second model reads the tensors the first created.
    let ours = Flux::new(&cfg, vb).unwrap();
    (ours, theirs)
}

/// One random input in `dtype`, with `txt_rows` text tokens, to two
/// models: their outputs, and the largest value of the first.
fn forwards(
    ours: &impl WithForward,
    theirs: &impl WithForward,
    dtype: DType,
    txt_rows: usize,
) -> (Tensor, Tensor, f32) {
    let dev = Device::Cpu;
    let randn = |shape: (usize, usize, usize)| {
        let t = Tensor::randn(0f32, 1., shape, &dev).unwrap();
        t.to_dtype(dtype).unwrap()
    };
    let img = randn((1, 16, 64));
    let img_ids = image_ids(64).to_dtype(dtype).unwrap();
    let txt = randn((1, txt_rows, 40));
    let txt_ids = Tensor::zeros((1, txt_rows, 3), dtype, &dev).unwrap();
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

/// Both models' outputs for one random input in `dtype`, and the
/// largest output value.
fn both_forwards(dtype: DType) -> (Tensor, Tensor, f32) {
    let (ours, theirs) = tiny_pair_in(dtype);
    forwards(&ours, &theirs, dtype, 7)
}

/// The tiny model from a GGUF file whose matrices are Q4_0 (the embedders'
/// and the last layer's kept in f32, as city96 keeps them unquantized):
/// ours on it computes what candle's full-precision FLUX computes on the
/// same weights dequantized, within f32 rounding. 16 image rows take the
/// panel products, 7 text rows and the modulations' one the row-by-row
/// ones. In 8 bits (`int8`, which rounds the inputs per block as candle's
/// own quantized FLUX and ggml do) the output stays within 2% of the
/// largest value: a wrong product would be off by about all of it.
#[test]
fn gguf_forward_is_candles_on_the_dequantized_weights() {
    use crate::flux::model::cpu_ops::{with_quantized_product, QuantizedProduct};
    with_quantized_product(QuantizedProduct::F32Panels, || gguf_forward_within(1e-5));
    with_quantized_product(QuantizedProduct::Int8, || gguf_forward_within(2e-2));
}

fn gguf_forward_within(bound: f32) {
    use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
    use candle_transformers::quantized_var_builder::VarBuilder as GgufVarBuilder;
    let cfg = tiny_config();
    let (vars, _) = tiny_vars(&cfg, DType::F32);
    let unquantized = ["img_in", "txt_in", "time_in", "vector_in", "final_layer"];
    let mut tensors = Vec::new();
    for (name, var) in vars.data().lock().unwrap().iter() {
        let t = var.as_tensor();
        let keep = unquantized.iter().any(|p| name.starts_with(p));
        let dtype = match t.rank() == 2 && !keep {
            true => GgmlDType::Q4_0,
            false => GgmlDType::F32,
        };
        tensors.push((name.clone(), QTensor::quantize(t, dtype).unwrap()));
    }
    let named: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut file = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut file, &[], &named).unwrap();
    let vb = GgufVarBuilder::from_gguf_buffer(file.get_ref(), &Device::Cpu).unwrap();
    let ours = Flux::new(&cfg, vb).unwrap();
    let dequantized = tensors
        .iter()
        .map(|(n, q)| (n.clone(), q.dequantize(&Device::Cpu).unwrap()))
        .collect();
    let vb = VarBuilder::from_tensors(dequantized, DType::F32, &Device::Cpu);
    let theirs = candle_flux::Flux::new(&cfg, vb).unwrap();
    let (a, b, top) = forwards(&ours, &theirs, DType::F32, 7);
    let err = max_abs_diff(&a, &b);
    assert!(err < bound * top, "off by {err} (values up to {top})");
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
