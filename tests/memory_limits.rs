//! Requests that would not fit in memory are refused before they run, and
//! the largest image runs within a bounded address space. In its own test
//! binary: the 2048² generation takes the machine's cores for minutes.
#![cfg(not(target_arch = "wasm32"))]

mod support;

use std::process::Command;

use reqwest::StatusCode;
use schnell::flux::{EngineOptions, Quant, QuantChoice};
use schnell::server::ServerConfig;
use serde_json::Value;
use support::server::{png_size, request, start_with_engine};
use support::{tiny_models, TestHub};

#[tokio::test]
async fn an_image_beyond_the_memory_limit_is_refused_with_the_largest_that_fits() {
    // A budget of one byte: the limit is what the plan was made for (1024²,
    // with the weights forced). Larger images fit only by decoding in tiles,
    // up to a point.
    let options = EngineOptions::default()
        .quant(QuantChoice::Fixed(Quant::None))
        .memory_budget(Some(1));
    let s = start_with_engine(options, ServerConfig::default(), true, |_| {}).await;
    let ready: Value = s.get("/readyz").await.json().await.unwrap();
    let memory = &ready["memory"];
    assert_eq!(memory["source"], "--memory-budget", "{ready}");
    assert!(memory["limit_bytes"].as_u64().unwrap() >= memory["need_1024_bytes"].as_u64().unwrap());
    let largest = memory["largest_square"].as_u64().unwrap();
    assert!((1024..2048).contains(&largest), "{ready}");

    let steps_before = s.steps_run();
    let too_large = largest + 16;
    let r = s
        .post(request(&format!("{too_large}x{too_large}"), 1))
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "image_too_large", "{body}");
    assert_eq!(body["error"]["param"], "size", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("{too_large}×{too_large}"))
            && message.contains(&format!("{largest}×{largest}"))
            && message.contains("GB"),
        "{message}"
    );
    assert_eq!(s.steps_run(), steps_before, "nothing ran");
    // Streamed, the same 400 comes before any event.
    let mut streamed = request(&format!("{too_large}x{too_large}"), 1);
    streamed["stream"] = serde_json::json!(true);
    let r = s.post(streamed).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "image_too_large", "{body}");

    // Just beyond the planned size the whole decode would not fit: it runs,
    // decoded in tiles.
    let mut body = request("1040x1024", 1);
    body["steps"] = serde_json::json!(1);
    let r = s.post(body).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        png_size(body["data"][0]["b64_json"].as_str().unwrap()),
        (1040, 1024)
    );
}

#[test]
fn a_2048_image_on_the_tiny_models_fits_in_a_12_gb_address_space() {
    let hub = TestHub::start(tiny_models());
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("big.png");
    let out = Command::new("prlimit")
        .arg("--as=12000000000")
        .arg(env!("CARGO_BIN_EXE_schnell"))
        .args(["generate", "a fox", "--width", "2048", "--height", "2048"])
        .args(["--steps", "1", "--seed", "3", "--quant", "none"])
        .args(["--endpoint", &hub.endpoint, "--cache-dir"])
        .arg(dir.path().join("cache"))
        .arg("-o")
        .arg(&png)
        .env_remove("HF_HUB_OFFLINE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(image::image_dimensions(&png).unwrap(), (2048, 2048));
}
