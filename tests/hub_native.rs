//! The native `huggingface_file` against a local mirror with injected faults.
#![cfg(not(target_arch = "wasm32"))]

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
    // No byte already on disk was asked for again.
    let starts: Vec<u64> = hub.stats.body_ranges().iter().map(|r| r.0).collect();
    assert!(!starts.is_empty());
    assert!(
        starts.iter().all(|&s| s >= resumed),
        "re-fetched bytes before {resumed}: {starts:?}"
    );
}

#[tokio::test]
async fn a_file_waiting_for_a_connection_is_not_stalled() {
    let dir = mirror_dir(&[("a.safetensors", 1 << 20), ("b.safetensors", 2 << 20)]);
    let hub = TestHub::start(dir.path());
    // One connection at 2 MB/s: the smaller file holds it for half a
    // second, four times the stall timeout, while the other waits.
    hub.faults.throttle(2e6, Duration::ZERO);
    let cache = tempfile::tempdir().unwrap();
    let client = builder(&hub, cache.path())
        .max_connections(1)
        .stall_timeout(Duration::from_millis(120))
        .retries(0, Duration::ZERO, Duration::ZERO)
        .build()
        .unwrap();
    let wanted = [file("a.safetensors"), file("b.safetensors")];
    let fetched = client.files(&wanted).await.unwrap();
    for (f, name) in fetched.iter().zip(["a.safetensors", "b.safetensors"]) {
        assert_eq!(f.bytes().await.unwrap(), original(dir.path(), name));
    }
}

#[tokio::test]
async fn a_failed_range_cancels_the_others() {
    let size = 8 << 20;
    let dir = mirror_dir(&[("model.safetensors", size)]);
    let hub = TestHub::start(dir.path());
    // Four ranges at 1 MB/s: each takes most of a second. The second to
    // answer breaks after 100 kB.
    hub.faults.throttle(1e6, Duration::ZERO);
    hub.faults.drop_nth("model.safetensors", 1, 100_000, 1);
    let cache = tempfile::tempdir().unwrap();
    let client = builder(&hub, cache.path())
        .max_connections(4)
        .retries(0, Duration::ZERO, Duration::ZERO)
        .build()
        .unwrap();

    let err = client.file(&file("model.safetensors")).await.unwrap_err();
    assert!(matches!(err, HubError::Transfer { .. }), "{err}");
    // The others' connections closed with the failure: had they run on,
    // the mirror would have sent their whole ranges (over 1.5 MiB) before
    // it fell quiet.
    hub.stats.quiescent().await;
    assert!(hub.stats.body_requests("model.safetensors") >= 3);
    let sent = hub.stats.sent("model.safetensors");
    assert!(sent < 1 << 20, "{sent} bytes were sent");
}

#[tokio::test]
async fn a_checksum_mismatch_is_rejected_and_never_cached() {
    let dir = mirror_dir(&[("model.safetensors", 500_000), ("config.json", 300)]);
    let hub = TestHub::start(dir.path());
    let cache = tempfile::tempdir().unwrap();
    let (client, events) = client(&hub, cache.path());

    // Corrupt every response: the first try and its one retry both fail.
    hub.faults.corrupt("model.safetensors", 2);
    hub.faults.corrupt("config.json", 2);
    for name in ["model.safetensors", "config.json"] {
        let err = client.file(&file(name)).await.unwrap_err();
        assert!(matches!(err, HubError::Integrity { .. }), "{err}");
        assert!(err.to_string().contains(name));
        assert!(client.cached(&file(name)).await.unwrap().is_none());
    }
    assert_eq!(hub.stats.body_requests("model.safetensors"), 2, "one retry");
    let blobs = cache.path().join("models--acme--tiny/blobs");
    let stored: Vec<_> = std::fs::read_dir(&blobs)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        stored.is_empty(),
        "corrupt blobs left in the cache: {stored:?}"
    );
    assert!(
        leftovers(cache.path()).is_empty(),
        "{:?}",
        leftovers(cache.path())
    );

    // Corrupted once: the retry gets good bytes.
    hub.faults.corrupt("model.safetensors", 1);
    let f = client.file(&file("model.safetensors")).await.unwrap();
    assert_eq!(
        f.bytes().await.unwrap(),
        original(dir.path(), "model.safetensors")
    );
    assert!(retries(&events).iter().any(|(_, r)| r.contains("checksum")));
}

#[tokio::test]
async fn the_same_file_asked_twice_at_once_downloads_once() {
    let dir = mirror_dir(&[("model.safetensors", 2 << 20)]);
    let hub = TestHub::start(dir.path());
    hub.faults.throttle(8e6, Duration::ZERO);
    let cache = tempfile::tempdir().unwrap();
    let (client, _) = client(&hub, cache.path());
    // A second client on the same cache stands for a second process: it waits
    // on the cross-process lock instead of failing to take it.
    let (other, _) = client_pair(&hub, cache.path());

    let f = file("model.safetensors");
    let (a, b, c) = tokio::join!(client.file(&f), client.file(&f), other.file(&f));
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    assert_eq!(a.path(), b.path());
    assert_eq!(a.path(), c.path());
    assert_eq!(
        c.bytes().await.unwrap(),
        original(dir.path(), "model.safetensors")
    );
    // Once, give or take what was in flight on a connection whose range
    // another one took over at the end; a second download would double it.
    let sent = hub.stats.sent("model.safetensors");
    assert!(
        (2 << 20..2 * (2 << 20)).contains(&sent),
        "the content was sent more than once: {sent} bytes"
    );
}

fn client_pair(hub: &TestHub, cache: &Path) -> (HubClient, Arc<Mutex<Vec<HubEvent>>>) {
    client(hub, cache)
}

#[tokio::test]
async fn the_cache_layout_is_python_compatible() {
    let dir = mirror_dir(&[
        ("text_encoder_2/model.safetensors", 100_000),
        ("config.json", 321),
    ]);
    let hub = TestHub::start(dir.path());
    let cache = tempfile::tempdir().unwrap();
    let (client, _) = client(&hub, cache.path());
    let wanted = [
        file("text_encoder_2/model.safetensors").at_revision("refs/pr/2"),
        file("config.json").at_revision("refs/pr/2"),
    ];
    let fetched = client.files(&wanted).await.unwrap();

    let head = reqwest::Client::new()
        .head(wanted[0].resolve_url(&hub.endpoint))
        .send()
        .await
        .unwrap();
    let header = |name: &str| {
        head.headers()[name]
            .to_str()
            .unwrap()
            .trim_matches('"')
            .to_string()
    };
    let commit = header("x-repo-commit");
    let sha256 = header("x-linked-etag");
    let repo = cache.path().join("models--acme--tiny");

    // refs/<revision> holds the commit, nested for a revision with slashes.
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/refs/pr/2")).unwrap(),
        commit
    );
    // The blob is named by the sha256 of its content...
    let blob = repo.join("blobs").join(&sha256);
    assert_eq!(
        std::fs::read(&blob).unwrap(),
        original(dir.path(), "text_encoder_2/model.safetensors")
    );
    // ...and the snapshot entry is a relative link to it, as Python makes.
    let pointer = repo
        .join("snapshots")
        .join(&commit)
        .join("text_encoder_2/model.safetensors");
    assert_eq!(fetched[0].path(), pointer);
    assert_eq!(
        std::fs::read_link(&pointer).unwrap(),
        PathBuf::from(format!("../../../blobs/{sha256}"))
    );
    // A small file's blob is named by its git blob sha1.
    let small = repo.join("snapshots").join(&commit).join("config.json");
    let target = std::fs::read_link(&small).unwrap();
    let sha1 = target.file_name().unwrap().to_str().unwrap();
    assert_eq!(sha1.len(), 40);
    assert_eq!(target, PathBuf::from(format!("../../blobs/{sha1}")));
    // Locks sit where Python's filelock puts them.
    assert!(cache
        .path()
        .join(".locks/models--acme--tiny")
        .join(format!("{sha256}.lock"))
        .exists());
}

#[tokio::test]
async fn a_cache_written_by_python_is_read_without_requests() {
    // The layout `huggingface_hub` writes, made by hand.
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--google--t5-v1_1-xxl");
    let commit = "a".repeat(40);
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::create_dir_all(repo.join("snapshots").join(&commit)).unwrap();
    // Named by its git blob sha1, as the Hub names a small file.
    let sha1 = "61eae87f3f149d6c328441d6b4f4887d599fe7b6";
    std::fs::write(repo.join("blobs").join(sha1), b"{\"d_model\": 4096}").unwrap();
    std::fs::write(repo.join("refs/main"), &commit).unwrap();
    std::os::unix::fs::symlink(
        format!("../../blobs/{sha1}"),
        repo.join("snapshots").join(&commit).join("config.json"),
    )
    .unwrap();

    // An endpoint nothing listens on: any request would fail.
    let client = HubClientBuilder::new(cache.path())
        .endpoint("http://127.0.0.1:9")
        .retries(0, Duration::ZERO, Duration::ZERO)
        .build()
        .unwrap();
    let by_branch = client
        .file(&HubFile::new("google/t5-v1_1-xxl", "config.json"))
        .await
        .unwrap();
    assert_eq!(
        &by_branch.bytes().await.unwrap()[..],
        b"{\"d_model\": 4096}"
    );
    let by_commit = HubFile::new("google/t5-v1_1-xxl", "config.json").at_revision(commit);
    assert!(client.file(&by_commit).await.unwrap().from_cache());
}

/// Model code asks through the trait and never sees a download client.
struct TinyModel {
    hub: HubClient,
}

impl schnell::hub::HubModel for TinyModel {
    fn hub(&self) -> Result<HubClient, HubError> {
        Ok(self.hub.clone())
    }
}

#[tokio::test]
async fn model_code_fetches_through_the_trait() {
    use schnell::hub::HubModel;
    let dir = mirror_dir(&[("config.json", 50), ("model.safetensors", 70_000)]);
    let hub = TestHub::start(dir.path());
    let cache = tempfile::tempdir().unwrap();
    let model = TinyModel {
        hub: client(&hub, cache.path()).0,
    };
    let config = model.huggingface_file(REPO, "config.json").await.unwrap();
    assert_eq!(
        config.bytes().await.unwrap(),
        original(dir.path(), "config.json")
    );
    let both = model
        .huggingface_files(&[file("model.safetensors"), file("config.json")])
        .await
        .unwrap();
    assert_eq!(both[0].file.path, "model.safetensors");
    assert!(both[1].from_cache());
}

/// The fetched file holds what the mirror serves (without printing megabytes when not).
async fn assert_same(f: &schnell::hub::FetchedFile, dir: &Path) {
    assert!(
        f.bytes().await.unwrap() == original(dir, &f.file.path),
        "{}: wrong content",
        f.file
    );
}

/// The Hub's answer to a HEAD: (commit, etag).
async fn hub_metadata(hub: &TestHub, name: &str) -> (String, String) {
    let head = reqwest::Client::new()
        .head(file(name).resolve_url(&hub.endpoint))
        .send()
        .await
        .unwrap();
    let header = |h: &str| {
        head.headers()
            .get(h)
            .map(|v| v.to_str().unwrap().trim_matches('"').to_string())
    };
    let etag = header("x-linked-etag").or_else(|| header("etag")).unwrap();
    (header("x-repo-commit").unwrap(), etag)
}

#[tokio::test]
async fn the_token_goes_to_the_hub_and_never_to_the_cdn() {
    let dir = mirror_dir(&[("model.safetensors", 3 << 20), ("config.json", 300)]);
    // Another port is another origin: the CDN that the Hub redirects LFS files to.
    let cdn = TestHub::start(dir.path());
    let hub = TestHub::start(dir.path());
    hub.faults.redirect_lfs_to(&cdn.endpoint);
    *hub.faults.require_token.lock().unwrap() = Some("hf_hub_only".into());
    let cache = tempfile::tempdir().unwrap();
    let client = builder(&hub, cache.path())
        .token(Some("hf_hub_only".into()))
        .build()
        .unwrap();

    let fetched = client
        .files(&[file("model.safetensors"), file("config.json")])
        .await
        .unwrap();
    for f in &fetched {
        assert_same(f, dir.path()).await;
    }
    hub.stats.quiescent().await;
    cdn.stats.quiescent().await;

    let at_cdn = cdn.stats.seen.lock().unwrap().clone();
    assert!(
        at_cdn
            .iter()
            .any(|s| s.file == "model.safetensors" && s.is_body()),
        "the LFS file did not come from the CDN: {at_cdn:?}"
    );
    let leaked: Vec<_> = at_cdn
        .iter()
        .filter(|s| s.authorization.is_some())
        .collect();
    assert!(leaked.is_empty(), "the CDN received the token: {leaked:?}");
    let at_hub = hub.stats.seen.lock().unwrap().clone();
    assert!(!at_hub.is_empty());
    assert!(
        at_hub
            .iter()
            .all(|s| s.authorization.as_deref() == Some("Bearer hf_hub_only")),
        "the Hub did not get the token on every request: {at_hub:?}"
    );
    assert_eq!(hub.stats.sent("model.safetensors"), 0, "served by the CDN");
}

#[tokio::test]
async fn a_truncated_blob_in_the_cache_is_fetched_again() {
    let dir = mirror_dir(&[("model.safetensors", 2 << 20), ("config.json", 300)]);
    let hub = TestHub::start(dir.path());
    let cache = tempfile::tempdir().unwrap();
    let wanted = [file("model.safetensors"), file("config.json")];
    let fetched = client(&hub, cache.path()).0.files(&wanted).await.unwrap();
    // The blob is cut short behind the cache's back (a full disk, a killed copy).
    let blob = std::fs::canonicalize(fetched[0].path()).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&blob)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();

    hub.stats.reset();
    let (again, _) = client(&hub, cache.path());
    assert!(
        again
            .cached(&file("model.safetensors"))
            .await
            .unwrap()
            .is_none(),
        "a truncated blob counts as cached"
    );
    let fetched = again.files(&wanted).await.unwrap();
    assert!(!fetched[0].from_cache());
    assert_same(&fetched[0], dir.path()).await;
    assert!(fetched[1].from_cache());
    let asked: Vec<String> = hub
        .stats
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.file.clone())
        .collect();
    assert!(
        asked.iter().all(|f| f == "model.safetensors"),
        "an intact cached file made a request: {asked:?}"
    );

    // Repaired: the next run makes no request at all.
    hub.stats.reset();
    let (third, _) = client(&hub, cache.path());
    assert!(third.files(&wanted).await.unwrap()[0].from_cache());
    assert_eq!(hub.stats.requests(), 0);
}

#[tokio::test]
async fn a_cache_without_size_records_is_checked_once() {
    let dir = mirror_dir(&[
        ("model.safetensors", 1 << 20),
        ("vae.safetensors", 200_000),
        ("config.json", 300),
    ]);
    let hub = TestHub::start(dir.path());
    // The layout Python writes, by hand: the model's blob is truncated, the
    // other two are whole; nothing says how large any of them should be.
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--acme--tiny");
    let mut commit = String::new();
    for name in ["model.safetensors", "vae.safetensors", "config.json"] {
        let (c, etag) = hub_metadata(&hub, name).await;
        commit = c;
        let mut content = original(dir.path(), name);
        if name == "model.safetensors" {
            content.truncate(100_000);
        }
        std::fs::create_dir_all(repo.join("blobs")).unwrap();
        std::fs::write(repo.join("blobs").join(&etag), content).unwrap();
        let snapshot = repo.join("snapshots").join(&commit);
        std::fs::create_dir_all(&snapshot).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/{etag}"), snapshot.join(name)).unwrap();
    }
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), &commit).unwrap();

    hub.stats.reset();
    let wanted = [
        file("model.safetensors"),
        file("vae.safetensors"),
        file("config.json"),
    ];
    let fetched = client(&hub, cache.path()).0.files(&wanted).await.unwrap();
    for f in &fetched {
        assert_same(f, dir.path()).await;
    }
    assert!(!fetched[0].from_cache(), "the truncated blob was used");
    assert!(fetched[1].from_cache() && fetched[2].from_cache());
    // The small file is checked against its git sha1 without a request; the
    // whole LFS file costs one HEAD.
    let seen = hub.stats.seen.lock().unwrap().clone();
    assert!(seen.iter().all(|s| s.file != "config.json"), "{seen:?}");
    let vae: Vec<_> = seen
        .iter()
        .filter(|s| s.file == "vae.safetensors")
        .collect();
    assert_eq!(vae.len(), 1, "{vae:?}");
    assert_eq!(vae[0].method, reqwest::Method::HEAD);

    // What was learnt is kept: the next run makes no request.
    hub.stats.reset();
    let again = client(&hub, cache.path()).0.files(&wanted).await.unwrap();
    assert!(again.iter().all(|f| f.from_cache()));
    assert_eq!(hub.stats.requests(), 0);
}

/// Out of the default run: it needs user namespaces (`unshare -Ur`), which
/// many containers lack: `cargo test --test hub_native -- --ignored` where
/// they exist. Asked for so, it fails rather than passes when it cannot
/// mount its disk.
#[tokio::test]
#[ignore = "needs user namespaces (unshare -Ur) to mount a 4 MiB tmpfs; run with --ignored"]
async fn a_full_disk_removes_the_partial_and_says_so() {
    let Some(disk) = support::SmallDisk::mount(4 << 20) else {
        panic!(
            "cannot run: no user namespaces here (`unshare -Ur true` fails) to mount \
             a small tmpfs in; this test was asked for with --ignored, so it fails \
             instead of passing without testing anything"
        );
    };
    let dir = mirror_dir(&[("big.safetensors", 8 << 20), ("config.json", 300)]);
    let hub = TestHub::start(dir.path());
    let (client, _) = client(&hub, disk.path());

    let err = client.file(&file("big.safetensors")).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("big.safetensors") && msg.contains("space"),
        "{msg}"
    );
    assert!(
        msg.contains(".schnell-partial"),
        "the partial is not named: {msg}"
    );
    assert!(
        leftovers(disk.path()).is_empty(),
        "{:?}",
        leftovers(disk.path())
    );
    hub.stats.quiescent().await;

    // The space is free again: a small file fits.
    let small = client.file(&file("config.json")).await.unwrap();
    assert_same(&small, dir.path()).await;
}

#[tokio::test]
async fn verify_repairs_damage_online_and_only_reports_it_offline() {
    use schnell::hub::Verification;
    let dir = mirror_dir(&[("model.safetensors", 100_000), ("config.json", 300)]);
    let hub = TestHub::start(dir.path());
    let cache = tempfile::tempdir().unwrap();
    let wanted = [file("model.safetensors"), file("config.json")];
    let fetched = client(&hub, cache.path()).0.files(&wanted).await.unwrap();
    // Damaged in place: the size is right, so only hashing can tell.
    let blob = std::fs::canonicalize(fetched[0].path()).unwrap();
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[500] ^= 1;
    std::fs::write(&blob, &bytes).unwrap();

    hub.stats.reset();
    let offline = builder(&hub, cache.path()).offline(true).build().unwrap();
    let found = offline.verify(&wanted).await.unwrap();
    assert!(
        matches!(&found[0], Verification::Damaged { reason } if reason.contains("sha256")),
        "{found:?}"
    );
    assert_eq!(found[1], Verification::Intact);
    assert!(blob.exists(), "offline, the damaged blob must stay");
    assert_eq!(hub.stats.requests(), 0);

    let (online, _) = client(&hub, cache.path());
    let found = online.verify(&wanted).await.unwrap();
    assert!(
        matches!(&found[0], Verification::Repaired { .. }),
        "{found:?}"
    );
    assert_eq!(found[1], Verification::Intact);
    assert_same(&online.file(&wanted[0]).await.unwrap(), dir.path()).await;
    assert_eq!(
        online.verify(&wanted).await.unwrap(),
        vec![Verification::Intact, Verification::Intact]
    );
}
