//! The runtime is never blocked while files download, or while the cache is
//! verified. Alone in its own test binary, so that other tests' CPU load
//! cannot pass for a stall.
#![cfg(not(target_arch = "wasm32"))]

mod support;

use std::time::Duration;

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
    eprintln!("longest heartbeat gap: {worst:?} over {beats} beats");
    assert!(
        worst < Duration::from_millis(50),
        "the runtime stalled for {worst:?}"
    );
}
