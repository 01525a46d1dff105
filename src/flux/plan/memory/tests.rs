use candle_core::DType;

use crate::flux::weights::config::ConfigSource;
use crate::flux::weights::quant::{Quant, T5Quant};

use super::budget::*;
use super::estimate::*;
use super::params::*;
use super::sizing::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// FLUX.1-schnell's own configs (verbatim copies; CLIP's reconstructed).
fn real() -> ModelSize {
    let read = |p: &str| std::fs::read(format!("{FIXTURES}/{p}")).unwrap();
    let paths = REAL_CONFIGS.map(|p| (ConfigSource(p.into()), read(p)));
    let [a, b, c, d] = &paths;
    ModelSize::from_configs([(&a.0, &a.1), (&b.0, &b.1), (&c.0, &c.1), (&d.0, &d.1)]).unwrap()
}

fn work(width: u32, low_memory: bool) -> Workload {
    Workload {
        dtype: DType::F32,
        width,
        height: width,
        low_memory,
        // Planned as for a GPU with F32 activations.
        cpu: false,
        tiled_vae: false,
        edit: false,
        batch: 1,
    }
}

fn budget(gb: f64) -> MemoryBudget {
    MemoryBudget {
        bytes: (gb * GB) as u64,
        source: "a test budget".into(),
    }
}

#[test]
fn parameter_counts_match_the_real_files() {
    let size = real();
    // 776 tensors, 11.89 B parameters (shared/reference/gguf.md §1.2).
    assert_eq!(size.flux.total(), 11_891_178_560);
    assert_eq!(size.flux.block_matrices, 11_834_228_736);
    assert_eq!(size.flux.top_matrices, 53_870_592);
    // city96's Q8_0 and Q4_1 files hold exactly this much tensor data
    // (their sizes less the 54,048-byte header).
    assert_eq!(size.flux.gguf_bytes(Quant::Q8_0), Some(12_687_767_680));
    assert_eq!(size.flux.gguf_bytes(Quant::Q4_1), Some(7_510_292_608));
    // T5-XXL's 2-D weights, embedding included, bias table not (§2.1).
    let t5 = size.t5;
    assert_eq!(t5.matrices - 32 * 64 + t5.embedding, 4_762_107_904);
    // CLIP-L's text model: about 123 M parameters; the VAE decoder about 50 M.
    let clip = size.clip_params_bytes_f32 / 4;
    assert!((120_000_000..126_000_000).contains(&clip), "{clip}");
    let decoder = size.decoder_bytes_f32 / 4;
    assert!((45_000_000..56_000_000).contains(&decoder), "{decoder}");
}

#[test]
fn auto_takes_full_precision_where_it_fits_else_the_largest_type_that_does() {
    let size = real();
    let pick = |gb: f64, side: u32, low: bool| {
        choose(&size, &work(side, low), &budget(gb), None).map(|p| (p.transformer, p.t5))
    };
    // F32 on the CPU needs some 75 GB: a big server runs it.
    assert_eq!(
        pick(128.0, 1024, false).unwrap(),
        (Quant::None, T5Quant::None)
    );
    // This project's 24 GB machines: Q8_0 at 512², less at 1024².
    let at_512 = pick(22.0, 512, false).unwrap();
    let at_1024 = pick(22.0, 1024, false).unwrap();
    assert_eq!(at_512.0, Quant::Q8_0);
    let order = |q: Quant| Quant::GGUF.iter().position(|g| *g == q).unwrap();
    assert!(order(at_1024.0) >= order(at_512.0), "{at_1024:?}");
    // A 16 GB laptop: low-memory mode affords a larger type.
    let resident = pick(12.0, 512, false).unwrap();
    let low = pick(12.0, 512, true).unwrap();
    assert!(order(low.0) < order(resident.0), "{low:?} vs {resident:?}");
    assert_eq!(low.1, T5Quant::nearest(low.0));
    // Nothing fits: the error says what the smallest needs and what there is.
    let err = pick(3.0, 1024, false).unwrap_err().to_string();
    assert!(
        err.contains("q2_k") && err.contains("3.0 GB") && err.contains("--low-memory"),
        "{err}"
    );
    // A T5 type given by hand is kept.
    let plan = choose(&size, &work(512, false), &budget(22.0), Some(T5Quant::Q3KS)).unwrap();
    assert_eq!(plan.t5, T5Quant::Q3KS);
    assert!(plan.reason.contains("a test budget"), "{}", plan.reason);
}

#[test]
fn quantized_weights_stay_as_compact_as_their_files() {
    let size = real();
    // Q4_K_S: nothing repacks the blocks, and T5's embedding stays
    // quantized too (its rows are dequantized as they are looked up).
    let t5 = size.t5.resident_bytes(T5Quant::Q4KS, DType::F32);
    let file = T5Quant::Q4KS.real_file_bytes().unwrap();
    assert!(t5 <= file + 10_000_000, "{t5} against the file's {file}");
    let flux = size.flux.resident_bytes(Quant::Q4KS, DType::F32);
    let gguf = size.flux.gguf_bytes(Quant::Q4KS).unwrap();
    // Only the F16 embedders and vectors are widened to F32.
    assert!(
        flux > gguf && flux < gguf + 200_000_000,
        "{flux} against {gguf}"
    );
}

#[test]
fn the_peak_grows_with_the_image_and_shrinks_with_low_memory() {
    let size = real();
    let plan = (Quant::Q4_0, T5Quant::Q4KS);
    let small = estimate_peak(&size, plan, &work(256, false));
    let large = estimate_peak(&size, plan, &work(1024, false));
    let low = estimate_peak(&size, plan, &work(256, true));
    assert!(large > small + 2_000_000_000, "{small} {large}");
    assert!(low + 2_000_000_000 < small, "{low} {small}");
    // Q4_0 resident at 256²: the transformer (6.8 GB), T5 (2.7 GB + its
    // F32 embedding), CLIP and the VAE: between 10 and 13 GB.
    assert!((10e9..13e9).contains(&(small as f64)), "{small}");
}

#[test]
fn a_batch_takes_as_many_images_as_fit_and_an_edit_plans_its_encoder() {
    let plan = (Quant::Q4_0, T5Quant::Q4KS);
    let sizing = |gb: f64| Sizing {
        size: real(),
        plan,
        work: work(1024, false),
        budget: budget(gb),
    };
    let s = sizing(0.0);
    let need: Vec<u64> = (1..=4)
        .map(|b| s.need(1024, 1024, false, false, b))
        .collect();
    // Until the transformer's activations outgrow the VAE's (decoded one
    // image at a time), a batch costs nothing more; then each image does.
    assert!(
        need.windows(2).all(|p| p[1] >= p[0]) && need[2] > need[1],
        "{need:?}"
    );
    // A budget between two images' need and three's: batches of two.
    let between = (need[1] + need[2]) as f64 / 2.0 / GB;
    let s = sizing(between);
    assert_eq!(s.batch(1024, 1024, false, 4, VaeDecode::Whole), 2);
    assert_eq!(s.batch(1024, 1024, false, 1, VaeDecode::Whole), 1);
    assert_eq!(
        sizing(1e3).batch(1024, 1024, false, 10, VaeDecode::Whole),
        10
    );
    // An edit runs the encoder at full resolution: it needs more.
    assert!(s.need(1024, 1024, false, true, 1) > s.need(1024, 1024, false, false, 1));
}
