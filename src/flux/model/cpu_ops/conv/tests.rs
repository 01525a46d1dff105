use super::super::test_support::*;
use super::*;
use crate::flux::model::cpu_ops::GroupNorm;
use candle_core::Module;

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
        let got = ours.forward(&to_map(&x), Resample::Same, None);
        let err = relative_error(&got, &expected);
        assert!(err < 1e-5, "{cin}→{cout} at {h}×{w}: off by {err}");

        // Upsampled ×2 first, and a residual added.
        let up = x.upsample_nearest2d(2 * h, 2 * w).unwrap();
        let residual = randn(&[1, cout, 2 * h, 2 * w]);
        let expected = to_map(&(conv.forward(&up).unwrap() + &residual).unwrap());
        let got = ours.forward(&to_map(&x), Resample::Up, Some(&to_map(&residual)));
        let err = relative_error(&got, &expected);
        assert!(
            err < 1e-5,
            "upsampled {cin}→{cout} at {h}×{w}: off by {err}"
        );
    }
}

#[test]
fn downsampling_is_candles_padded_stride_2_convolution() {
    // The encoder's: zero-padded below and right, then stride 2.
    for (cin, cout, h, w) in [(3, 5, 8, 10), (16, 32, 4, 4), (40, 24, 14, 6), (8, 8, 2, 2)] {
        let x = randn(&[1, cin, h, w]);
        let weight = randn(&[cout, cin, 3, 3]);
        let bias = randn(&[cout]);
        let conv = candle_nn::Conv2d::new(
            weight.clone(),
            Some(bias.clone()),
            candle_nn::Conv2dConfig {
                stride: 2,
                ..Default::default()
            },
        );
        let padded = x
            .pad_with_zeros(3, 0, 1)
            .unwrap()
            .pad_with_zeros(2, 0, 1)
            .unwrap();
        let expected = to_map(&conv.forward(&padded).unwrap());
        let ours = Conv3x3::new(cout, cin, vec(&weight), vec(&bias));
        let got = ours.forward(&to_map(&x), Resample::Down, None);
        assert_eq!((got.h, got.w, got.c), (h / 2, w / 2, cout));
        let err = relative_error(&got, &expected);
        assert!(err < 1e-5, "{cin}→{cout} at {h}×{w}: off by {err}");
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
