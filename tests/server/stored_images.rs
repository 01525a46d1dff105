//! Images served by URL: under `--public-url`, and in an `--image-dir` that replicas share.

use reqwest::StatusCode;
use schnell::protocol::ImagesResponse;
use schnell::server::ServerConfig;
use serde_json::json;

use crate::support::server::ready;

#[tokio::test]
async fn image_urls_use_the_public_url_when_set() {
    let s = ready(
        ServerConfig::default()
            .public_url(Some("https://images.example.com/schnell/".into()))
            // A name it answers to, that the URLs must not be built from.
            .allowed_hosts(vec!["other.example".into()]),
    )
    .await;
    let r = s
        .http
        .post(format!("{}/v1/images/generations", s.url))
        .header("host", "other.example")
        .json(&json!({ "prompt": "x", "size": "256x256", "steps": 1, "response_format": "url" }))
        .send()
        .await
        .unwrap();
    let body: ImagesResponse = r.json().await.unwrap();
    let url = body.data[0].url.as_deref().unwrap();
    let path = url
        .strip_prefix("https://images.example.com/schnell/v1/images/")
        .unwrap_or_else(|| panic!("{url}"));
    assert_eq!(
        s.get(&format!("/v1/images/{path}")).await.status(),
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_dir_is_shared_by_replicas_capped_and_never_left() {
    let images = tempfile::tempdir().unwrap();
    let config = || {
        ServerConfig::default()
            .image_dir(Some(images.path().to_path_buf()))
            // Room for one image only: each new one evicts the one before.
            .image_dir_max(1)
    };
    let (a, b) = tokio::join!(ready(config()), ready(config()));
    async fn make(s: &crate::support::server::TestServer) -> String {
        let body: ImagesResponse = s
            .post(json!({ "prompt": "x", "size": "256x256", "steps": 1, "response_format": "url" }))
            .await
            .json()
            .await
            .unwrap();
        body.data[0].url.clone().unwrap()
    }
    let first = make(&a).await;
    // Made on one replica, served by the other.
    let from_a = a.get(&first).await;
    assert_eq!(from_a.status(), StatusCode::OK);
    let from_b = b.get(&first).await;
    assert_eq!(from_b.status(), StatusCode::OK);
    assert_eq!(from_b.headers()["content-type"], "image/png");
    assert_eq!(from_a.bytes().await.unwrap(), from_b.bytes().await.unwrap());

    // Over the cap, the oldest goes, for every replica.
    let second = make(&b).await;
    for s in [&a, &b] {
        assert_eq!(s.get(&first).await.status(), StatusCode::NOT_FOUND);
        assert_eq!(s.get(&second).await.status(), StatusCode::OK);
    }
    let names: Vec<String> = std::fs::read_dir(images.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, [second.rsplit('/').next().unwrap()], "{names:?}");

    // No name from a request reaches outside the folder.
    std::fs::write(images.path().parent().unwrap().join("outside.png"), b"no").ok();
    let id = second.rsplit('/').next().unwrap().trim_end_matches(".png");
    for path in [
        "/v1/images/..%2Foutside.png".to_string(),
        "/v1/images/..%2F..%2Fetc%2Fpasswd".to_string(),
        format!("/v1/images/{}.png", id.to_uppercase()),
        format!("/v1/images/{id}.gif"),
        format!("/v1/images/{id}"),
    ] {
        let r = a.get(&path).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
    }
}
