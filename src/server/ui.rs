//! `/`: the Trunk-built browser client from `dist/`, or how to build it.

use std::path::Path;

use axum::response::Html;
use axum::routing::get;
use axum::Router;
use tower_http::services::{ServeDir, ServeFile};

/// Serves `dist` when it holds an `index.html`; else a page saying how to make it.
pub fn router(dist: &Path) -> Router {
    let index = dist.join("index.html");
    if index.is_file() {
        Router::new().fallback_service(ServeDir::new(dist).fallback(ServeFile::new(index)))
    } else {
        let page = missing_page(dist);
        Router::new().route("/", get(move || async move { Html(page) }))
    }
}

fn missing_page(dist: &Path) -> String {
    format!(
        "<!doctype html><meta charset=utf-8><title>schnell</title>\
         <h1>schnell is running</h1>\
         <p>The API is at <code>/v1/images/generations</code>; readiness at <a href=/readyz>/readyz</a>.</p>\
         <p>The web page is not built: <code>{}</code> has no <code>index.html</code>. Build it with</p>\
         <pre>rustup target add wasm32-unknown-unknown\ncargo install --locked trunk --version 0.21.14\ncargo install wasm-bindgen-cli --version VERSION  # wasm-bindgen in Cargo.lock\ncargo fetch &amp;&amp; trunk build --release</pre>\
         <p>then restart <code>schnell serve</code> (or pass <code>--dist DIR</code>).</p>",
        html_escape(&dist.display().to_string())
    )
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
