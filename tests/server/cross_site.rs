//! Safe as a desktop app without a key: other sites' pages cannot drive the
//! server (a form post, a `text/plain` fetch, a multipart edit), and a
//! DNS-rebinding name is refused; the server's own page, non-browser
//! clients and the origins allowed go on working.

use reqwest::StatusCode;
use schnell::protocol::ErrorBody;
use schnell::server::ServerConfig;
use serde_json::json;

use crate::support::server::{ready, request, rgba_png, TestServer};

const EVIL: &str = "http://attacker.example";

/// A generation's body sent as `content_type`, with `headers` added.
async fn generation(
    s: &TestServer,
    content_type: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut r = s
        .http
        .post(format!("{}/v1/images/generations", s.url))
        .header("content-type", content_type)
        .body(request("256x256", 1).to_string());
    for (name, value) in headers {
        r = r.header(*name, *value);
    }
    r.send().await.unwrap()
}

/// The error's status and code.
async fn refusal(r: reqwest::Response) -> (StatusCode, String, String) {
    let status = r.status();
    let body: ErrorBody = r.json().await.unwrap();
    (
        status,
        body.error.code.unwrap_or_default(),
        body.error.message,
    )
}

#[tokio::test]
async fn other_sites_cannot_post_work_without_a_key() {
    let s = ready(ServerConfig::default()).await;
    // What a page elsewhere can send without a CORS preflight.
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let (status, code, message) = refusal(generation(&s, content_type, &[]).await).await;
        assert_eq!(
            status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type}: {message}"
        );
        assert_eq!(code, "unsupported_media_type");
        assert!(message.contains("application/json"), "{message}");
    }
    // A foreign Origin, whatever the type.
    let (status, code, message) =
        refusal(generation(&s, "application/json", &[("origin", EVIL)]).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "origin_not_allowed")
    );
    assert!(
        message.contains(EVIL) && message.contains("--cors-origin"),
        "{message}"
    );
    // A cross-site edit, as a form post from a page elsewhere sends it; and
    // one whose browser says another site's page sent it, without an Origin.
    let png = rgba_png(64, 64, |_, _| [9, 9, 9, 255]);
    let edit = |headers: &'static [(&'static str, &'static str)]| {
        let (s, png) = (&s, &png);
        async move {
            s.edit_with(
                &s.http,
                headers,
                &[("prompt", "a fox"), ("size", "256x256"), ("steps", "1")],
                &[("image", png)],
            )
            .await
        }
    };
    let (status, _, message) =
        refusal(edit(&[("origin", EVIL), ("sec-fetch-site", "cross-site")]).await).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{message}");
    assert!(message.contains(EVIL), "{message}");
    let (status, _, message) = refusal(edit(&[("sec-fetch-site", "cross-site")]).await).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{message}");
    assert_eq!(s.steps_run(), 0, "a refused request ran");

    // The server's own page, and clients that send no Origin, go on.
    let own = s.url.clone();
    let r = generation(
        &s,
        "application/json; charset=utf-8",
        &[("origin", &own), ("sec-fetch-site", "same-origin")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(s.post(request("256x256", 2)).await.status(), StatusCode::OK);
    assert_eq!(edit(&[]).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn allowed_origins_and_the_public_url_may_call() {
    let s = ready(
        ServerConfig::default()
            .cors_origins(vec!["http://localhost:8081".into()])
            .public_url(Some("https://images.example.com".into())),
    )
    .await;
    for origin in ["http://localhost:8081", "https://images.example.com"] {
        let r = generation(
            &s,
            "application/json",
            &[("origin", origin), ("sec-fetch-site", "cross-site")],
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK, "{origin}");
    }
    let (status, _, message) = refusal(
        generation(
            &s,
            "application/json",
            &[("origin", "http://localhost:8082")],
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{message}");
}

#[tokio::test]
async fn a_dns_rebinding_name_is_refused() {
    let s = ready(ServerConfig::default().allowed_hosts(vec!["studio.lan".into()])).await;
    let port = s.addr.port();
    let with_host = |host: String, path: &'static str| {
        let url = format!("{}{path}", s.url);
        let http = s.http.clone();
        async move { http.get(url).header("host", host).send().await.unwrap() }
    };
    // The attacker's name resolving to 127.0.0.1: same-origin to its page.
    for path in [
        "/v1/models",
        "/",
        "/hub/black-forest-labs/FLUX.1-schnell/resolve/main/transformer/config.json",
    ] {
        let r = with_host(format!("attacker.example:{port}"), path).await;
        assert_eq!(r.status(), StatusCode::MISDIRECTED_REQUEST, "{path}");
        let (_, code, message) = refusal(r).await;
        assert_eq!(code, "host_not_allowed");
        assert!(
            message.contains("attacker.example") && message.contains("--allowed-host"),
            "{message}"
        );
    }
    let r = s
        .http
        .post(format!("{}/v1/images/generations", s.url))
        .header("host", format!("attacker.example:{port}"))
        .json(&json!({"prompt": "a fox", "size": "256x256", "steps": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::MISDIRECTED_REQUEST);
    assert_eq!(s.steps_run(), 0);
    // Probes answer any name; the names it serves answer everything.
    assert_eq!(
        with_host("attacker.example".into(), "/healthz")
            .await
            .status(),
        StatusCode::OK
    );
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("studio.lan:{port}"),
    ] {
        assert_eq!(
            with_host(host.clone(), "/v1/models").await.status(),
            StatusCode::OK,
            "{host}"
        );
    }
}
