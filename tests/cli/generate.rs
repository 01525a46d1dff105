//! `schnell generate` and `schnell dev`: PNGs from tiny models, random models of the types asked, the seeded noise, and dtypes refused early.

use std::process::Command;

use crate::run::BIN;
use crate::support::TestHub;

#[test]
fn generate_makes_a_png_from_tiny_models_with_both_text_encoder_sets() {
    let models = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["dev", "tiny-models", models.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("noise"));
    let hub = TestHub::start(models.path());
    let cache = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();

    for encoders in ["flux-repo", "original"] {
        let png = work.path().join(format!("{encoders}.png"));
        let out = Command::new(BIN)
            .args([
                "generate",
                "a robot on a beach",
                "--width",
                "256",
                "--height",
                "288",
                "--steps",
                "2",
            ])
            .args([
                "--seed",
                "11",
                "--text-encoders",
                encoders,
                "--endpoint",
                &hub.endpoint,
            ])
            .arg("-o")
            .arg(&png)
            .env("HF_HUB_CACHE", cache.path())
            .env_remove("HF_HUB_OFFLINE")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{encoders}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("seed: 11") && stdout.contains("timings:"),
            "{stdout}"
        );
        let img = image::open(&png).unwrap();
        assert_eq!((img.width(), img.height()), (256, 288));
    }

    // Everything is cached now: offline works, and a bad size is refused clearly.
    let out = Command::new(BIN)
        .args([
            "generate",
            "x",
            "--width",
            "250",
            "--steps",
            "1",
            "--endpoint",
            "http://127.0.0.1:9",
        ])
        .arg("-o")
        .arg(work.path().join("bad.png"))
        .env("HF_HUB_CACHE", cache.path())
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("width") && stderr.contains("256"),
        "{stderr}"
    );

    // An edit of the first image: at its size unless told otherwise, with
    // the encoder's time reported; a mask of another size is refused.
    let edit = |extra: &[&str]| {
        Command::new(BIN)
            .args(["generate", "the robot at night", "--steps", "1"])
            .arg("--image")
            .arg(work.path().join("flux-repo.png"))
            .args(extra)
            .arg("-o")
            .arg(work.path().join("edit.png"))
            .args(["--endpoint", "http://127.0.0.1:9"])
            .env("HF_HUB_CACHE", cache.path())
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap()
    };
    let out = edit(&["--strength", "0.5", "--seed", "3"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("VAE encode"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let img = image::open(work.path().join("edit.png")).unwrap();
    assert_eq!((img.width(), img.height()), (256, 288));
    // One side given: the other keeps the image's proportions.
    let out = edit(&["--width", "512"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let img = image::open(work.path().join("edit.png")).unwrap();
    assert_eq!((img.width(), img.height()), (512, 576));
    let small = work.path().join("small-mask.png");
    image::RgbaImage::new(64, 64).save(&small).unwrap();
    let out = edit(&["--mask", small.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("mask") && stderr.contains("64×64"),
        "{stderr}"
    );
}

#[test]
fn random_models_writes_the_types_asked_and_generate_says_which_weights_run() {
    let models = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["dev", "random-models", models.path().to_str().unwrap()])
        .args(["--size", "tiny", "--quant", "q4_0,q2_k"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exists = |p: &str| models.path().join(p).exists();
    assert!(exists("city96/FLUX.1-schnell-gguf/flux1-schnell-Q4_0.gguf"));
    assert!(exists("city96/FLUX.1-schnell-gguf/flux1-schnell-Q2_K.gguf"));
    // T5's nearest types only, and no safetensors transformer.
    assert!(exists(
        "city96/t5-v1_1-xxl-encoder-gguf/t5-v1_1-xxl-encoder-Q4_K_S.gguf"
    ));
    assert!(exists(
        "city96/t5-v1_1-xxl-encoder-gguf/t5-v1_1-xxl-encoder-Q3_K_S.gguf"
    ));
    assert!(!exists(
        "city96/t5-v1_1-xxl-encoder-gguf/t5-v1_1-xxl-encoder-Q8_0.gguf"
    ));
    assert!(!exists(
        "black-forest-labs/FLUX.1-schnell/flux1-schnell.safetensors"
    ));

    let hub = TestHub::start(models.path());
    let cache = tempfile::tempdir().unwrap();
    let png = models.path().join("out.png");
    let generate = |extra: &[&str]| {
        Command::new(BIN)
            .args(["generate", "a red fox", "--width", "256", "--height", "256"])
            .args(["--steps", "1", "--seed", "3", "--endpoint", &hub.endpoint])
            .args(extra)
            .arg("-o")
            .arg(&png)
            .env("HF_HUB_CACHE", cache.path())
            .env_remove("HF_HUB_OFFLINE")
            .output()
            .unwrap()
    };
    let out = generate(&["--quant", "q4_0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("weights: --quant q4_0 (T5 q4_k_s) as asked"),
        "{stderr}"
    );

    // Auto with too little memory for anything: refused before loading, saying why.
    let out = generate(&["--quant", "auto", "--memory-budget", "100MB"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("no weights fit")
            && stderr.contains("0.1 GB")
            && stderr.contains("--memory-budget"),
        "{stderr}"
    );
    let out = generate(&["--quant", "q9_9"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("q4_k_s"));
}

#[test]
fn dev_noise_writes_the_noise_generate_starts_from() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("noise.safetensors");
    let out = Command::new(BIN)
        .args(["dev", "noise", path.to_str().unwrap(), "--seed", "11"])
        .args(["--width", "272", "--height", "256"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tensors = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).unwrap();
    let noise = &tensors["noise"];
    let expected = schnell::flux::seeded_noise(
        11,
        272,
        256,
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
    )
    .unwrap();
    assert_eq!(noise.dims(), &[1, 16, 32, 34]);
    assert_eq!(
        noise.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        expected.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
}

#[test]
fn bf16_on_the_cpu_is_refused_before_anything_is_fetched() {
    let cache = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["generate", "a fox", "--device", "cpu", "--dtype", "bf16"])
        // Nothing listens there: a fetch would fail with another message.
        .args(["--endpoint", "http://127.0.0.1:9"])
        .env("HF_HUB_CACHE", cache.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bf16 is not supported on the CPU") && stderr.contains("use f32"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 0);
}
