//! `/readyz` and `/healthz` during a throttled download. Alone in its own test
//! binary, so that other tests' image generation cannot slow `/healthz`.
#![cfg(not(target_arch = "wasm32"))]

mod support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use schnell::server::ServerConfig;
use serde_json::Value;
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
    let body: Value = early.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_not_ready");

    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut slowest_health, mut saw_partial) = (Duration::ZERO, false);
    loop {
        let t = Instant::now();
        let health = s.get("/healthz").await;
        slowest_health = slowest_health.max(t.elapsed());
        assert_eq!(health.status(), StatusCode::OK);
        let ready = s.get("/readyz").await;
        let code = ready.status();
        let status: Value = ready.json().await.unwrap();
        assert_eq!(
            status["tokenizers"]["clip"]["path"], "tokenizer.json",
            "{status}"
        );
        assert_eq!(
            status["tokenizers"]["t5"]["path"], "tokenizer_2/tokenizer.json",
            "{status}"
        );
        if code == StatusCode::OK {
            assert_eq!(status["phase"], "ready");
            break;
        }
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        let (done, total) = (
            status["bytes_done"].as_u64().unwrap(),
            status["bytes_total"].as_u64().unwrap(),
        );
        // The configs arrive first (auto plans from them), so a file midway
        // is what shows the batch downloading.
        let files = status["files"].as_object().unwrap();
        let midway = files.values().any(|f| {
            let (d, t) = (f["done"].as_u64().unwrap(), f["total"].as_u64().unwrap());
            d > 0 && d < t
        });
        if status["phase"] == "downloading" && midway {
            saw_partial = true;
            assert!(done < total, "{status}");
            assert!(files.len() >= 10, "{status}");
            // What auto picked, and why, is reported from the start.
            assert_eq!(status["weights"]["transformer"], "none", "{status}");
            let reason = status["weights"]["reason"].as_str().unwrap();
            assert!(reason.contains("available RAM"), "{reason}");
        }
        assert!(Instant::now() < deadline, "never ready: {status}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(saw_partial, "/readyz never showed a download in progress");
    assert!(
        slowest_health < Duration::from_millis(50),
        "/healthz took {slowest_health:?}"
    );
    assert_eq!(s.post(request("256x256", 1)).await.status(), StatusCode::OK);
}
