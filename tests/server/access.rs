//! Who may use what: the API key on `/v1`, and the hub's files with and without it.

use reqwest::StatusCode;
use schnell::server::ServerConfig;
use serde_json::Value;

use crate::support::server::{ready, request, HF_TOKEN};
use crate::support::tiny_models;

#[tokio::test]
async fn an_api_key_guards_v1() {
    let s = ready(ServerConfig::default().api_key(Some("sk-test-key".into()))).await;
    let with = |key: Option<&str>| {
        let mut r = s.http.get(format!("{}/v1/models", s.url));
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        r.send()
    };
    for key in [
        None,
        Some("sk-wrong"),
        Some("sk-test-ke"),
        Some("sk-test-key-"),
    ] {
        let r = with(key).await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{key:?}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_api_key");
    }
    assert_eq!(
        with(Some("sk-test-key")).await.unwrap().status(),
        StatusCode::OK
    );
    let r = s
        .http
        .post(format!("{}/v1/images/generations", s.url))
        .json(&request("256x256", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(s.get("/healthz").await.status(), StatusCode::OK);
    assert_eq!(s.get("/readyz").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_hub_serves_only_this_models_files_and_never_the_token() {
    let s = ready(ServerConfig::default()).await;
    let r = s
        .get("/hub/black-forest-labs/FLUX.1-schnell/resolve/main/transformer/config.json")
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().contains_key("x-repo-commit"));
    let served = r.bytes().await.unwrap();
    let original = std::fs::read(
        tiny_models().join("black-forest-labs/FLUX.1-schnell/transformer/config.json"),
    )
    .unwrap();
    assert_eq!(served, original);
    let r = s
        .get("/hub/openai/clip-vit-large-patch14/resolve/main/tokenizer.json")
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = s.get("/hub/acme/other/resolve/main/config.json").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(r.headers()["x-error-code"], "RepoNotFound");

    // The page without a build says how to make one.
    let page = s.get("/").await.text().await.unwrap();
    assert!(page.contains("trunk build --release"), "{page}");

    for path in ["/readyz", "/v1/models", "/healthz"] {
        let text = s.get(path).await.text().await.unwrap();
        assert!(!text.contains(HF_TOKEN), "{path} shows the token");
    }
}

#[tokio::test]
async fn an_empty_api_key_is_refused_not_ignored() {
    let cache = tempfile::tempdir().unwrap();
    for (key, needle) in [("", "empty"), ("  ", "empty"), (" sk-1", "whitespace")] {
        let client = schnell::hub::HubClientBuilder::new(cache.path())
            .endpoint("http://127.0.0.1:9")
            .build()
            .unwrap();
        let engine = schnell::flux::FluxSchnell::new(client, Default::default());
        let result = schnell::server::router(
            engine,
            &schnell::flux::FLUX_SCHNELL,
            ServerConfig::default()
                .api_key(Some(key.into()))
                .hub_cache(cache.path().into()),
        )
        .await;
        let Err(error) = result else {
            panic!("{key:?}: an unusable key was accepted");
        };
        let error = error.to_string();
        assert!(error.contains(needle), "{key:?}: {error}");
    }
}

#[tokio::test]
async fn with_a_key_the_hub_gives_weights_only_to_key_holders() {
    let s = ready(ServerConfig::default().api_key(Some("sk-hub-key".into()))).await;
    let status: Value = s.get("/readyz").await.json().await.unwrap();
    let hub_url = |repo: &str, path: &str| format!("{}/hub/{repo}/resolve/main/{path}", s.url);
    // What the page reads: the tokenizers and configs, without the key.
    for which in ["t5", "clip"] {
        let t = &status["tokenizers"][which];
        let url = hub_url(t["repo"].as_str().unwrap(), t["path"].as_str().unwrap());
        let r = s.http.get(&url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{url}");
    }
    let flux = "black-forest-labs/FLUX.1-schnell";
    let config = s
        .http
        .get(hub_url(flux, "transformer/config.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(config.status(), StatusCode::OK);
    // The weights need it, by GET or HEAD, and nothing says what exists.
    for path in [
        "ae.safetensors",
        "flux1-schnell.safetensors",
        "no-such-file.bin",
    ] {
        for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
            let r = s
                .http
                .request(method.clone(), hub_url(flux, path))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
            let r = s
                .http
                .request(method.clone(), hub_url(flux, path))
                .bearer_auth("sk-wrong")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
        }
    }
    let r = s
        .http
        .get(hub_url(flux, "ae.safetensors"))
        .header("authorization", "bearer sk-hub-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let served = r.bytes().await.unwrap();
    let original = std::fs::read(tiny_models().join(flux).join("ae.safetensors")).unwrap();
    assert_eq!(served, original);

    // The scheme is case-insensitive on /v1 too (RFC 7235).
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let r = s
            .http
            .get(format!("{}/v1/models", s.url))
            .header("authorization", format!("{scheme} sk-hub-key"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{scheme}");
    }
}
