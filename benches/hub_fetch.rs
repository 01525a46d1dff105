//! Fetching a model-shaped set of files from a throttled mirror in another
//! process: `HubClient::files` against its peers, side by side in one run.
//!
//! - hf-hub 0.5's tokio API as it comes, every file at once, 8 ranges each:
//!   the best stock Rust client;
//! - hf-hub 0.5's sync API, one file after another: the seed's way (first
//!   condition only; `SCHNELL_BENCH_OLD=all` runs it in every one, `none`
//!   in none);
//! - Python `huggingface_hub` with 8 threads, when `SCHNELL_BENCH_PYTHON`
//!   names a Python that has it.
//!
//! `cargo bench --bench hub_fetch` runs three link conditions over 704 MB
//! (the seed's files, scaled down in proportion), each client three times,
//! alternating. The mirror caps every response at 25 MB/s and all of them
//! together at the link's rate, and answers each request after the latency:
//! 1. 20 ms, 200 MB/s link; 2. 100 ms, 200 MB/s; 3. 20 ms, 50 MB/s.
//!
//! Under `cargo test` it runs a small unthrottled smoke version so the code
//! stays working.
//!
//! Knobs: `SCHNELL_BENCH_CONDITIONS` (e.g. `1,3`), `SCHNELL_BENCH_MB` (the
//! total), `SCHNELL_BENCH_RUNS`, `SCHNELL_BENCH_CHUNK_MB` (schnell's largest
//! range), `SCHNELL_BENCH_TIMELINE=1` (print each file's start and finish,
//! and schnell's throughput every 50 ms),
//! `RUST_LOG=schnell=debug` (the connection count as it adapts).

#[path = "../tests/support/mod.rs"]
mod support;

use std::future::Future;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use schnell::hub::{HubClientBuilder, HubFile};
use support::{write_random, TestHub};

/// The seed's file list: repo, revision, path, real size in bytes.
const SEED_FILES: &[(&str, &str, &str, u64)] = &[
    (
        "black-forest-labs/FLUX.1-schnell",
        "main",
        "flux1-schnell.safetensors",
        23_782_506_688,
    ),
    (
        "black-forest-labs/FLUX.1-schnell",
        "main",
        "ae.safetensors",
        335_304_388,
    ),
    (
        "black-forest-labs/FLUX.1-schnell",
        "main",
        "transformer/config.json",
        321,
    ),
    (
        "black-forest-labs/FLUX.1-schnell",
        "main",
        "vae/config.json",
        774,
    ),
    (
        "google/t5-v1_1-xxl",
        "refs/pr/2",
        "model.safetensors",
        44_500_000_000,
    ),
    ("google/t5-v1_1-xxl", "refs/pr/2", "config.json", 593),
    (
        "lmz/mt5-tokenizers",
        "main",
        "t5-v1_1-xxl.tokenizer.json",
        2_424_257,
    ),
    (
        "openai/clip-vit-large-patch14",
        "main",
        "model.safetensors",
        1_710_540_580,
    ),
    (
        "openai/clip-vit-large-patch14",
        "main",
        "config.json",
        4_519,
    ),
    (
        "openai/clip-vit-large-patch14",
        "main",
        "tokenizer.json",
        2_224_003,
    ),
];

/// One link condition.
#[derive(Clone, Copy)]
struct Condition {
    /// Per response, bytes/s.
    per_connection: f64,
    /// All responses together, bytes/s.
    link: f64,
    latency: Duration,
}

const CONDITIONS: [Condition; 3] = [
    Condition {
        per_connection: 25e6,
        link: 200e6,
        latency: Duration::from_millis(20),
    },
    Condition {
        per_connection: 25e6,
        link: 200e6,
        latency: Duration::from_millis(100),
    },
    Condition {
        per_connection: 25e6,
        link: 50e6,
        latency: Duration::from_millis(20),
    },
];

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if let Some(dir) = std::env::var_os("SCHNELL_BENCH_HUB") {
        return serve_hub(Path::new(&dir));
    }
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let full = std::env::args().any(|a| a == "--bench");
    let total: u64 = if full {
        env_or("SCHNELL_BENCH_MB", 704u64) * 1_000_000
    } else {
        5_000_000
    };
    let real_total: u64 = SEED_FILES.iter().map(|f| f.3).sum();
    let scale = total as f64 / real_total as f64;
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    let mut bytes = 0u64;
    for (i, (repo, revision, path, real)) in SEED_FILES.iter().enumerate() {
        // Small files keep their real size; large ones shrink in proportion.
        let len = if *real < 1_000_000 {
            *real
        } else {
            (*real as f64 * scale) as u64
        };
        write_random(&dir.path().join(repo).join(path), len as usize, i as u64);
        files.push(HubFile::new(*repo, *path).at_revision(*revision));
        bytes += len;
    }
    println!(
        "files: {}, bytes: {bytes} ({:.1} MB)",
        files.len(),
        bytes as f64 / 1e6
    );
    if !full {
        let hub = HubProcess::start(dir.path(), None);
        warm_etags(&hub.endpoint, &files);
        let ours = measure(|| schnell(&hub.endpoint, &files));
        let theirs = measure(|| hf_hub_tokio(&hub.endpoint, &files));
        println!(
            "smoke run: schnell {:.2} s (stall {:.1} ms), hf-hub tokio {:.2} s",
            ours.0.as_secs_f64(),
            ours.1.as_secs_f64() * 1e3,
            theirs.0.as_secs_f64()
        );
        return;
    }

    let chosen: Vec<usize> = std::env::var("SCHNELL_BENCH_CONDITIONS")
        .unwrap_or_else(|_| "1,2,3".into())
        .split(',')
        .filter_map(|c| c.trim().parse::<usize>().ok())
        .filter(|c| (1..=CONDITIONS.len()).contains(c))
        .collect();
    let runs: usize = env_or("SCHNELL_BENCH_RUNS", 3);
    let old = std::env::var("SCHNELL_BENCH_OLD").unwrap_or_default();
    let python = std::env::var("SCHNELL_BENCH_PYTHON").ok();
    for (n, &c) in chosen.iter().enumerate() {
        let condition = CONDITIONS[c - 1];
        let limit = bytes as f64 / condition.link;
        let hub = HubProcess::start(dir.path(), Some(condition));
        warm_etags(&hub.endpoint, &files);
        println!();
        println!(
            "### Condition {c}: {:.0} MB/s per connection, {:.0} MB/s link, {} ms latency; link limit {limit:.2} s",
            condition.per_connection / 1e6,
            condition.link / 1e6,
            condition.latency.as_millis()
        );
        println!();
        println!("| client | runs | median | × link limit | longest heartbeat stall |");
        println!("|---|---|---|---|---|");
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for _ in 0..runs {
            ours.push(measure(|| schnell(&hub.endpoint, &files)));
            theirs.push(measure(|| hf_hub_tokio(&hub.endpoint, &files)));
        }
        let row = |name: &str, results: &[(Duration, Duration)]| {
            let mut walls: Vec<f64> = results.iter().map(|r| r.0.as_secs_f64()).collect();
            let listed: Vec<String> = walls.iter().map(|w| format!("{w:.2}")).collect();
            walls.sort_by(f64::total_cmp);
            let median = walls[walls.len() / 2];
            let stall = results.iter().map(|r| r.1).max().unwrap_or_default();
            println!(
                "| {name} | {} s | **{median:.2} s** | {:.2}× | {:.1} ms |",
                listed.join(", "),
                median / limit,
                stall.as_secs_f64() * 1e3
            );
            median
        };
        let ours = row("schnell `HubClient::files`", &ours);
        let theirs = row(
            "hf-hub 0.5 tokio API, every file at once, 8 ranges each",
            &theirs,
        );
        if (n == 0 && old != "none") || old == "all" {
            let old = measure(|| async { old_way(&hub.endpoint, &files) });
            row(
                "hf-hub 0.5 sync API, one file after another (the seed)",
                &[old],
            );
        }
        if let Some(python) = &python {
            if let Some(wall) = python_hub(python, &hub.endpoint, &files) {
                println!(
                    "| Python `huggingface_hub`, 8 threads | {wall:.2} s | **{wall:.2} s** | {:.2}× | (another process) |",
                    wall / limit
                );
            }
        }
        println!();
        println!(
            "schnell {:.2}× the link limit; {:.2}× faster than hf-hub's tokio API",
            ours / limit,
            theirs / ours
        );
    }
}

/// The child process: serves `dir` with the condition from the environment,
/// prints its address, and runs until its standard input closes.
fn serve_hub(dir: &Path) {
    let hub = TestHub::start(dir);
    let rate: f64 = env_or("SCHNELL_BENCH_HUB_RATE", 0.0);
    if rate > 0.0 {
        hub.faults.throttle(
            rate,
            Duration::from_millis(env_or("SCHNELL_BENCH_HUB_LATENCY_MS", 0)),
        );
        hub.faults
            .link(env_or("SCHNELL_BENCH_HUB_LINK", f64::INFINITY));
    }
    println!("{}", hub.endpoint);
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

/// The mirror in its own process, so that the client does not share a
/// process (nor a runtime) with the server. Stopped when dropped.
struct HubProcess {
    child: Child,
    endpoint: String,
}

impl HubProcess {
    fn start(dir: &Path, condition: Option<Condition>) -> Self {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .env("SCHNELL_BENCH_HUB", dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if let Some(c) = condition {
            command
                .env("SCHNELL_BENCH_HUB_RATE", c.per_connection.to_string())
                .env("SCHNELL_BENCH_HUB_LINK", c.link.to_string())
                .env(
                    "SCHNELL_BENCH_HUB_LATENCY_MS",
                    c.latency.as_millis().to_string(),
                );
        }
        let mut child = command.spawn().expect("the mirror process starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("http"), "the mirror said {line:?}");
        Self {
            child,
            endpoint: line.trim().to_string(),
        }
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// schnell's client with its defaults, into a fresh cache.
async fn schnell(endpoint: &str, files: &[HubFile]) {
    let cache = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let timeline = std::env::var_os("SCHNELL_BENCH_TIMELINE").is_some();
    let mut builder = HubClientBuilder::new(cache.path()).endpoint(endpoint);
    if let Some(mb) = std::env::var("SCHNELL_BENCH_CHUNK_MB")
        .ok()
        .and_then(|c| c.parse::<u64>().ok())
    {
        builder = builder.chunk_size(mb << 20);
    }
    // With the timeline: bytes received per 50 ms, printed at the end.
    let buckets = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let received = buckets.clone();
    let client = builder
        .on_event(std::sync::Arc::new(move |e| match e {
            _ if !timeline => {}
            schnell::hub::HubEvent::Advanced { bytes, .. } => {
                let at = (t0.elapsed().as_millis() / 50) as usize;
                let mut buckets = received.lock().unwrap();
                if buckets.len() <= at {
                    buckets.resize(at + 1, 0);
                }
                buckets[at] += bytes;
            }
            e => eprintln!("{:>7.3} s  {e:?}", t0.elapsed().as_secs_f64()),
        }))
        .build()
        .unwrap();
    let fetched = client.files(files).await.unwrap();
    assert_eq!(fetched.len(), files.len());
    if timeline {
        let rates: Vec<String> = buckets
            .lock()
            .unwrap()
            .iter()
            .map(|b| format!("{:.0}", *b as f64 / 0.05e6))
            .collect();
        eprintln!("MB/s per 50 ms: {}", rates.join(" "));
        eprintln!(
            "all bytes in by {:.2} s, done at {:.2} s",
            rates.len() as f64 * 0.05,
            t0.elapsed().as_secs_f64()
        );
    }
    // Removing the cache is not part of the download.
    tokio::task::spawn_blocking(move || drop(cache));
}

/// hf-hub's tokio API as its README shows it, every file at once.
async fn hf_hub_tokio(endpoint: &str, files: &[HubFile]) {
    let cache = tempfile::tempdir().unwrap();
    let api = hf_hub::api::tokio::ApiBuilder::new()
        .with_cache_dir(cache.path().to_path_buf())
        .with_endpoint(endpoint.to_string())
        .with_progress(false)
        .with_max_files(8)
        .build()
        .unwrap();
    let gets = files.iter().map(|f| {
        let repo = api.repo(hf_hub::Repo::with_revision(
            f.repo.clone(),
            hf_hub::RepoType::Model,
            f.revision.clone(),
        ));
        let path = f.path.clone();
        async move { repo.get(&path).await.unwrap() }
    });
    futures::future::join_all(gets).await;
    tokio::task::spawn_blocking(move || drop(cache));
}

/// Python `huggingface_hub`, 8 threads; the time it measures itself, so its
/// start-up is not counted.
fn python_hub(python: &str, endpoint: &str, files: &[HubFile]) -> Option<f64> {
    let cache = tempfile::tempdir().unwrap();
    let list: Vec<(String, String, String)> = files
        .iter()
        .map(|f| (f.repo.clone(), f.revision.clone(), f.path.clone()))
        .collect();
    let script = r#"
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
from huggingface_hub import hf_hub_download
files, cache = json.loads(sys.argv[1]), sys.argv[2]
t0 = time.perf_counter()
with ThreadPoolExecutor(8) as pool:
    list(pool.map(lambda f: hf_hub_download(f[0], f[2], revision=f[1], cache_dir=cache), files))
print(time.perf_counter() - t0)
"#;
    let out = Command::new(python)
        .args(["-c", script, &serde_json::to_string(&list).unwrap()])
        .arg(cache.path())
        .env("HF_ENDPOINT", endpoint)
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env("HF_HUB_ENABLE_HF_TRANSFER", "0")
        .env("HF_HUB_DISABLE_XET", "1")
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "Python huggingface_hub failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}
/// The mirror hashes each file once, on first request; do that before timing.
fn warm_etags(endpoint: &str, files: &[HubFile]) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let http = reqwest::Client::new();
        for f in files {
            let r = http.head(f.resolve_url(endpoint)).send().await.unwrap();
            assert!(r.status().is_success(), "{f}: {}", r.status());
        }
    });
}

/// The seed's way: the sync API called from async code, one file after another.
fn old_way(endpoint: &str, files: &[HubFile]) {
    let cache = tempfile::tempdir().unwrap();
    let api = hf_hub::api::sync::ApiBuilder::new()
        .with_cache_dir(cache.path().to_path_buf())
        .with_endpoint(endpoint.to_string())
        .with_progress(false)
        .build()
        .unwrap();
    for f in files {
        let repo = hf_hub::Repo::with_revision(
            f.repo.clone(),
            hf_hub::RepoType::Model,
            f.revision.clone(),
        );
        api.repo(repo).get(&f.path).unwrap();
    }
    // Removing the cache is not part of the download.
    std::thread::spawn(move || drop(cache));
}

/// Wall time of `work` on a current-thread runtime, and the longest gap
/// between ticks of a 5 ms heartbeat running beside it.
fn measure<F, Fut>(work: F) -> (Duration, Duration)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    support::Heartbeat::prioritise_this_thread();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let heartbeat = support::Heartbeat::start().await;
        let start = Instant::now();
        work().await;
        let wall = start.elapsed();
        (wall, heartbeat.stop().await.0)
    })
}
