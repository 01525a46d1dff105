//! The runtime is never blocked while files download, or while the cache is
//! verified. Alone in its own test binary, so that other tests' CPU load
//! cannot pass for a stall.
//!
//! A blocked runtime is a matter of time, not of order (a blocking call and
//! a quick one interleave with other tasks alike), and tokio's paused clock
//! neither sees real time pass during a blocking call nor suits real
//! sockets (their timeouts would fire at once). So the bound stays on the
//! wall clock, but scaled to this machine: three quarters of what the
//! regression it guards against (hashing the largest file on the runtime)
//! costs here and now, and never less than 50 ms, the scheduler's noise on
//! a small, busy machine.
#![cfg(not(target_arch = "wasm32"))]

mod support;

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use schnell::hub::{HubClientBuilder, HubFile, Verification};
use support::{write_random, TestHub};

const REPO: &str = "acme/tiny";

fn file(name: &str) -> HubFile {
    HubFile::new(REPO, name)
}

fn mirror_dir(files: &[(&str, usize)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (i, (name, len)) in files.iter().enumerate() {
        write_random(&dir.path().join(REPO).join(name), *len, i as u64 + 1);
    }
    dir
}

/// How long hashing `path` takes on this thread: what a hash done on the
/// runtime, instead of on the blocking pool, would stall it for.
fn time_to_hash(path: &Path) -> Duration {
    use sha2::{Digest, Sha256};
    let started = Instant::now();
    let mut file = std::fs::File::open(path).unwrap();
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 1 << 20];
    loop {
        let n = file.read(&mut buffer).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    std::hint::black_box(hasher.finalize());
    started.elapsed()
}

#[test]
fn the_runtime_never_stalls_while_files_download_and_are_verified() {
    let dir = mirror_dir(&[
        ("flux1-schnell.safetensors", 96 << 20),
        ("ae.safetensors", 6 << 20),
        ("text_encoder/model.safetensors", 3 << 20),
        ("tokenizer.json", 400_000),
        ("config.json", 500),
    ]);
    // One mirror thread: on two cores, more would compete with the runtime under
    // test and show up as stalls that are the scheduler's, not ours.
    let hub = TestHub::start_with_workers(dir.path(), 1);
    let cache = tempfile::tempdir().unwrap();
    support::Heartbeat::prioritise_this_thread();
    // The stall a hash of the largest file on the runtime would cause here;
    // measured on this thread, at the same priority as the runtime.
    let blocking_hash = time_to_hash(&dir.path().join(REPO).join("flux1-schnell.safetensors"));
    // One thread runs everything: any blocking call would stop the heartbeat.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (worst, beats) = rt.block_on(async {
        // The default range size.
        let client = HubClientBuilder::new(cache.path())
            .endpoint(&hub.endpoint)
            .build()
            .unwrap();
        let names = [
            "flux1-schnell.safetensors",
            "ae.safetensors",
            "text_encoder/model.safetensors",
            "tokenizer.json",
            "config.json",
        ];
        let wanted: Vec<HubFile> = names.iter().map(|n| file(n)).collect();
        let heartbeat = support::Heartbeat::start().await;
        let fetched = client.files(&wanted).await.unwrap();
        assert_eq!(fetched.len(), names.len());
        // Hashing 105 MiB: on the blocking pool, never on the runtime.
        let verified = client.verify(&wanted).await.unwrap();
        assert!(
            verified.iter().all(|v| *v == Verification::Intact),
            "{verified:?}"
        );
        heartbeat.stop().await
    });
    assert!(beats > 3, "the heartbeat barely ran ({beats} beats)");
    eprintln!(
        "longest heartbeat gap: {worst:?} over {beats} beats; \
         hashing the largest file takes {blocking_hash:?} here"
    );
    // A blocking hash of the largest file fails this; the scheduler's own
    // time slices do not.
    let bound = (blocking_hash * 3 / 4).max(Duration::from_millis(50));
    assert!(
        worst < bound,
        "the runtime stalled for {worst:?} (bound {bound:?}: three quarters of \
         hashing the largest file, {blocking_hash:?} here, and at least 50 ms)"
    );
}
