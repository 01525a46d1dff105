//! Requests the server refuses: 400s that say why, JSON 404s under `/v1`, and a web page that stays inside `dist`.

use reqwest::StatusCode;
use schnell::server::ServerConfig;
use serde_json::{json, Value};

use crate::support::server::ready;

#[tokio::test]
async fn bad_requests_get_400_with_a_useful_message() {
    let s = ready(ServerConfig::default()).await;
    let send_raw = |body: &'static str| {
        s.http
            .post(format!("{}/v1/images/generations", s.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let cases: Vec<(reqwest::Response, Option<&str>, &str)> = vec![
        (send_raw("{\"prompt\": ").await.unwrap(), None, "JSON"),
        (send_raw("").await.unwrap(), None, "empty"),
        (
            send_raw("{\"prompt\":\"a\",\"size\":\"256x256\"}{\"n\":99} garbage")
                .await
                .unwrap(),
            None,
            "trailing characters",
        ),
        (send_raw("[1, 2]").await.unwrap(), None, "JSON object"),
        (
            send_raw("{\"prompt\":\"a\",\"n\":1,\"n\":2}")
                .await
                .unwrap(),
            None,
            "duplicate field `n`",
        ),
        (
            s.post(json!({ "prompt": "x", "response_format": 1 })).await,
            Some("response_format"),
            "`response_format`: invalid type",
        ),
        (
            s.post(json!({ "prompt": "x", "size": 5 })).await,
            Some("size"),
            "`size`",
        ),
        (
            s.post(json!({ "prompt": "x", "stream": "yes" })).await,
            Some("stream"),
            "`stream`",
        ),
        (
            s.post(json!({ "prompt": "x", "size": "1000x1000" })).await,
            Some("size"),
            "1008",
        ),
        (
            s.post(json!({ "prompt": "x", "size": "big" })).await,
            Some("size"),
            "WIDTHxHEIGHT",
        ),
        (
            s.post(json!({ "prompt": "x", "n": 11 })).await,
            Some("n"),
            "1 to 10",
        ),
        (
            s.post(json!({ "prompt": "x", "n": 0 })).await,
            Some("n"),
            "1 to 10",
        ),
        (
            s.post(json!({ "prompt": "x", "n": "two" })).await,
            Some("n"),
            "`n`: invalid type",
        ),
        (
            s.post(json!({ "prompt": "x", "stream": true, "partial_images": 4 }))
                .await,
            Some("partial_images"),
            "0 to 3",
        ),
        (
            s.post(json!({ "prompt": "x", "output_compression": 101 }))
                .await,
            Some("output_compression"),
            "0 to 100",
        ),
        (
            s.post(json!({ "prompt": "x", "output_format": "gif" }))
                .await,
            Some("output_format"),
            "webp",
        ),
        (
            s.post(json!({ "size": "256x256" })).await,
            Some("prompt"),
            "required",
        ),
        (
            s.post(json!({ "prompt": "x", "model": "dall-e-3" })).await,
            Some("model"),
            "flux-schnell",
        ),
        (
            s.post(json!({ "prompt": "x", "response_format": "gif" }))
                .await,
            Some("response_format"),
            "b64_json",
        ),
        (
            s.post(json!({ "prompt": "x", "steps": 99 })).await,
            Some("steps"),
            "50",
        ),
    ];
    for (response, param, needle) in cases {
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body: Value = response.json().await.unwrap();
        let error = &body["error"];
        assert_eq!(error["type"], "invalid_request_error");
        assert_eq!(error["param"].as_str(), param, "{body}");
        assert!(
            error["message"].as_str().unwrap().contains(needle),
            "{needle}: {body}"
        );
    }
    let huge = json!({ "prompt": "x".repeat(100_000) });
    let r = s.post(huge).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("64 KiB"));
    assert_eq!(s.steps_run(), 0, "a bad request reached the engine");
}

#[tokio::test]
async fn the_web_page_stays_inside_dist_and_unknown_api_paths_are_json_404s() {
    let outer = tempfile::tempdir().unwrap();
    let dist = outer.path().join("dist");
    std::fs::create_dir_all(dist.join("assets")).unwrap();
    std::fs::write(dist.join("index.html"), "<html>the page</html>").unwrap();
    std::fs::write(dist.join("assets/app.js"), "let app;").unwrap();
    std::fs::write(outer.path().join("secret.txt"), "top secret").unwrap();
    std::os::unix::fs::symlink(outer.path().join("secret.txt"), dist.join("passwd")).unwrap();
    std::os::unix::fs::symlink(outer.path(), dist.join("up")).unwrap();
    std::os::unix::fs::symlink(dist.join("assets/app.js"), dist.join("alias.js")).unwrap();
    let s = ready(ServerConfig::default().dist(dist.clone())).await;

    let server = &s;
    let text = |path: &'static str| async move {
        let r = server.get(path).await;
        (r.status(), r.text().await.unwrap())
    };
    assert_eq!(text("/").await.1, "<html>the page</html>");
    assert_eq!(text("/assets/app.js").await.1, "let app;");
    // A link that stays inside is followed.
    assert_eq!(text("/alias.js").await.1, "let app;");
    // The page routes itself: unknown paths get it.
    assert_eq!(text("/history/3").await.1, "<html>the page</html>");
    for path in [
        "/passwd",
        "/up/secret.txt",
        "/up/dist/../secret.txt",
        "/%2e%2e/secret.txt",
    ] {
        let (status, body) = text(path).await;
        assert!(!body.contains("top secret"), "{path}: {status} {body}");
    }

    // Unknown API paths answer in the API's shape, not with the page.
    for path in ["/v1/nope", "/v1", "/v1/images/generations/extra"] {
        let r = s.get(path).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found", "{path}");
    }
    let r = s.get("/v1/images/generations").await;
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");
}
