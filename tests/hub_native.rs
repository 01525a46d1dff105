//! The native `huggingface_file` against a local mirror with injected faults.

mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use schnell::hub::{HubClient, HubClientBuilder, HubError, HubEvent, HubFile, NotFoundKind};
use support::{write_random, TestHub};

const REPO: &str = "acme/tiny";

/// A mirror folder holding `acme/tiny` with files of the given sizes.
fn mirror_dir(files: &[(&str, usize)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (i, (name, len)) in files.iter().enumerate() {
        write_random(&dir.path().join(REPO).join(name), *len, i as u64 + 1);
    }
    dir
}

fn original(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(REPO).join(name)).unwrap()
}

/// A client with quick retries, collecting its events.
fn client(hub: &TestHub, cache: &Path) -> (HubClient, Arc<Mutex<Vec<HubEvent>>>) {
    builder(hub, cache).build_with_events()
}

fn builder(hub: &TestHub, cache: &Path) -> HubClientBuilder {
    HubClientBuilder::new(cache)
        .endpoint(&hub.endpoint)
        .retries(4, Duration::from_millis(5), Duration::from_millis(50))
        .chunk_size(1 << 20)
}

trait BuildWithEvents {
    fn build_with_events(self) -> (HubClient, Arc<Mutex<Vec<HubEvent>>>);
}

impl BuildWithEvents for HubClientBuilder {
    fn build_with_events(self) -> (HubClient, Arc<Mutex<Vec<HubEvent>>>) {
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let client = self
            .on_event(Arc::new(move |e| sink.lock().unwrap().push(e)))
            .build()
            .unwrap();
        (client, events)
    }
}

fn file(name: &str) -> HubFile {
    HubFile::new(REPO, name)
}

fn retries(events: &Mutex<Vec<HubEvent>>) -> Vec<(u64, String)> {
    events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            HubEvent::Retrying {
                delay_ms, reason, ..
            } => Some((*delay_ms, reason.clone())),
            _ => None,
        })
        .collect()
}

/// Every file left under `dir` whose name says it is partial or temporary.
fn leftovers(dir: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| {
            let n = e.file_name().to_string_lossy();
            n.ends_with(".part") || n.contains(".tmp-")
        })
        .map(|e| e.path().to_path_buf())
        .collect()
}

#[tokio::test]
async fn files_of_different_sizes_download_concurrently() {
    let sizes = [
        ("model.safetensors", 3 << 20),
        ("text_encoder/model.safetensors", 1 << 20),
        ("tokenizer.json", 200_000),
        ("config.json", 700),
    ];
    let dir = mirror_dir(&sizes);
    let hub = TestHub::start(dir.path());
    // Content requests wait until three different files are in flight at once;
    // a client that fetched one file after another would never get there.
    let gate = hub.faults.gate(3, Duration::from_secs(10));
    let cache = tempfile::tempdir().unwrap();
    let (client, _) = client(&hub, cache.path());

    let wanted: Vec<HubFile> = sizes.iter().map(|(n, _)| file(n)).collect();
    let fetched = client.files(&wanted).await.unwrap();

    assert!(gate.reached(), "downloads never overlapped");
    assert_eq!(fetched.len(), sizes.len());
    for ((name, len), f) in sizes.iter().zip(&fetched) {
        assert_eq!(f.file, file(name), "results come back in the order asked");
        assert_eq!(f.size(), *len as u64);
        assert_eq!(f.bytes().await.unwrap(), original(dir.path(), name));
        assert!(!f.from_cache());
    }
}

#[tokio::test]
async fn cache_hit_makes_no_request() {
    let dir = mirror_dir(&[("a.json", 100), ("b.safetensors", 50_000)]);
    let hub = TestHub::start(dir.path());
    let cache = tempfile::tempdir().unwrap();
    let wanted = [file("a.json"), file("b.safetensors")];
    client(&hub, cache.path()).0.files(&wanted).await.unwrap();
    assert!(hub.stats.requests() > 0);

    hub.stats.reset();
    // A new client, as a new process would make.
    let (again, events) = client(&hub, cache.path());
    let fetched = again.files(&wanted).await.unwrap();
    assert_eq!(
        hub.stats.requests(),
        0,
        "a cached file must not touch the network"
    );
    assert!(fetched.iter().all(|f| f.from_cache()));
    let cached = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, HubEvent::Cached { .. }))
        .count();
    assert_eq!(cached, 2);
}

#[tokio::test]
async fn offline_mode_reads_the_cache_and_lists_every_missing_file() {
    let dir = mirror_dir(&[("a.json", 10), ("b.json", 20), ("c.json", 30)]);
    let hub = TestHub::start(dir.path());
    let cache = tempfile::tempdir().unwrap();
    client(&hub, cache.path())
        .0
        .file(&file("a.json"))
        .await
        .unwrap();
    hub.stats.reset();

    let offline = builder(&hub, cache.path()).offline(true).build().unwrap();
    let hit = offline.file(&file("a.json")).await.unwrap();
    assert_eq!(hit.bytes().await.unwrap(), original(dir.path(), "a.json"));

    let err = offline
        .files(&[file("a.json"), file("b.json"), file("c.json")])
        .await
        .unwrap_err();
    match &err {
        HubError::Offline { missing, .. } => {
            assert_eq!(missing, &vec![file("b.json"), file("c.json")])
        }
        other => panic!("expected Offline, got {other}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("b.json") && msg.contains("c.json") && !msg.contains("a.json"));
    assert_eq!(hub.stats.requests(), 0, "offline mode made a request");
}

#[tokio::test]
async fn missing_files_and_repos_are_404_and_not_retried() {
    let dir = mirror_dir(&[("a.json", 10)]);
    let hub = TestHub::start(dir.path());
    let cache = tempfile::tempdir().unwrap();
    let (client, events) = client(&hub, cache.path());

    let err = client.file(&file("nope.safetensors")).await.unwrap_err();
    assert!(
        matches!(
            err,
            HubError::NotFound {
                kind: NotFoundKind::Entry,
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("nope.safetensors") && msg.contains(REPO) && msg.contains("main"),
        "{msg}"
    );

    let err = client
        .file(&HubFile::new("acme/absent", "config.json"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            HubError::NotFound {
                kind: NotFoundKind::Repo,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("acme/absent"));

    assert_eq!(hub.stats.requests(), 2, "a 404 must not be retried");
    assert!(retries(&events).is_empty());
}

#[tokio::test]
async fn gated_repo_asks_for_licence_and_token_and_never_prints_it() {
    let dir = mirror_dir(&[("ae.safetensors", 1000)]);
    let hub = TestHub::start(dir.path());
    *hub.faults.require_token.lock().unwrap() = Some("hf_right".into());
    let cache = tempfile::tempdir().unwrap();

    let err = client(&hub, cache.path())
        .0
        .file(&file("ae.safetensors"))
        .await
        .unwrap_err();
    assert!(matches!(err, HubError::Gated { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("licence") && msg.contains("HF_TOKEN") && msg.contains(REPO),
        "{msg}"
    );

    let wrong = builder(&hub, cache.path())
        .token(Some("hf_wrong_secret".into()))
        .build()
        .unwrap();
    let err = wrong.file(&file("ae.safetensors")).await.unwrap_err();
    assert!(matches!(err, HubError::Forbidden { .. }), "{err}");
    assert!(!format!("{err} {err:?} {wrong:?}").contains("hf_wrong_secret"));
    assert_eq!(hub.stats.requests(), 2, "401 and 403 must not be retried");

    let right = builder(&hub, cache.path())
        .token(Some("hf_right".into()))
        .build()
        .unwrap();
    let f = right.file(&file("ae.safetensors")).await.unwrap();
    assert_eq!(
        f.bytes().await.unwrap(),
        original(dir.path(), "ae.safetensors")
    );
}

#[tokio::test]
async fn transient_503s_are_retried_honouring_retry_after() {
    let dir = mirror_dir(&[("a.safetensors", 300_000)]);
    let hub = TestHub::start(dir.path());
    hub.faults.fail_next(3, Some("1"));
    let cache = tempfile::tempdir().unwrap();
    let (client, events) = client(&hub, cache.path());

    let f = client.file(&file("a.safetensors")).await.unwrap();
    assert_eq!(
        f.bytes().await.unwrap(),
        original(dir.path(), "a.safetensors")
    );
    let retried = retries(&events);
    assert_eq!(retried.len(), 3, "{retried:?}");
    for (delay_ms, reason) in &retried {
        assert!(reason.contains("503"), "{reason}");
        assert!(
            *delay_ms >= 1000,
            "Retry-After: 1 not honoured: {delay_ms} ms"
        );
    }
}

#[tokio::test]
async fn gives_up_after_bounded_retries() {
    let dir = mirror_dir(&[("a.json", 10)]);
    let hub = TestHub::start(dir.path());
    hub.faults.fail_next(100, None);
    let cache = tempfile::tempdir().unwrap();
    let err = client(&hub, cache.path())
        .0
        .file(&file("a.json"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, HubError::Transfer { attempts: 5, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("a.json"));
    assert_eq!(hub.stats.requests(), 5);
}

#[tokio::test]
async fn a_dropped_connection_is_retried() {
    let dir = mirror_dir(&[("model.safetensors", 3 << 20)]);
    let hub = TestHub::start(dir.path());
    hub.faults.drop_after("model.safetensors", 100_000, 1);
    let cache = tempfile::tempdir().unwrap();
    let (client, events) = client(&hub, cache.path());

    let f = client.file(&file("model.safetensors")).await.unwrap();
    assert_eq!(
        f.bytes().await.unwrap(),
        original(dir.path(), "model.safetensors")
    );
    assert!(!retries(&events).is_empty(), "the drop went unnoticed");
    assert!(
        leftovers(cache.path()).is_empty(),
        "{:?}",
        leftovers(cache.path())
    );
}

#[tokio::test]
async fn an_interrupted_download_resumes_in_a_new_process() {
    let mib = 1u64 << 20;
    let size = 4 * mib;
    let dir = mirror_dir(&[("model.safetensors", size as usize)]);
    let hub = TestHub::start(dir.path());
    let cache = tempfile::tempdir().unwrap();
    // One connection and 1 MiB ranges; the third range breaks, and this first
    // "process" does not retry.
    let serial = || builder(&hub, cache.path()).max_connections(1);
    hub.faults.drop_nth("model.safetensors", 2, 1000, 1);
    let first = serial()
        .retries(0, Duration::ZERO, Duration::ZERO)
        .build()
        .unwrap();
    let err = first.file(&file("model.safetensors")).await.unwrap_err();
    assert!(matches!(err, HubError::Transfer { .. }), "{err}");
    assert!(first
        .cached(&file("model.safetensors"))
        .await
        .unwrap()
        .is_none());
    hub.stats.quiescent().await;

    hub.stats.reset();
    let (second, events) = serial().build_with_events();
    let f = second.file(&file("model.safetensors")).await.unwrap();
    assert_eq!(
        f.bytes().await.unwrap(),
        original(dir.path(), "model.safetensors")
    );
    let resumed = events
        .lock()
        .unwrap()
        .iter()
        .find_map(|e| match e {
            HubEvent::Started { resumed_from, .. } => Some(*resumed_from),
            _ => None,
        })
        .expect("a Started event");
    assert!(resumed >= mib, "did not resume: started at {resumed}");
    // No byte already on disk was asked for again. (Ranges that hf-hub's
    // tasks from the first run still fetch lie past it too.)
    let starts: Vec<u64> = hub
        .stats
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.is_body())
        .map(|s| range_start(s.range.as_deref()))
        .collect();
    assert!(!starts.is_empty());
    assert!(
        starts.iter().all(|&s| s >= resumed),
        "re-fetched bytes before {resumed}: {starts:?}"
    );
}

fn range_start(range: Option<&str>) -> u64 {
    range
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split('-').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}
