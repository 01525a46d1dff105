use super::tiles::{ramp, tile_starts};
use super::*;
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::flux::autoencoder as candle_vae;
use candle_transformers::models::flux::autoencoder::Config;

use crate::flux::test_util::max_abs_diff;

fn config() -> Config {
    Config {
        resolution: 256,
        in_channels: 3,
        ch: 32,
        out_ch: 3,
        ch_mult: vec![1, 1, 2, 2],
        num_res_blocks: 1,
        z_channels: 16,
        scale_factor: 0.3611,
        shift_factor: 0.1159,
    }
}

#[test]
fn decodes_as_candle_does_and_stops_when_asked() {
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
    let theirs = candle_vae::AutoEncoder::new(&config(), vb.clone()).unwrap();
    let on_candle = Decoder::candle(&config(), vb.pp("decoder")).unwrap();
    let owned = Decoder::new(&config(), vb.pp("decoder")).unwrap();
    assert!(
        matches!(owned, Decoder::Cpu(_)),
        "f32 on the CPU is the owned one"
    );
    let z = Tensor::randn(0f32, 1., (1, 16, 12, 10), &Device::Cpu).unwrap();
    // candle decodes (z / scale + shift); give ours the same input.
    let shifted = ((&z / 0.3611).unwrap() + 0.1159).unwrap();
    let expected = theirs.decode(&z).unwrap();
    let top = expected
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    // candle's layers (the attention's softmax is `cpu_ops`' on the
    // CPU), and the channels-last decoder: within f32 rounding.
    for (decoder, what) in [
        (&on_candle, "on candle's layers"),
        (&owned, "channels-last"),
    ] {
        let ours = decoder.forward(&shifted).unwrap();
        assert_eq!(ours.dims(), &[1, 3, 96, 80]);
        let err = max_abs_diff(&ours, &expected);
        assert!(
            err < 1e-4 * top,
            "{what}: off by {err} (values up to {top})"
        );
    }

    for decoder in [&on_candle, &owned] {
        let mut asked = 0;
        let stopped = decoder
            .decode(&shifted, &mut || {
                asked += 1;
                asked < 3
            })
            .unwrap();
        assert!(stopped.is_none());
        assert_eq!(asked, 3, "stops at the first no");
    }
}

#[test]
fn encodes_to_the_mean_of_candles_encoder() {
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
    let theirs = candle_vae::Encoder::new(&config(), vb.pp("encoder")).unwrap();
    let on_candle = Encoder::candle(&config(), vb.pp("encoder")).unwrap();
    let owned = Encoder::new(&config(), vb.pp("encoder")).unwrap();
    assert!(
        matches!(owned, Encoder::Cpu(_)),
        "f32 on the CPU is the owned one"
    );
    // Two images: each its own latent.
    let image = Tensor::rand(-1f32, 1., (2, 3, 72, 56), &Device::Cpu).unwrap();
    let moments = theirs.forward(&image).unwrap();
    assert_eq!(moments.dims(), &[2, 32, 9, 7]);
    let mean = moments.narrow(1, 0, 16).unwrap();
    let top = mean
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    for (encoder, what) in [
        (&on_candle, "on candle's layers"),
        (&owned, "channels-last"),
    ] {
        let latent = encoder.encode(&image, &mut || true).unwrap().unwrap();
        assert_eq!(latent.dims(), mean.dims());
        let err = max_abs_diff(&latent, &mean);
        assert!(
            err < 1e-4 * top,
            "{what}: off by {err} (values up to {top})"
        );
        let mut asked = 0;
        let stopped = encoder
            .encode(&image, &mut || {
                asked += 1;
                asked < 2
            })
            .unwrap();
        assert!(
            stopped.is_none() && asked == 2,
            "{what}: stops at the first no"
        );
    }
}

#[test]
fn tiles_cover_the_side_and_their_weights_blend() {
    assert_eq!(tile_starts(64), [0]);
    assert_eq!(tile_starts(100), [0, 36]);
    assert_eq!(tile_starts(256), [0, 56, 112, 168, 192]);
    // Across an overlap the two tiles' weights rise and fall, never 0.
    let len = TILE * 8;
    assert_eq!(ramp(0, len, false, true), 1.0);
    assert!(ramp(0, len, true, true) > 0.0 && ramp(0, len, true, true) < 0.05);
    assert_eq!(ramp(len / 2, len, true, true), 1.0);
    assert!(ramp(len - 1, len, true, true) > 0.0);
}

#[test]
fn a_tiled_decode_is_a_whole_one_for_one_tile_and_close_for_many() {
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
    let ours = Decoder::new(&config(), vb.pp("decoder")).unwrap();
    let small = Tensor::randn(0f32, 0.5, (1, 16, 40, 24), &Device::Cpu).unwrap();
    let whole = ours.forward(&small).unwrap();
    let tiled = ours.decode_tiled(&small, &mut || true).unwrap().unwrap();
    assert_eq!(max_abs_diff(&whole, &tiled), 0.0);

    // 80 latent pixels wide: two tiles side by side, 48 pixels shared.
    let wide = Tensor::randn(0f32, 0.5, (1, 16, 16, 80), &Device::Cpu).unwrap();
    let whole = ours.forward(&wide).unwrap();
    let tiled = ours.decode_tiled(&wide, &mut || true).unwrap().unwrap();
    assert_eq!(tiled.dims(), whole.dims());
    let scale = whole
        .abs()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let err = (&whole - &tiled)
        .unwrap()
        .abs()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        err < 0.5 * scale,
        "tiles differ by {err} on average (values {scale})"
    );
    // The blend is seamless: no jump at a tile's edge beyond the image's own.
    let row = tiled.get(0).unwrap().get(0).unwrap().get(64).unwrap();
    let row: Vec<f32> = row.to_vec1().unwrap();
    let steps: Vec<f32> = row.windows(2).map(|p| (p[1] - p[0]).abs()).collect();
    let typical = steps.iter().sum::<f32>() / steps.len() as f32;
    let edge = 64 * 8 - 1; // the first tile ends here
    assert!(steps[edge] < 10.0 * typical, "a seam at the tile's edge");
}
