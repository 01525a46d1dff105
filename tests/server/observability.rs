//! What the server says about itself: `/metrics`, `/openapi.json` and `/readyz`, never with local paths or the token.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use schnell::server::{ServeOptions, ServerConfig};
use serde_json::{json, Value};

use crate::support::server::{ready, request, start, start_with, HF_TOKEN};

#[tokio::test]
async fn metrics_count_requests_stages_and_images() {
    let s = ready(ServerConfig::default()).await;
    assert_eq!(s.post(request("256x256", 1)).await.status(), StatusCode::OK);
    // Two images in one batch: one pass a step for both.
    let two =
        json!({ "prompt": "x", "size": "256x256", "steps": 1, "n": 2, "response_format": "url" });
    assert_eq!(s.post(two).await.status(), StatusCode::OK);
    let bad = s.post(json!({ "prompt": "x", "n": 99 })).await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let r = s.get("/metrics").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = r.text().await.unwrap();
    let value = |line_start: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(line_start))
            .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(value("schnell_http_requests_total{status=\"400\"}"), 1.0);
    assert!(value("schnell_http_requests_total{status=\"200\"}") >= 1.0);
    assert_eq!(value("schnell_images_total"), 3.0);
    // Two steps of one image and the batch's one, in the step histogram;
    // a decode per image.
    assert_eq!(value("schnell_stage_seconds_count{stage=\"step\"}"), 3.0);
    assert_eq!(
        value("schnell_stage_seconds_count{stage=\"vae_decode\"}"),
        3.0
    );
    assert_eq!(value("schnell_queue_capacity"), 16.0);
    assert!(value("schnell_model_downloaded_bytes") > 0.0);
    // What memory holds besides the model: the two images kept for their
    // URLs, and the first prompt's encodings (the worker records them after
    // each job, so before it ran the second).
    assert!(value("schnell_stored_images_bytes") > 0.0);
    assert!(value("schnell_prompt_cache_bytes") > 0.0);
    assert!(text.trim_end().ends_with("# EOF"), "{text}");

    // Behind the key, when there is one.
    let keyed = ready(ServerConfig::default().api_key(Some("sk-metrics".into()))).await;
    assert_eq!(
        keyed.get("/metrics").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let with_key = keyed
        .http
        .get(format!("{}/metrics", keyed.url))
        .bearer_auth("sk-metrics")
        .send()
        .await
        .unwrap();
    assert_eq!(with_key.status(), StatusCode::OK);
}

#[tokio::test]
async fn openapi_json_describes_what_the_server_sends() {
    let s = ready(ServerConfig::default().api_key(Some("sk-doc".into()))).await;
    // Public: it is the API's documentation.
    let r = s.get("/openapi.json").await;
    assert_eq!(r.status(), StatusCode::OK);
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.0.3");
    let generations = &doc["paths"]["/v1/images/generations"]["post"];
    assert_eq!(
        generations["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/ImagesRequest"
    );
    let schemas = &doc["components"]["schemas"];
    let keys = |v: &Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    // A real answer has only properties the document gives it, and every
    // one it requires.
    let fits = |value: &Value, schema: &str| {
        let properties = keys(&schemas[schema]["properties"]);
        let sent = keys(value);
        assert!(
            sent.iter().all(|k| properties.contains(k)),
            "{schema}: {sent:?} against {properties:?}"
        );
        for required in schemas[schema]["required"].as_array().unwrap() {
            assert!(
                sent.contains(&required.as_str().unwrap().to_string()),
                "{schema} requires {required}"
            );
        }
    };
    let answer: Value = s
        .http
        .post(format!("{}/v1/images/generations", s.url))
        .bearer_auth("sk-doc")
        .json(&request("256x256", 2))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    fits(&answer, "ImagesResponse");
    fits(&answer["data"][0], "ImageData");
    fits(&answer["usage"], "Usage");
    let readyz: Value = s.get("/readyz").await.json().await.unwrap();
    fits(&readyz, "Readiness");
}

#[tokio::test]
async fn a_failed_download_shows_in_readyz_without_the_token() {
    // The mirror wants another token: 403, as the Hub answers for a gated repo.
    let s = start(ServerConfig::default(), false, |hub| {
        *hub.faults.require_token.lock().unwrap() = Some("hf_other".into())
    })
    .await;
    let status = failed_readyz(&s, Duration::from_secs(30)).await;
    let error = status["error"].as_str().unwrap();
    assert!(
        error.contains("403") && error.contains("licence"),
        "{error}"
    );
    let body = s.post(request("256x256", 1)).await.text().await.unwrap();
    assert!(body.contains("failed to load"), "{body}");
    assert!(!format!("{status}{body}").contains(HF_TOKEN));
    assert!(s.hub.stats.requests() > 0);
}

#[tokio::test]
async fn readyz_and_errors_never_show_local_paths() {
    let models = crate::support::tiny_copy();
    std::fs::write(
        models
            .path()
            .join("black-forest-labs/FLUX.1-schnell/ae.safetensors"),
        b"this is not a safetensors file",
    )
    .unwrap();
    let s = start_with(
        models.path(),
        ServerConfig::default(),
        ServeOptions::default(),
        false,
        |_| {},
    )
    .await;
    let status = failed_readyz(&s, Duration::from_secs(60)).await;
    let error = status["error"].as_str().unwrap().to_string();
    assert!(error.contains("ae.safetensors"), "{error}");
    let body = s.post(request("256x256", 1)).await.text().await.unwrap();
    assert!(body.contains("ae.safetensors"), "{body}");
    let cache = s.cache.to_str().unwrap();
    let temp = std::env::temp_dir();
    for text in [error.as_str(), body.as_str()] {
        assert!(
            !text.contains(cache) && !text.contains(temp.to_str().unwrap()),
            "a local path: {text}"
        );
    }
}

/// `/readyz` once it reports the start failed (polled until `within`).
async fn failed_readyz(s: &crate::support::server::TestServer, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let status: Value = s.get("/readyz").await.json().await.unwrap();
        if status["phase"] == "failed" {
            return status;
        }
        assert!(Instant::now() < deadline, "never failed: {status}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
