//! Fetching a model-shaped set of files from a throttled local mirror: the
//! old way (hf-hub's sync API, one file after another) against
//! `HubClient::files` (concurrent, ranged), with a heartbeat on the runtime.
//!
//! `cargo bench --bench hub_fetch` runs the full measurement (about 500 MB,
//! 25 MB/s per connection, 20 ms latency). Under `cargo test` it runs a small
//! unthrottled smoke version so the code stays working.
//!
//! Knobs: `SCHNELL_BENCH_RATE` (MB/s per connection), `SCHNELL_BENCH_CHUNK_MB`
//! (the client's range size) and `SCHNELL_BENCH_TIMELINE=1` (print each file's
//! start and finish).

#[path = "../tests/support/mod.rs"]
mod support;

use std::future::Future;
use std::path::Path;
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

const CONNECTIONS: usize = 8;

struct Setup {
    total: u64,
    per_connection: Option<f64>,
    latency: Duration,
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let setup = if full {
        Setup {
            total: 500_000_000,
            // SCHNELL_BENCH_RATE: the per-connection cap in MB/s (default 25).
            per_connection: Some(
                std::env::var("SCHNELL_BENCH_RATE")
                    .ok()
                    .and_then(|r| r.parse::<f64>().ok())
                    .unwrap_or(25.0)
                    * 1e6,
            ),
            latency: Duration::from_millis(20),
        }
    } else {
        Setup {
            total: 5_000_000,
            per_connection: None,
            latency: Duration::ZERO,
        }
    };
    let real_total: u64 = SEED_FILES.iter().map(|f| f.3).sum();
    let scale = setup.total as f64 / real_total as f64;
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
    let hub = TestHub::start(dir.path());
    warm_etags(&hub.endpoint, &files);
    if let Some(rate) = setup.per_connection {
        hub.faults.throttle(rate, setup.latency);
    }

    // Caches are made and removed outside the timed part: removing 500 MB
    // synchronously would otherwise show up as a stall.
    let old_cache = tempfile::tempdir().unwrap();
    let old = measure(|| async {
        // The old way: the sync API called from async code, one file after another.
        old_way(&hub.endpoint, old_cache.path(), &files);
    });
    drop(old_cache);
    let runs: Vec<(Duration, Duration)> = (0..if full { 3 } else { 1 })
        .map(|_| {
            let cache = tempfile::tempdir().unwrap();
            measure(|| async {
                let t0 = Instant::now();
                let timeline = std::env::var_os("SCHNELL_BENCH_TIMELINE").is_some();
                let mut builder = HubClientBuilder::new(cache.path())
                    .endpoint(&hub.endpoint)
                    .max_connections(CONNECTIONS);
                // The client's default unless a size is asked for.
                if let Some(mb) = std::env::var("SCHNELL_BENCH_CHUNK_MB")
                    .ok()
                    .and_then(|c| c.parse::<u64>().ok())
                {
                    builder = builder.chunk_size(mb << 20);
                }
                let client = builder
                    .on_event(std::sync::Arc::new(move |e| {
                        if timeline && !matches!(e, schnell::hub::HubEvent::Advanced { .. }) {
                            eprintln!("{:>7.3} s  {e:?}", t0.elapsed().as_secs_f64());
                        }
                    }))
                    .build()
                    .unwrap();
                let fetched = client.files(&files).await.unwrap();
                assert_eq!(fetched.len(), files.len());
            })
        })
        .collect();
    let mut ours = runs.clone();
    ours.sort();
    let (ours_wall, ours_stall) = ours[ours.len() / 2];

    println!(
        "files: {}, bytes: {bytes} ({:.1} MB)",
        files.len(),
        bytes as f64 / 1e6
    );
    match setup.per_connection {
        Some(rate) => {
            let limit = bytes as f64 / (CONNECTIONS as f64 * rate);
            println!(
                "mirror: {:.0} MB/s per connection, {} ms latency; link limit ({CONNECTIONS} connections): {limit:.2} s",
                rate / 1e6,
                setup.latency.as_millis()
            );
            println!("| way | wall time | longest heartbeat stall |");
            println!("|---|---|---|");
            println!(
                "| old: hf-hub sync API, serial | {:.2} s | {:.0} ms |",
                old.0.as_secs_f64(),
                old.1.as_secs_f64() * 1e3
            );
            for (wall, stall) in &runs {
                println!(
                    "| schnell `HubClient::files` (run) | {:.2} s | {:.1} ms |",
                    wall.as_secs_f64(),
                    stall.as_secs_f64() * 1e3
                );
            }
            println!(
                "median: {:.2} s; speed-up {:.1}x over the old way; {:.2}x the link limit",
                ours_wall.as_secs_f64(),
                old.0.as_secs_f64() / ours_wall.as_secs_f64(),
                ours_wall.as_secs_f64() / limit
            );
        }
        None => println!(
            "smoke run: old way {:.2} s, ours {:.2} s (stall {:.1} ms)",
            old.0.as_secs_f64(),
            ours_wall.as_secs_f64(),
            ours_stall.as_secs_f64() * 1e3
        ),
    }
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

fn old_way(endpoint: &str, cache: &Path, files: &[HubFile]) {
    let api = hf_hub::api::sync::ApiBuilder::new()
        .with_cache_dir(cache.to_path_buf())
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
