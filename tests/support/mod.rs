//! A test Hub: `schnell::mirror` on 127.0.0.1 with fault injection and
//! counters layered on top. Test code only; the benchmark shares it.
#![allow(dead_code)]

pub mod server;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use schnell::mirror::Mirror;
use tokio::sync::{oneshot, watch};

/// What the server saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub file: String,
    pub range: Option<String>,
    /// The `Authorization` header, as received.
    pub authorization: Option<String>,
}

impl Seen {
    /// A request for content, not a HEAD (nor hf-hub's one-byte metadata probe,
    /// which the benchmark's old way makes).
    pub fn is_body(&self) -> bool {
        self.method == Method::GET && self.range.as_deref() != Some("bytes=0-0")
    }
}

pub struct Stats {
    pub seen: Mutex<Vec<Seen>>,
    /// Body bytes actually sent, per file.
    pub sent: Mutex<HashMap<String, u64>>,
    /// Requests whose response has not finished (or been dropped) yet.
    in_flight: watch::Sender<usize>,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            seen: Mutex::default(),
            sent: Mutex::default(),
            in_flight: watch::channel(0).0,
        }
    }
}

/// Counts a request as in flight until dropped.
struct InFlight(Arc<Stats>);

impl InFlight {
    fn new(stats: Arc<Stats>) -> Self {
        stats.in_flight.send_modify(|n| *n += 1);
        Self(stats)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.send_modify(|n| *n -= 1);
    }
}

impl Stats {
    /// Waits until every response the server started has ended (one whose
    /// client went away may still be winding down), so that a test does not
    /// count it in its next phase.
    pub async fn quiescent(&self) {
        let mut rx = self.in_flight.subscribe();
        rx.wait_for(|n| *n == 0).await.unwrap();
    }

    pub fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
    pub fn body_requests(&self, file: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.file == file && s.is_body())
            .count()
    }
    /// The byte ranges `[start, end)` that content requests asked for (one
    /// without a `Range` asked for everything).
    pub fn body_ranges(&self) -> Vec<(u64, u64)> {
        let parse = |r: &str| {
            let (a, b) = r.strip_prefix("bytes=")?.split_once('-')?;
            Some((a.parse().ok()?, b.parse::<u64>().ok()? + 1))
        };
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.is_body())
            .map(|s| s.range.as_deref().and_then(parse).unwrap_or((0, u64::MAX)))
            .collect()
    }
    pub fn sent(&self, file: &str) -> u64 {
        self.sent.lock().unwrap().get(file).copied().unwrap_or(0)
    }
    pub fn reset(&self) {
        self.seen.lock().unwrap().clear();
        self.sent.lock().unwrap().clear();
    }
}

/// Holds content requests until `want` different files are waiting at once.
/// Reaching it proves those downloads overlapped, whatever the timing.
pub struct Gate {
    want: usize,
    waiting: Mutex<HashSet<String>>,
    reached: watch::Sender<bool>,
    timeout: Duration,
}

impl Gate {
    pub fn reached(&self) -> bool {
        *self.reached.borrow()
    }
}

pub struct BreakPlan {
    skip: usize,
    bytes: u64,
    times: usize,
}

#[derive(Default)]
pub struct Faults {
    /// The next N requests answer 503.
    pub fail_next: AtomicUsize,
    pub retry_after: Mutex<Option<String>>,
    /// Per file: the next N requests answer 503, with this `Retry-After`.
    pub fail_file: Mutex<HashMap<String, (usize, Option<String>)>>,
    /// LFS files answer with a redirect to this other server (a CDN), as the
    /// Hub does: the Hub's metadata headers, and `Location` on another origin.
    pub redirect_lfs_to: Mutex<Option<String>>,
    /// Emulates a gated repo: 401 GatedRepo without a token, 403 with another.
    pub require_token: Mutex<Option<String>>,
    /// Per file: break connections mid-body.
    pub drops: Mutex<HashMap<String, BreakPlan>>,
    /// Per file: flip a byte in this many responses.
    pub corrupt: Mutex<HashMap<String, usize>>,
    /// Per-response bandwidth cap in bytes/s, and latency before each answer.
    pub throttle: Mutex<Option<(f64, Duration)>>,
    /// A bandwidth cap shared by every response: the link.
    pub link: Mutex<Option<Arc<Link>>>,
    pub gate: Mutex<Option<Arc<Gate>>>,
}

impl Faults {
    pub fn fail_next(&self, n: usize, retry_after: Option<&str>) {
        *self.retry_after.lock().unwrap() = retry_after.map(str::to_string);
        self.fail_next.store(n, Ordering::SeqCst);
    }
    /// The next `n` requests for `file` answer 503 (0 clears it).
    pub fn fail_file(&self, file: &str, n: usize, retry_after: Option<&str>) {
        self.fail_file
            .lock()
            .unwrap()
            .insert(file.to_string(), (n, retry_after.map(str::to_string)));
    }
    /// Redirects LFS files to `cdn`, another origin serving the same files.
    pub fn redirect_lfs_to(&self, cdn: &str) {
        *self.redirect_lfs_to.lock().unwrap() = Some(cdn.trim_end_matches('/').to_string());
    }
    /// Breaks the next `times` content responses for `file` after `bytes` bytes.
    pub fn drop_after(&self, file: &str, bytes: u64, times: usize) {
        self.drop_nth(file, 0, bytes, times);
    }
    /// Lets `skip` content responses for `file` through whole, then breaks
    /// `times` of them after `bytes` bytes.
    pub fn drop_nth(&self, file: &str, skip: usize, bytes: u64, times: usize) {
        self.drops
            .lock()
            .unwrap()
            .insert(file.to_string(), BreakPlan { skip, bytes, times });
    }
    pub fn corrupt(&self, file: &str, times: usize) {
        self.corrupt.lock().unwrap().insert(file.to_string(), times);
    }
    pub fn throttle(&self, bytes_per_sec: f64, latency: Duration) {
        *self.throttle.lock().unwrap() = Some((bytes_per_sec, latency));
    }
    /// Caps all responses together at `bytes_per_sec`, as one link would.
    pub fn link(&self, bytes_per_sec: f64) {
        *self.link.lock().unwrap() = Some(Arc::new(Link {
            rate: bytes_per_sec,
            free_at: Mutex::new(tokio::time::Instant::now()),
        }));
    }
    pub fn gate(&self, want: usize, timeout: Duration) -> Arc<Gate> {
        let gate = Arc::new(Gate {
            want,
            waiting: Mutex::default(),
            reached: watch::channel(false).0,
            timeout,
        });
        *self.gate.lock().unwrap() = Some(gate.clone());
        gate
    }

    fn take(map: &Mutex<HashMap<String, usize>>, file: &str) -> bool {
        let mut map = map.lock().unwrap();
        match map.get_mut(file) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }
}

/// A bandwidth cap shared by all responses: each piece reserves its time on
/// the link, first come first served, and is sent when that time has passed.
pub struct Link {
    rate: f64,
    free_at: Mutex<tokio::time::Instant>,
}

impl Link {
    fn reserve(&self, bytes: usize) -> tokio::time::Instant {
        let mut free_at = self.free_at.lock().unwrap();
        let start = (*free_at).max(tokio::time::Instant::now());
        *free_at = start + Duration::from_secs_f64(bytes as f64 / self.rate);
        *free_at
    }
}

#[derive(Clone)]
struct Shared {
    faults: Arc<Faults>,
    stats: Arc<Stats>,
}

/// The mirror in its own thread and runtime, so that a test's runtime (a
/// current-thread one, say) measures only the client.
pub struct TestHub {
    pub addr: SocketAddr,
    pub endpoint: String,
    pub faults: Arc<Faults>,
    pub stats: Arc<Stats>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
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
fn file_of(uri_path: &str) -> String {
    let mut parts = uri_path.splitn(6, '/');
    match (parts.nth(3), parts.nth(1)) {
        (Some("resolve"), Some(path)) => path.to_string(),
        _ => uri_path.to_string(),
    }
}

async fn inject(State(s): State<Shared>, request: Request, next: Next) -> Response {
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

struct Shaping {
    inner: axum::body::BodyDataStream,
    in_flight: InFlight,
    pending: Bytes,
    sent: u64,
    start: tokio::time::Instant,
    done: bool,
}

/// Re-streams a body in small pieces: counted, optionally capped in rate,
/// corrupted, or cut off (which makes hyper drop the connection mid-body).
fn shape(
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

/// Writes `len` bytes of seeded pseudo-random data.
pub fn write_random(path: &Path, len: usize, seed: u64) {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; len];
    rng.fill_bytes(&mut data);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

/// Tiny random-weight FLUX models, written once per test binary (read-only)
/// and removed when it exits.
pub fn tiny_models() -> &'static Path {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    // A static is never dropped, so a `TempDir` in one would never be
    // removed: each run of each test binary left 62 MB in the temp folder.
    extern "C" fn remove() {
        if let Some(dir) = DIR.get() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        // SAFETY: `remove` is a plain function that only reads a static
        // set before it is registered.
        unsafe { libc::atexit(remove) };
        schnell::dev::write_tiny_models(&dir).unwrap();
        dir
    })
}

/// A private copy of the tiny models, for tests that break a file.
pub fn tiny_copy() -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    for entry in walkdir::WalkDir::new(tiny_models()) {
        let entry = entry.unwrap();
        let to = copy
            .path()
            .join(entry.path().strip_prefix(tiny_models()).unwrap());
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&to).unwrap();
        } else {
            std::fs::copy(entry.path(), &to).unwrap();
        }
    }
    copy
}

/// A task ticking every 5 ms on the current runtime, recording the longest gap
/// between ticks: any blocking call on that runtime shows up as a gap.
pub struct Heartbeat {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<(Duration, u32)>,
}

impl Heartbeat {
    /// Raises the calling thread's priority (nice -10; needs root, as in CI,
    /// else nothing changes) so that, on a small machine, the scheduler's time
    /// slices for other threads do not pass for stalls. A blocking call on the
    /// runtime still stops the heartbeat. Call on the runtime's thread before
    /// it starts.
    pub fn prioritise_this_thread() {
        unsafe {
            libc::setpriority(libc::PRIO_PROCESS, 0, -10);
        }
    }

    /// Starts ticking; call from inside the runtime under test.
    pub async fn start() -> Self {
        let (stop, mut stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last = tokio::time::Instant::now();
            let (mut worst, mut beats) = (Duration::ZERO, 0u32);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let now = tokio::time::Instant::now();
                        worst = worst.max(now - last);
                        last = now;
                        beats += 1;
                    }
                    // A runtime blocked until the end never ticked: count that gap too.
                    _ = &mut stopped => return (worst.max(tokio::time::Instant::now() - last), beats),
                }
            }
        });
        // Let it take its first tick before the work starts.
        tokio::task::yield_now().await;
        Self { stop, task }
    }

    /// The longest gap, and how many ticks there were.
    pub async fn stop(self) -> (Duration, u32) {
        let _ = self.stop.send(());
        self.task.await.unwrap()
    }
}

/// `{"requests": n, "by_file": {path: n}}`, readable from any origin.
fn stats_response(stats: &Stats) -> Response {
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

/// A small filesystem for disk-full tests: a tmpfs of a given size, mounted
/// in a child process's own user and mount namespaces (`unshare`, so nothing
/// changes for the rest of the machine) and reached from this process through
/// `/proc/<child>/root`. `None` where the system allows no user namespaces.
pub struct SmallDisk {
    child: std::process::Child,
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    pub fn mount(bytes: u64) -> Option<Self> {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("unshare")
            .args(["--user", "--map-root-user", "--mount", "sh", "-c"])
            .arg(r#"mount -t tmpfs -o size="$1" tmpfs "$0" && echo mounted && exec sleep 3600"#)
            .arg(dir.path())
            .arg(bytes.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let mut line = String::new();
        let _ = std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
        if line.trim() != "mounted" {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        let path = std::path::Path::new(&format!("/proc/{}/root", child.id()))
            .join(dir.path().strip_prefix("/").unwrap());
        Some(Self {
            child,
            path,
            _dir: dir,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
