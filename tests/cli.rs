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
    // …and the second waited on the first's lock instead of downloading
    // again: once, give or take what was in flight on a connection whose
    // range another one took over at the end.
    let sent = hub.stats.sent("model.safetensors");
    assert!(
        (3 << 20..2 * (3 << 20)).contains(&sent),
        "the content was sent twice: {sent} bytes"
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

/// `schnell serve` on a free port; its URL, once it listens. Output goes to
/// `log`.
fn spawn_serve(
    args: &[&str],
    cache: &std::path::Path,
    log: &std::path::Path,
    configure: impl FnOnce(&mut Command),
) -> (std::process::Child, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--addr", "127.0.0.1:0", "--dist"])
        .arg(cache.join("no-dist"))
        .args(args)
        .env("HF_HUB_CACHE", cache)
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_ENDPOINT")
        .env_remove("SCHNELL_API_KEY")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap());
    configure(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| {
            panic!(
                "no address in {first:?}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        })
        .to_string();
    (child, url)
}

/// The exit status, if the process ends within `within`; else kills it.
fn exits_within(
    child: &mut std::process::Child,
    within: std::time::Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn signal(child: &std::process::Child, signal: libc::c_int) {
    // SAFETY: a signal to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
}

#[test]
fn serve_refuses_an_empty_api_key() {
    let cache = tempfile::tempdir().unwrap();
    let cases: [(&[&str], Option<&str>); 4] = [
        (&["--api-key", ""], None),
        (&["--api-key", "   "], None),
        (&[], Some("")),
        (&[], Some(" \t")),
    ];
    for (args, env) in cases {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--endpoint",
            "http://127.0.0.1:9",
        ])
        .args(args)
        .env("HF_HUB_CACHE", cache.path())
        .env_remove("SCHNELL_API_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        if let Some(value) = env {
            cmd.env("SCHNELL_API_KEY", value);
        }
        let mut child = cmd.spawn().unwrap();
        let status = exits_within(&mut child, std::time::Duration::from_secs(20));
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        let status = status.unwrap_or_else(|| panic!("{args:?} {env:?}: served without a key"));
        assert!(!status.success(), "{args:?} {env:?}");
        assert!(
            stderr.contains("API key is empty") && stderr.contains("SCHNELL_API_KEY"),
            "{args:?} {env:?}: {stderr}"
        );
    }
}

#[tokio::test]
async fn serve_answers_health_checks_with_more_idle_connections_than_file_descriptors() {
    use std::os::unix::process::CommandExt;
    let cache = tempfile::tempdir().unwrap();
    let log = cache.path().join("serve.log");
    let (mut child, url) = spawn_serve(
        &["--endpoint", "http://127.0.0.1:9"],
        cache.path(),
        &log,
        |cmd| {
            // SAFETY: only setrlimit, which is async-signal-safe, runs in the child.
            unsafe {
                cmd.pre_exec(|| {
                    let limit = libc::rlimit {
                        rlim_cur: 256,
                        rlim_max: 256,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        },
    );
    let addr = url.trim_start_matches("http://").to_string();
    let idle: Vec<std::net::TcpStream> = (0..300)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    let health = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(20))
        .build()
        .unwrap()
        .get(format!("{url}/healthz"))
        .send()
        .await;
    drop(idle);
    let _ = child.kill();
    let _ = child.wait();
    let health = health.unwrap_or_else(|e| {
        panic!(
            "/healthz failed: {e}\n{}",
            std::fs::read_to_string(&log).unwrap()
        )
    });
    assert_eq!(health.status(), reqwest::StatusCode::OK);
}

#[tokio::test]
async fn sigterm_lets_a_running_stream_finish_then_exits_0() {
    let hub = TestHub::start(support::tiny_models());
    let cache = tempfile::tempdir().unwrap();
    let log = cache.path().join("serve.log");
    // A long grace: on a busy machine the stream must not be cut for time.
    let args = ["--endpoint", &hub.endpoint, "--shutdown-grace", "120s"];
    let (mut child, url) = spawn_serve(&args, cache.path(), &log, |_| {});
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while http
        .get(format!("{url}/readyz"))
        .send()
        .await
        .unwrap()
        .status()
        != 200
    {
        assert!(std::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // About 3 s of steps on the tiny model in a debug build.
    let steps = 12;
    let response = http
        .post(format!("{url}/v1/images/generations"))
        .json(&serde_json::json!({
            "prompt": "a red fox", "size": "256x256", "steps": steps, "seed": 1, "stream": true
        }))
        .send()
        .await
        .unwrap();
    let mut chunks = futures::StreamExt::boxed(response.bytes_stream());
    let mut text = String::new();
    while !text.contains("partial_image") {
        let chunk = futures::StreamExt::next(&mut chunks)
            .await
            .unwrap()
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }

    signal(&child, libc::SIGTERM);
    // New connections are refused at once…
    let addr = url.trim_start_matches("http://").to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(&addr).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "still accepting after SIGTERM"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // …while the stream in flight runs to its end…
    while let Some(chunk) = futures::StreamExt::next(&mut chunks).await {
        text.push_str(std::str::from_utf8(&chunk.expect("the stream was cut")).unwrap());
    }
    let events = support::server::parse_sse(&text);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), steps + 1, "{names:?}");
    assert_eq!(names.last(), Some(&"image_generation.completed"));
    // …and then the process exits 0.
    let status = exits_within(&mut child, std::time::Duration::from_secs(30));
    let log = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{status:?}\n{log}");
    assert!(log.contains("SIGTERM"), "{log}");
}

#[tokio::test]
async fn ctrl_c_is_not_held_up_by_a_slow_client() {
    use std::io::Write;
    let cache = tempfile::tempdir().unwrap();
    let log = cache.path().join("serve.log");
    let (mut child, url) = spawn_serve(
        &["--endpoint", "http://127.0.0.1:9", "--shutdown-grace", "1s"],
        cache.path(),
        &log,
        |_| {},
    );
    let addr = url.trim_start_matches("http://").to_string();
    // One byte of headers a second, for as long as the connection lasts.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    let trickling = stop.clone();
    let client = std::thread::spawn(move || {
        while !trickling.load(std::sync::atomic::Ordering::Relaxed) {
            if slow.write_all(b"a").is_err() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    });
    // The slow client was accepted before this one was answered.
    let health = reqwest::get(format!("{url}/healthz")).await.unwrap();
    assert_eq!(health.status(), reqwest::StatusCode::OK);

    signal(&child, libc::SIGINT);
    let status = exits_within(&mut child, std::time::Duration::from_secs(15));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    client.join().unwrap();
    let log = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{status:?}\n{log}");
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

/// The byte intervals a partial download holds: its range record and the
/// complete prefix in its trailer, merged.
fn partial_holds(cache: &std::path::Path, size: u64) -> Option<Vec<(u64, u64)>> {
    let find = |suffix: &str| {
        walkdir::WalkDir::new(cache)
            .into_iter()
            .filter_map(Result::ok)
            .find(|e| e.file_name().to_string_lossy().ends_with(suffix))
            .map(|e| e.into_path())
    };
    let record = std::fs::read_to_string(find(".ranges.part")?).ok()?;
    let partial = std::fs::read(find(".sync.part")?).ok()?;
    let trailer: [u8; 8] = partial.get(size as usize..)?.try_into().ok()?;
    let mut have = vec![(0, u64::from_le_bytes(trailer))];
    for line in record.lines().skip(1) {
        let (s, e) = line.split_once(' ')?;
        have.push((s.parse().ok()?, e.parse().ok()?));
    }
    have.sort();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (s, e) in have.into_iter().filter(|(s, e)| s < e) {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    Some(merged)
}

#[test]
fn a_fetch_killed_midway_fetches_only_the_missing_ranges_when_run_again() {
    let size: u64 = 24 << 20;
    let dir = tempfile::tempdir().unwrap();
    let name = "model.safetensors";
    write_random(&dir.path().join("acme/tiny").join(name), size as usize, 11);
    let hub = TestHub::start(dir.path());
    // Several ranges at once, slowly: they finish out of order.
    hub.faults.throttle(2e6, std::time::Duration::ZERO);
    let cache = tempfile::tempdir().unwrap();
    let spawn = || {
        Command::new(BIN)
            .args(["fetch", "--endpoint", &hub.endpoint, "--repo", "acme/tiny"])
            .args(["--file", name])
            .env("HF_HUB_CACHE", cache.path())
            .env_remove("HF_HUB_OFFLINE")
            .env_remove("HF_ENDPOINT")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };

    let mut first = spawn();
    // Wait (polling the files it writes) until what it recorded lies in
    // several pieces, past a hole: a complete prefix alone would lose them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let held = partial_holds(cache.path(), size).unwrap_or_default();
        let bytes: u64 = held.iter().map(|(s, e)| e - s).sum();
        if held.len() >= 2 && bytes >= size / 4 {
            break;
        }
        assert!(first.try_wait().unwrap().is_none(), "the fetch ended early");
        assert!(
            std::time::Instant::now() < deadline,
            "never got far: {held:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    first.kill().unwrap(); // SIGKILL: nothing is cleaned up or saved.
    first.wait().unwrap();
    let held = partial_holds(cache.path(), size).unwrap();
    let prefix = held.first().filter(|r| r.0 == 0).map_or(0, |r| r.1);
    let kept: u64 = held.iter().map(|(s, e)| e - s).sum();
    assert!(kept > prefix, "only a prefix was kept: {held:?}");
    let gaps: Vec<(u64, u64)> = std::iter::once(0)
        .chain(held.iter().map(|r| r.1))
        .zip(held.iter().map(|r| r.0).chain(std::iter::once(size)))
        .filter(|(s, e)| s < e)
        .collect();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(hub.stats.quiescent());
    hub.stats.reset();
    let second = spawn().wait_with_output().unwrap();
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let path = String::from_utf8_lossy(&second.stdout)
        .split('\t')
        .nth(1)
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(
        std::fs::read(path).unwrap(),
        std::fs::read(dir.path().join("acme/tiny").join(name)).unwrap()
    );
    // Every byte asked for again lies in a gap of what was kept.
    let asked = hub.stats.body_ranges();
    assert!(!asked.is_empty());
    for (s, e) in &asked {
        assert!(
            gaps.iter().any(|(gs, ge)| gs <= s && e <= ge),
            "asked again for bytes {s}..{e}, which were kept ({held:?})"
        );
    }
    assert!(hub.stats.sent(name) >= size - kept);
}
