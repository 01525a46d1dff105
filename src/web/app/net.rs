//! The page's requests to the server it was loaded from.

use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{AbortSignal, Headers, RequestInit, Response};

use crate::hub::{js_message, read_stream};
use crate::web::sse::{SseEvent, SseParser};

pub fn window() -> web_sys::Window {
    web_sys::window().expect("the app runs in a page")
}

/// The page's origin, which is the server's (or `trunk serve`'s proxy).
pub fn origin() -> String {
    window().location().origin().unwrap_or_default()
}

/// A request that got no answer: refused, offline, or aborted by the page.
#[derive(Debug)]
pub struct NoAnswer {
    pub aborted: bool,
    pub message: String,
}

async fn send(url: &str, init: &RequestInit) -> Result<Response, NoAnswer> {
    JsFuture::from(window().fetch_with_str_and_init(url, init))
        .await
        .map(|r| r.unchecked_into())
        .map_err(|e| {
            let message = js_message(&e);
            NoAnswer {
                aborted: message.starts_with("AbortError"),
                message,
            }
        })
}

/// `GET`, never from the HTTP cache (readiness changes).
pub async fn get(url: &str) -> Result<Response, NoAnswer> {
    let init = RequestInit::new();
    init.set_cache(web_sys::RequestCache::NoStore);
    send(url, &init).await
}

/// What a request's body is.
pub enum Body<'a> {
    Json(&'a str),
    /// A multipart form (an edit): the browser writes the boundary into the
    /// content type itself.
    Form(&'a web_sys::FormData),
}

/// `POST` a body, asking for a stream, with the API key when there is one.
pub async fn post(
    url: &str,
    body: Body<'_>,
    api_key: &str,
    signal: &AbortSignal,
) -> Result<Response, NoAnswer> {
    let headers = Headers::new().expect("Headers can be made");
    let _ = headers.set("accept", "text/event-stream");
    if !api_key.trim().is_empty() {
        let _ = headers.set("authorization", &format!("Bearer {}", api_key.trim()));
    }
    let init = RequestInit::new();
    init.set_method("POST");
    match body {
        Body::Json(text) => {
            let _ = headers.set("content-type", "application/json");
            init.set_body(&text.into());
        }
        Body::Form(form) => init.set_body(form),
    }
    init.set_headers(&headers);
    init.set_signal(Some(signal));
    send(url, &init).await
}

/// The body as text; empty if it cannot be read.
pub async fn text(response: &Response) -> String {
    match response.text() {
        Ok(promise) => JsFuture::from(promise)
            .await
            .ok()
            .and_then(|t| t.as_string())
            .unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Reads server-sent events from a streaming body, handing each to `each`
/// until the stream ends or `each` returns false.
pub async fn read_sse(
    response: &Response,
    mut each: impl FnMut(SseEvent) -> bool,
) -> Result<(), String> {
    let mut parser = SseParser::new();
    let mut go_on = true;
    read_stream(response, |chunk| {
        for event in parser.feed(chunk) {
            if go_on {
                go_on = each(event);
            }
        }
        go_on
    })
    .await
    .map_err(|e| js_message(&e))
}

pub async fn sleep(ms: u32) {
    gloo_timers::future::TimeoutFuture::new(ms).await
}
