//! `schnell mirror` speaks the Hub's resolve protocol.
#![cfg(not(target_arch = "wasm32"))]

mod support;

use std::time::Duration;

use reqwest::header::{ACCESS_CONTROL_EXPOSE_HEADERS, ORIGIN, RANGE};
use reqwest::StatusCode;
use schnell::hub::{HubClientBuilder, HubFile};
use support::{write_random, TestHub};

fn folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_random(&dir.path().join("acme/tiny/model.safetensors"), 100_000, 1);
    std::fs::write(dir.path().join("acme/tiny/config.json"), b"hello\n").unwrap();
    dir
}

async fn get(url: String, range: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .get(url)
        .header(ORIGIN, "http://page.test");
    if let Some(range) = range {
        request = request.header(RANGE, range);
    }
    request.send().await.unwrap()
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn resolve_answers_with_the_hub_headers() {
    let dir = folder();
    let hub = TestHub::start(dir.path());
    let url = |rev: &str, path: &str| format!("{}/acme/tiny/resolve/{rev}/{path}", hub.endpoint);

    let small = reqwest::Client::new()
        .head(url("main", "config.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(small.status(), StatusCode::OK);
    // git blob sha1 of "hello\n"
    assert_eq!(
        header(&small, "etag"),
        "\"ce013625030ba8dba906f756967f9e9ca394464a\""
    );
    assert!(small.headers().get("x-linked-etag").is_none());
    assert_eq!(header(&small, "content-length"), "6");
    let commit = header(&small, "x-repo-commit");
    assert_eq!(commit.len(), 40);

    let lfs = reqwest::Client::new()
        .head(url("main", "model.safetensors"))
        .send()
        .await
        .unwrap();
    let sha = {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(
            std::fs::read(dir.path().join("acme/tiny/model.safetensors")).unwrap(),
        ))
    };
    assert_eq!(header(&lfs, "x-linked-etag"), format!("\"{sha}\""));
    assert_eq!(header(&lfs, "etag"), format!("\"{sha}\""));
    assert_eq!(header(&lfs, "x-linked-size"), "100000");
    assert_eq!(header(&lfs, "accept-ranges"), "bytes");
    assert_eq!(header(&lfs, "x-repo-commit"), commit);

    // A percent-encoded revision answers from the same folder.
    let pr = get(url("refs%2Fpr%2F2", "config.json"), None).await;
    assert_eq!(pr.status(), StatusCode::OK);
    assert_eq!(pr.bytes().await.unwrap(), "hello\n");
}

#[tokio::test]
async fn ranges_are_partial_and_clamped() {
    let dir = folder();
    let hub = TestHub::start(dir.path());
    let url = format!("{}/acme/tiny/resolve/main/model.safetensors", hub.endpoint);
    let all = std::fs::read(dir.path().join("acme/tiny/model.safetensors")).unwrap();

    let r = get(url.clone(), Some("bytes=10-19")).await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&r, "content-range"), "bytes 10-19/100000");
    assert_eq!(r.bytes().await.unwrap(), &all[10..20]);

    // hf-hub asks for one byte past the end.
    let r = get(url.clone(), Some("bytes=99990-100000")).await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&r, "content-range"), "bytes 99990-99999/100000");
    assert_eq!(r.bytes().await.unwrap(), &all[99990..]);

    let r = get(url, Some("bytes=100000-")).await;
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&r, "content-range"), "bytes */100000");
}

#[tokio::test]
async fn missing_things_say_what_is_missing() {
    let dir = folder();
    let hub = TestHub::start(dir.path());
    let r = get(
        format!("{}/acme/tiny/resolve/main/nope.bin", hub.endpoint),
        None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(header(&r, "x-error-code"), "EntryNotFound");
    let r = get(
        format!("{}/acme/other/resolve/main/config.json", hub.endpoint),
        None,
    )
    .await;
    assert_eq!(header(&r, "x-error-code"), "RepoNotFound");
}

#[tokio::test]
async fn paths_never_leave_the_folder() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("mirror");
    std::fs::create_dir_all(root.join("acme/tiny")).unwrap();
    std::fs::write(outer.path().join("secret.txt"), b"secret").unwrap();
    std::os::unix::fs::symlink(
        outer.path().join("secret.txt"),
        root.join("acme/tiny/link.txt"),
    )
    .unwrap();
    std::os::unix::fs::symlink(outer.path(), root.join("acme/escape")).unwrap();
    let hub = TestHub::start(&root);

    for path in [
        "acme/tiny/resolve/main/..%2F..%2F..%2Fsecret.txt",
        "acme/tiny/resolve/main/%2E%2E/%2E%2E/%2E%2E/secret.txt",
        "acme/tiny/resolve/main/link.txt",
        "acme/escape/resolve/main/secret.txt",
        "acme/tiny/resolve/..%2F..%2F/secret.txt",
    ] {
        let r = get(format!("{}/{path}", hub.endpoint), None).await;
        let status = r.status();
        let body = r.text().await.unwrap();
        assert!(
            status == StatusCode::BAD_REQUEST || status == StatusCode::NOT_FOUND,
            "{path}: {status}"
        );
        assert!(
            !body.contains("secret\n") && body != "secret",
            "{path} leaked"
        );
    }
}

#[tokio::test]
async fn links_out_of_the_folder_are_neither_followed_nor_walked() {
    // A repository with a link to a tree outside the mirror's folder.
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("mirror");
    std::fs::create_dir_all(root.join("acme/tiny")).unwrap();
    std::fs::write(root.join("acme/tiny/config.json"), b"{}").unwrap();
    let big = outer.path().join("big");
    for i in 0..50 {
        std::fs::create_dir_all(big.join(format!("d{i}"))).unwrap();
        std::fs::write(big.join(format!("d{i}/f.bin")), b"x").unwrap();
    }
    std::os::unix::fs::symlink(&big, root.join("acme/tiny/big")).unwrap();

    let commit = |hub: &TestHub| {
        let url = format!("{}/acme/tiny/resolve/main/config.json", hub.endpoint);
        async move { header(&get(url, None).await, "x-repo-commit") }
    };
    let hub = TestHub::start(&root);
    let before = commit(&hub).await;
    let info: serde_json::Value = get(format!("{}/api/models/acme/tiny", hub.endpoint), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        info["siblings"],
        serde_json::json!([{ "rfilename": "config.json" }])
    );
    drop(hub);

    // A change outside the folder is no change to the repository…
    std::fs::write(big.join("d0/new.bin"), b"new").unwrap();
    let hub = TestHub::start(&root);
    assert_eq!(commit(&hub).await, before, "the linked tree was walked");
    drop(hub);
    // …while one inside is.
    std::fs::write(root.join("acme/tiny/new.json"), b"{}").unwrap();
    let hub = TestHub::start(&root);
    assert_ne!(commit(&hub).await, before);
}

#[tokio::test]
async fn model_api_lists_siblings() {
    let dir = folder();
    let hub = TestHub::start(dir.path());
    for url in [
        format!("{}/api/models/acme/tiny", hub.endpoint),
        format!(
            "{}/api/models/acme/tiny/revision/refs%2Fpr%2F2",
            hub.endpoint
        ),
    ] {
        let info: serde_json::Value = get(url, None).await.json().await.unwrap();
        assert_eq!(info["id"], "acme/tiny");
        assert_eq!(info["sha"].as_str().unwrap().len(), 40);
        let names: Vec<&str> = info["siblings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["rfilename"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["config.json", "model.safetensors"]);
    }
}

#[tokio::test]
async fn browsers_may_read_the_hub_headers() {
    let dir = folder();
    let hub = TestHub::start(dir.path());
    let r = get(
        format!("{}/acme/tiny/resolve/main/config.json", hub.endpoint),
        None,
    )
    .await;
    assert_eq!(header(&r, "access-control-allow-origin"), "*");
    let exposed = header(&r, ACCESS_CONTROL_EXPOSE_HEADERS.as_str());
    for name in [
        "x-repo-commit",
        "x-linked-etag",
        "x-linked-size",
        "etag",
        "content-range",
    ] {
        assert!(exposed.contains(name), "{name} not exposed: {exposed}");
    }
    let preflight = reqwest::Client::new()
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/acme/tiny/resolve/main/config.json", hub.endpoint),
        )
        .header(ORIGIN, "http://page.test")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "range")
        .send()
        .await
        .unwrap();
    assert!(header(&preflight, "access-control-allow-headers").contains("range"));
}

#[tokio::test]
async fn a_hugging_face_cache_is_served_at_exact_revisions() {
    // Fill a cache through the client, then serve that cache.
    let dir = folder();
    let upstream = TestHub::start(dir.path());
    let cache = tempfile::tempdir().unwrap();
    let client = HubClientBuilder::new(cache.path())
        .endpoint(&upstream.endpoint)
        .build()
        .unwrap();
    let files = [
        HubFile::new("acme/tiny", "config.json"),
        HubFile::new("acme/tiny", "model.safetensors"),
    ];
    client.files(&files).await.unwrap();

    let served = TestHub::start(cache.path());
    let r = get(
        format!(
            "{}/acme/tiny/resolve/main/model.safetensors",
            served.endpoint
        ),
        None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let commit = header(&r, "x-repo-commit");
    let r = get(
        format!(
            "{}/acme/tiny/resolve/refs%2Fpr%2F9/config.json",
            served.endpoint
        ),
        None,
    )
    .await;
    assert_eq!(header(&r, "x-error-code"), "RevisionNotFound");
    let r = get(
        format!("{}/acme/tiny/resolve/{commit}/config.json", served.endpoint),
        None,
    )
    .await;
    assert_eq!(r.bytes().await.unwrap(), "hello\n");

    // A second client fetches from the served cache; ETags carry over, so the
    // blobs verify and keep their names.
    let cache2 = tempfile::tempdir().unwrap();
    let client2 = HubClientBuilder::new(cache2.path())
        .endpoint(&served.endpoint)
        .retries(0, Duration::ZERO, Duration::ZERO)
        .build()
        .unwrap();
    let fetched = client2.files(&files).await.unwrap();
    for f in &fetched {
        let original = std::fs::read(dir.path().join("acme/tiny").join(&f.file.path)).unwrap();
        assert_eq!(f.bytes().await.unwrap(), original);
    }
    let names = |c: &std::path::Path| {
        let mut v: Vec<_> = std::fs::read_dir(c.join("models--acme--tiny/blobs"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(cache.path()), names(cache2.path()));
}
