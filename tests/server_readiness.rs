//! `/readyz` and `/healthz` during a throttled download. Alone in its own test
//! binary, so that other tests' image generation cannot slow `/healthz`.
#![cfg(not(target_arch = "wasm32"))]

mod support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use schnell::flux::RetryPolicy;
use schnell::protocol::{ErrorBody, Phase, Readiness};
use schnell::server::ServerConfig;
use support::server::{request, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_reports_real_download_progress_and_health_stays_quick() {
    // 300 kB/s per connection: the ~2.5 MB of tiny models take a few seconds.
    let s = start(ServerConfig::default(), false, |hub| {
        hub.faults.throttle(300e3, Duration::from_millis(5))
    })
    .await;
    let early = s.post(request("256x256", 1)).await;
    assert_eq!(early.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(early.headers().contains_key("retry-after"));
    let body: ErrorBody = early.json().await.unwrap();
    assert_eq!(body.error.code.as_deref(), Some("model_not_ready"));

    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut slowest_health, mut saw_partial) = (Duration::ZERO, false);
    loop {
        let t = Instant::now();
        let health = s.get("/healthz").await;
        slowest_health = slowest_health.max(t.elapsed());
        assert_eq!(health.status(), StatusCode::OK);
        let ready = s.get("/readyz").await;
        let code = ready.status();
        let status: Readiness = ready.json().await.unwrap();
        let tokenizers = status.tokenizers.as_ref().expect("named from the start");
        assert_eq!(tokenizers.clip.path, "tokenizer.json", "{status:?}");
        assert_eq!(
            tokenizers.t5.path, "tokenizer_2/tokenizer.json",
            "{status:?}"
        );
        if code == StatusCode::OK {
            assert_eq!(status.phase, Phase::Ready);
            break;
        }
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        let (done, total) = (status.bytes_done, status.bytes_total);
        // The configs arrive first (auto plans from them), so a file midway
        // is what shows the batch downloading.
        let files = status.files.as_object().unwrap();
        let midway = files.values().any(|f| {
            let (d, t) = (f["done"].as_u64().unwrap(), f["total"].as_u64().unwrap());
            d > 0 && d < t
        });
        if status.phase == Phase::Downloading && midway {
            saw_partial = true;
            assert!(done < total, "{status:?}");
            assert!(files.len() >= 10, "{status:?}");
            // What auto picked, and why, is reported from the start.
            assert_eq!(status.weights["transformer"], "none", "{status:?}");
            let reason = status.weights["reason"].as_str().unwrap();
            assert!(reason.contains("available RAM"), "{reason}");
        }
        assert!(Instant::now() < deadline, "never ready: {status:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(saw_partial, "/readyz never showed a download in progress");
    assert!(
        slowest_health < Duration::from_millis(50),
        "/healthz took {slowest_health:?}"
    );
    assert_eq!(s.post(request("256x256", 1)).await.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_that_failed_on_the_hub_recovers_on_its_own() {
    // The Hub answers 503 to everything until the test says otherwise.
    let s = start(ServerConfig::default(), false, |hub| {
        hub.faults.fail_next(usize::MAX / 2, None)
    })
    .await;
    let engine = s.engine.clone();
    let policy = RetryPolicy::new(Duration::from_millis(50), Duration::from_millis(200));
    let preparing = tokio::spawn(async move { engine.prepare_until_ready(policy).await });

    let deadline = Instant::now() + Duration::from_secs(60);
    let (failed, retry) = loop {
        assert!(Instant::now() < deadline, "no failed attempt reported");
        let status: Readiness = s.get("/readyz").await.json().await.unwrap();
        match status.retry {
            Some(retry) if retry.failed_attempts >= 2 => break (status, retry),
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!failed.ready, "{failed:?}");
    assert!(retry.next_in_s <= 1.0, "{failed:?}");

    // The Hub is back: the next attempt succeeds without anyone's help.
    s.hub.faults.fail_next(0, None);
    preparing.await.unwrap().unwrap();
    let ready = s.get("/readyz").await;
    assert_eq!(ready.status(), StatusCode::OK);
    let status: Readiness = ready.json().await.unwrap();
    assert!(status.retry.is_none(), "{status:?}");
    assert_eq!(s.post(request("256x256", 1)).await.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_that_cannot_mend_is_not_retried() {
    // A gated repository without the licence accepted: retrying cannot help.
    let s = start(ServerConfig::default(), false, |hub| {
        *hub.faults.require_token.lock().unwrap() = Some("another token".into())
    })
    .await;
    let policy = RetryPolicy::new(Duration::from_millis(10), Duration::from_millis(10));
    let result = tokio::time::timeout(
        Duration::from_secs(60),
        s.engine.prepare_until_ready(policy),
    )
    .await
    .expect("gives up at once");
    let e = result.unwrap_err();
    assert!(
        e.to_string().contains("403") || e.to_string().to_lowercase().contains("access"),
        "{e}"
    );
    let status: Readiness = s.get("/readyz").await.json().await.unwrap();
    assert!(status.retry.is_none(), "{status:?}");
}
