//! The `schnell` binary: `fetch` and `mirror` as a user runs them.
#![cfg(not(target_arch = "wasm32"))]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use support::{write_random, TestHub};

const BIN: &str = env!("CARGO_BIN_EXE_schnell");

fn fetch(endpoint: &str, cache: &std::path::Path, files: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args([
            "fetch",
            "--endpoint",
            endpoint,
            "--repo",
            "acme/tiny",
            "--file",
        ])
        .args(files)
        .env("HF_HUB_CACHE", cache)
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_ENDPOINT")
        .output()
        .unwrap()
}

#[test]
fn fetch_prints_where_each_file_landed() {
    let dir = tempfile::tempdir().unwrap();
    write_random(&dir.path().join("acme/tiny/model.safetensors"), 300_000, 7);
    std::fs::write(dir.path().join("acme/tiny/config.json"), b"{}").unwrap();
    let hub = TestHub::start(dir.path());
    let cache = tempfile::tempdir().unwrap();

    let out = fetch(
        &hub.endpoint,
        cache.path(),
        &["model.safetensors", "config.json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    for (line, name) in lines.iter().zip(["model.safetensors", "config.json"]) {
        let path = line.split('\t').nth(1).unwrap();
        assert!(path.starts_with(cache.path().to_str().unwrap()) && path.ends_with(name));
        assert_eq!(
            std::fs::read(path).unwrap(),
            std::fs::read(dir.path().join("acme/tiny").join(name)).unwrap()
        );
    }

    // One missing file: a non-zero exit that names it.
    let out = fetch(
        &hub.endpoint,
        cache.path(),
        &["config.json", "missing.json"],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("missing.json") && stderr.contains("acme/tiny"),
        "{stderr}"
    );
}

#[test]
fn mirror_serves_a_folder_to_fetch() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("acme/tiny")).unwrap();
    std::fs::write(dir.path().join("acme/tiny/config.json"), b"{\"a\":1}").unwrap();
    let mut mirror = Command::new(BIN)
        .args([
            "mirror",
            "--dir",
            dir.path().to_str().unwrap(),
            "--addr",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(mirror.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let endpoint = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .to_string();

    let cache = tempfile::tempdir().unwrap();
    let out = fetch(&endpoint, cache.path(), &["config.json"]);
    mirror.kill().unwrap();
    let _ = mirror.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("config.json"));
}

#[test]
fn fetch_reads_endpoint_home_and_token_file_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("acme/tiny")).unwrap();
    std::fs::write(dir.path().join("acme/tiny/config.json"), b"{}").unwrap();
    let hub = TestHub::start(dir.path());
    *hub.faults.require_token.lock().unwrap() = Some("hf_from_file".into());
    let home = tempfile::tempdir().unwrap();
    let run = |token_file: Option<&str>, token_env: Option<&str>| {
        if let Some(t) = token_file {
            std::fs::write(home.path().join("token"), format!("{t}\n")).unwrap();
        }
        let mut cmd = Command::new(BIN);
        cmd.args(["fetch", "--repo", "acme/tiny", "--file", "config.json"])
            .env("HF_HOME", home.path())
            .env("HF_ENDPOINT", &hub.endpoint)
            .env_remove("HF_HUB_CACHE")
            .env_remove("HF_TOKEN")
            .env_remove("HF_HUB_OFFLINE");
        if let Some(t) = token_env {
            cmd.env("HF_TOKEN", t);
        }
        cmd.output().unwrap()
    };

    let out = run(None, None);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("HF_TOKEN") && stderr.contains("licence"),
        "{stderr}"
    );

    let out = run(None, Some("hf_secret_wrong"));
    assert!(!out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        all.contains("403") && !all.contains("hf_secret_wrong"),
        "{all}"
    );

    let out = run(Some("hf_from_file"), None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let expected = home.path().join("hub/models--acme--tiny/snapshots");
    assert!(stdout.contains(expected.to_str().unwrap()), "{stdout}");
    assert!(!stdout.contains("hf_from_file"));
}

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
fn two_processes_fetching_one_file_download_it_once() {
    let dir = tempfile::tempdir().unwrap();
    write_random(&dir.path().join("acme/tiny/model.safetensors"), 3 << 20, 3);
    let hub = TestHub::start(dir.path());
    // Slow enough that the second process starts while the first downloads.
    hub.faults.throttle(1.5e6, std::time::Duration::ZERO);
    let cache = tempfile::tempdir().unwrap();
    let spawn = || {
        Command::new(BIN)
            .args([
                "fetch",
                "--endpoint",
                &hub.endpoint,
                "--repo",
                "acme/tiny",
                "--file",
                "model.safetensors",
            ])
            .env("HF_HUB_CACHE", cache.path())
            .env_remove("HF_HUB_OFFLINE")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    for out in [&a, &b] {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Neither found it cached when it looked, so both were fetching at once…
    for out in [&a, &b] {
        assert!(String::from_utf8_lossy(&out.stdout).contains("downloaded"));
    }
    // …and the second waited on the first's lock instead of downloading again.
    assert_eq!(
        hub.stats.sent("model.safetensors"),
        3 << 20,
        "the content was sent twice"
    );
    let path = |o: &std::process::Output| {
        String::from_utf8_lossy(&o.stdout)
            .split('\t')
            .nth(1)
            .unwrap()
            .to_string()
    };
    assert_eq!(path(&a), path(&b));
}

#[test]
fn version_and_devices_name_the_back_ends_built_in() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    let version = String::from_utf8(out.stdout).unwrap();
    let expected = if cfg!(feature = "cuda") {
        "back ends: cpu, cuda"
    } else {
        "back ends: cpu"
    };
    assert!(version.contains(expected), "{version}");

    let out = Command::new(BIN).arg("devices").output().unwrap();
    let listed = String::from_utf8(out.stdout).unwrap();
    assert!(listed.contains("cpu: compiled in\n  cpu: "), "{listed}");
    assert!(
        listed.contains("metal: not compiled in (macOS only"),
        "{listed}"
    );
    if !cfg!(feature = "cuda") {
        assert!(out.status.success());
        assert!(
            listed.contains("cuda: not compiled in (scripts/build-cuda.sh"),
            "{listed}"
        );
    }
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

/// Flips one byte of a file in place: same size, wrong content.
fn damage(path: &std::path::Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn fetch_verify_hashes_the_cache_and_repairs_what_is_damaged() {
    let dir = tempfile::tempdir().unwrap();
    write_random(&dir.path().join("acme/tiny/model.safetensors"), 300_000, 7);
    std::fs::write(dir.path().join("acme/tiny/config.json"), b"{\"a\": 1}\n").unwrap();
    let hub = TestHub::start(dir.path());
    let cache = tempfile::tempdir().unwrap();
    let names = ["model.safetensors", "config.json"];
    let out = fetch(&hub.endpoint, cache.path(), &names);
    assert!(out.status.success());
    let landed: Vec<std::path::PathBuf> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split('\t').nth(1).unwrap().into())
        .collect();
    for path in &landed {
        damage(&std::fs::canonicalize(path).unwrap());
    }

    let verify = |cache: &std::path::Path| {
        Command::new(BIN)
            .args(["fetch", "--verify", "--endpoint", &hub.endpoint])
            .args(["--repo", "acme/tiny", "--file"])
            .args(names)
            .env("HF_HUB_CACHE", cache)
            .env_remove("HF_HUB_OFFLINE")
            .env_remove("HF_ENDPOINT")
            .output()
            .unwrap()
    };
    let out = verify(cache.path());
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    for (line, name) in lines.iter().zip(names) {
        assert!(
            line.starts_with(name) && line.contains("repaired"),
            "{line}"
        );
        let path = line.split('\t').nth(1).unwrap();
        assert_eq!(
            std::fs::read(path).unwrap(),
            std::fs::read(dir.path().join("acme/tiny").join(name)).unwrap()
        );
    }

    // Whole again: verified, nothing downloaded.
    hub.stats.reset();
    let out = verify(cache.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.lines().all(|l| l.ends_with("verified")), "{stdout}");
    assert_eq!(hub.stats.requests(), 0);
}
