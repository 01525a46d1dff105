//! `/`: the Trunk-built browser client from `dist/`, or how to build it.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use percent_encoding::percent_decode_str;
use tower_http::services::ServeFile;

/// Serves `dist` when it holds an `index.html`; else a page saying how to
/// make it. Paths that are not files fall back to `index.html`. Nothing
/// outside `dist` is served, even through a symbolic link.
pub async fn router(dist: &Path) -> Router {
    let root = tokio::fs::canonicalize(dist).await.ok();
    let index = match &root {
        Some(root) => inside(root, &root.join("index.html")).await,
        None => None,
    };
    match (root, index) {
        (Some(root), Some(index)) => Router::new()
            .fallback(serve_dist)
            .with_state(Arc::new(Dist { root, index })),
        _ => {
            let page = missing_page(dist);
            Router::new().route("/", get(move || async move { Html(page) }))
        }
    }
}

struct Dist {
    /// Canonical: every served file's canonical path starts with it.
    root: PathBuf,
    index: PathBuf,
}

async fn serve_dist(State(dist): State<Arc<Dist>>, request: Request) -> Response {
    let file = match resolve(&dist, request.uri().path()).await {
        Some(file) => file,
        None => return StatusCode::NOT_FOUND.into_response(),
    };
    let served: Result<_, Infallible> =
        tower_service::Service::call(&mut ServeFile::new(file), request).await;
    match served {
        Ok(response) => response.map(Body::new),
        Err(never) => match never {},
    }
}

/// The file a URL path names under the root, or `index.html` when it names
/// none (the page routes itself); `None` for a path that tries to climb out.
async fn resolve(dist: &Dist, url_path: &str) -> Option<PathBuf> {
    let decoded = percent_decode_str(url_path).decode_utf8().ok()?;
    let mut candidate = dist.root.clone();
    for part in decoded.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            _ if part.contains('\\') || part.contains('\0') => return None,
            _ => candidate.push(part),
        }
    }
    let Some(found) = inside(&dist.root, &candidate).await else {
        return Some(dist.index.clone());
    };
    let file = match tokio::fs::metadata(&found).await {
        Ok(meta) if meta.is_dir() => inside(&dist.root, &found.join("index.html")).await,
        Ok(meta) if meta.is_file() => Some(found),
        _ => None,
    };
    Some(file.unwrap_or_else(|| dist.index.clone()))
}

/// The canonical form of `path` if it exists and stays under `root` once
/// every link is followed.
async fn inside(root: &Path, path: &Path) -> Option<PathBuf> {
    let canonical = tokio::fs::canonicalize(path).await.ok()?;
    canonical.starts_with(root).then_some(canonical)
}

fn missing_page(dist: &Path) -> String {
    // A relative path helps whoever runs the server; an absolute one would
    // tell every visitor where it lives.
    let named = if dist.is_relative() {
        format!("<code>{}</code>", html_escape(&dist.display().to_string()))
    } else {
        "the <code>--dist</code> folder".to_string()
    };
    format!(
        "<!doctype html><meta charset=utf-8><title>schnell</title>\
         <h1>schnell is running</h1>\
         <p>The API is at <code>/v1/images/generations</code>; readiness at <a href=/readyz>/readyz</a>.</p>\
         <p>The web page is not built: {named} has no <code>index.html</code>. Build it with</p>\
         <pre>rustup target add wasm32-unknown-unknown\ncargo install --locked trunk --version 0.21.14\ncargo install wasm-bindgen-cli --version VERSION  # wasm-bindgen in Cargo.lock\ncargo fetch &amp;&amp; trunk build --release</pre>\
         <p>then restart <code>schnell serve</code> (or pass <code>--dist DIR</code>).</p>"
    )
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
