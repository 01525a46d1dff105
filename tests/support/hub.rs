//! The test Hub itself: the mirror in its own thread, with the faults injected and the stats counted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::faults::{Faults, Link};
use super::stats::{InFlight, Seen, Stats};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use schnell::mirror::Mirror;
use tokio::sync::oneshot;

#[derive(Clone)]
pub(super) struct Shared {
    pub(super) faults: Arc<Faults>,
    pub(super) stats: Arc<Stats>,
}

/// The mirror in its own thread and runtime, so that a test's runtime (a
/// current-thread one, say) measures only the client.
pub struct TestHub {
    pub addr: SocketAddr,
    pub endpoint: String,
    pub faults: Arc<Faults>,
    pub stats: Arc<Stats>,
    pub(super) stop: Option<oneshot::Sender<()>>,
    pub(super) thread: Option<std::thread::JoinHandle<()>>,
}

impl TestHub {
    pub fn start(dir: &Path) -> Self {
        Self::start_with_workers(dir, 2)
    }

    /// With `workers` runtime threads: one keeps the mirror from competing for
    /// the CPU with a timing-sensitive test.
    pub fn start_with_workers(dir: &Path, workers: usize) -> Self {
        let faults = Arc::new(Faults::default());
        let stats = Arc::new(Stats::default());
        let shared = Shared {
            faults: faults.clone(),
            stats: stats.clone(),
        };
        let (stop, stopped) = oneshot::channel();
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let dir = dir.to_path_buf();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mirror = Mirror::open(&dir).await.expect("mirror folder");
                let app = Arc::new(mirror)
                    .router()
                    .layer(middleware::from_fn_with_state(shared, inject));
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                bound_tx.send(listener.local_addr().unwrap()).unwrap();
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        let addr = bound_rx.recv().expect("mirror started");
        Self {
            addr,
            endpoint: format!("http://{addr}"),
            faults,
            stats,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Graceful shutdown waits for open connections; don't hang a test on it.
        if let Some(thread) = self.thread.take() {
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

/// `path` of `/{org}/{name}/resolve/{rev}/{path}`.
pub(super) fn file_of(uri_path: &str) -> String {
    let mut parts = uri_path.splitn(6, '/');
    match (parts.nth(3), parts.nth(1)) {
        (Some("resolve"), Some(path)) => path.to_string(),
        _ => uri_path.to_string(),
    }
}

pub(super) async fn inject(State(s): State<Shared>, request: Request, next: Next) -> Response {
    // Counters for tests that run elsewhere (the browser): read, or reset.
    match request.uri().path() {
        "/__stats" => return stats_response(&s.stats),
        "/__reset" => {
            s.stats.reset();
            return stats_response(&s.stats);
        }
        // `?file=PATH&n=N[&retry_after=S]`: the next N requests for PATH answer 503.
        "/__fail" => {
            let query: HashMap<String, String> = request
                .uri()
                .query()
                .unwrap_or("")
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.replace("%2F", "/")))
                .collect();
            let n = query.get("n").and_then(|n| n.parse().ok()).unwrap_or(0);
            s.faults.fail_file(
                query.get("file").map_or("", String::as_str),
                n,
                query.get("retry_after").map(String::as_str),
            );
            return stats_response(&s.stats);
        }
        _ => {}
    }
    let uri = request.uri().clone();
    let seen = Seen {
        method: request.method().clone(),
        file: file_of(request.uri().path()),
        range: request
            .headers()
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        authorization: request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    };
    s.stats.seen.lock().unwrap().push(seen.clone());
    let in_flight = InFlight::new(s.stats.clone());
    let f = &s.faults;

    let throttle = *f.throttle.lock().unwrap();
    if let Some((_, latency)) = throttle {
        tokio::time::sleep(latency).await;
    }
    let file_fault = {
        let mut fails = f.fail_file.lock().unwrap();
        match fails.get_mut(&seen.file) {
            Some((n, retry_after)) if *n > 0 => {
                *n -= 1;
                Some(retry_after.clone())
            }
            _ => None,
        }
    };
    let retry_after = match file_fault {
        Some(retry_after) => Some(retry_after),
        None => f
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
            .then(|| f.retry_after.lock().unwrap().clone()),
    };
    if let Some(retry_after) = retry_after {
        let mut r = StatusCode::SERVICE_UNAVAILABLE.into_response();
        let headers = r.headers_mut();
        if let Some(ra) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_str(&ra).unwrap());
        }
        // A browser reads the status and Retry-After only with CORS headers.
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("retry-after"),
        );
        return r;
    }
    let required = f.require_token.lock().unwrap().clone();
    if let Some(token) = required {
        let auth = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let status = match auth {
            None => Some(StatusCode::UNAUTHORIZED),
            Some(a) if a != format!("Bearer {token}") => Some(StatusCode::FORBIDDEN),
            Some(_) => None,
        };
        if let Some(status) = status {
            let mut r = (status, "gated").into_response();
            r.headers_mut()
                .insert("x-error-code", HeaderValue::from_static("GatedRepo"));
            return r;
        }
    }
    if seen.is_body() {
        let gate = f.gate.lock().unwrap().clone();
        if let Some(gate) = gate.filter(|g| !g.reached()) {
            let full = {
                let mut waiting = gate.waiting.lock().unwrap();
                waiting.insert(seen.file.clone());
                waiting.len() >= gate.want
            };
            if full {
                gate.reached.send_replace(true);
            }
            let mut rx = gate.reached.subscribe();
            let _ = tokio::time::timeout(gate.timeout, rx.wait_for(|r| *r)).await;
        }
    }

    let response = next.run(request).await;
    let cdn = f.redirect_lfs_to.lock().unwrap().clone();
    if let Some(cdn) = cdn.filter(|_| response.headers().contains_key("x-linked-etag")) {
        // The Hub's answer for an LFS file: its metadata, and the CDN's address.
        let mut r = StatusCode::FOUND.into_response();
        for name in ["x-repo-commit", "x-linked-etag", "x-linked-size", "etag"] {
            if let Some(v) = response.headers().get(name) {
                r.headers_mut().insert(name, v.clone());
            }
        }
        let location = format!("{cdn}{}", uri.path_and_query().map_or("/", |p| p.as_str()));
        r.headers_mut()
            .insert(header::LOCATION, HeaderValue::from_str(&location).unwrap());
        return r;
    }
    if !seen.is_body() || !response.status().is_success() {
        return response;
    }
    let drop_after = {
        let mut drops = f.drops.lock().unwrap();
        match drops.get_mut(&seen.file) {
            Some(d) if d.skip > 0 => {
                d.skip -= 1;
                None
            }
            Some(d) if d.times > 0 => {
                d.times -= 1;
                Some(d.bytes)
            }
            _ => None,
        }
    };
    let corrupt = Faults::take(&f.corrupt, &seen.file);
    let link = f.link.lock().unwrap().clone();
    let (parts, body) = response.into_parts();
    let body = shape(
        body,
        seen.file,
        in_flight,
        drop_after,
        corrupt,
        throttle.map(|t| t.0),
        link,
    );
    Response::from_parts(parts, body)
}

pub(super) struct Shaping {
    pub(super) inner: axum::body::BodyDataStream,
    pub(super) in_flight: InFlight,
    pub(super) pending: Bytes,
    pub(super) sent: u64,
    pub(super) start: tokio::time::Instant,
    pub(super) done: bool,
}

/// Re-streams a body in small pieces: counted, optionally capped in rate,
/// corrupted, or cut off (which makes hyper drop the connection mid-body).
pub(super) fn shape(
    body: Body,
    file: String,
    in_flight: InFlight,
    drop_after: Option<u64>,
    mut corrupt: bool,
    rate: Option<f64>,
    link: Option<Arc<Link>>,
) -> Body {
    let state = Shaping {
        inner: body.into_data_stream(),
        in_flight,
        pending: Bytes::new(),
        sent: 0,
        start: tokio::time::Instant::now(),
        done: false,
    };
    let stream = futures::stream::unfold(state, move |mut st| {
        let file = file.clone();
        let link = link.clone();
        let corrupt_now = std::mem::take(&mut corrupt);
        async move {
            if st.done {
                return None;
            }
            if st.pending.is_empty() {
                match st.inner.next().await {
                    Some(Ok(b)) => st.pending = b,
                    Some(Err(e)) => {
                        st.done = true;
                        return Some((Err(std::io::Error::other(e)), st));
                    }
                    None => return None,
                }
            }
            let n = st.pending.len().min(64 << 10);
            let mut piece = st.pending.split_to(n);
            if drop_after.is_some_and(|limit| st.sent + n as u64 > limit) {
                st.done = true;
                return Some((
                    Err(std::io::Error::other("injected: connection dropped")),
                    st,
                ));
            }
            if corrupt_now {
                let mut m = BytesMut::from(&piece[..]);
                m[0] ^= 0xff;
                piece = m.freeze();
            }
            let mut due = st.start;
            if let Some(rate) = rate {
                due += Duration::from_secs_f64((st.sent + n as u64) as f64 / rate);
            }
            if let Some(link) = link {
                due = due.max(link.reserve(n));
            }
            tokio::time::sleep_until(due).await;
            st.sent += n as u64;
            *st.in_flight.0.sent.lock().unwrap().entry(file).or_default() += n as u64;
            Some((Ok(piece), st))
        }
    });
    Body::from_stream(stream)
}

/// `{"requests": n, "by_file": {path: n}}`, readable from any origin.
pub(super) fn stats_response(stats: &Stats) -> Response {
    let mut by_file: HashMap<String, usize> = HashMap::new();
    for seen in stats.seen.lock().unwrap().iter() {
        *by_file.entry(seen.file.clone()).or_default() += 1;
    }
    let body = serde_json::json!({ "requests": stats.requests(), "by_file": by_file });
    let mut r = axum::Json(body).into_response();
    r.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    r
}
