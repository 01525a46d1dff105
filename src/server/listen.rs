//! The accept loop of `schnell serve` and `schnell mirror`: a cap on open
//! connections, a header timeout and an idle timeout per connection, and a
//! graceful shutdown that waits a bounded time.
//!
//! `axum::serve` has none of these: idle or slow sockets stay open forever
//! (and file descriptors run out), and its graceful shutdown waits for every
//! connection, however slow the client.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use axum::Router;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How connections are accepted, timed out and shut down.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Connections open at once. When all are taken, a new one closes the
    /// connection idle the longest (no request in flight); if every one is
    /// busy, it waits in the kernel's queue until one ends.
    pub max_connections: usize,
    /// A client has this long from the first byte of a request to the end of
    /// its headers, and again this long to send its body.
    pub header_timeout: Duration,
    /// A connection with no request in flight is closed after this long.
    pub idle_timeout: Duration,
    /// On shutdown, requests in flight get this long to finish; then their
    /// connections are closed (which cancels their jobs).
    pub shutdown_grace: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            max_connections: default_max_connections(),
            header_timeout: Duration::from_secs(30),
            // nginx's client keepalive_timeout, and above its upstream one (60 s),
            // so that a proxy in front closes idle connections first.
            idle_timeout: Duration::from_secs(75),
            // Below Kubernetes' 30 s between SIGTERM and SIGKILL.
            shutdown_grace: Duration::from_secs(25),
        }
    }
}

/// Half the process's soft limit on open files (the rest is for model files,
/// downloads and the cache), between 16 and 1024.
pub fn default_max_connections() -> usize {
    const MAX: usize = 1024;
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct it is given.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            let soft = usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX);
            return (soft / 2).clamp(16, MAX);
        }
    }
    MAX
}

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM (how containers are
/// stopped) after this call. The handlers are installed here, not when the
/// future is first polled: a server that already answers requests must not
/// die of a Ctrl-C that arrives before its accept loop got round to polling.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send {
    #[cfg(unix)]
    let unix = {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(int), Ok(term)) => Some((int, term)),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot listen for SIGINT and SIGTERM; only Ctrl-C stops the server");
                None
            }
        }
    };
    async move {
        #[cfg(unix)]
        if let Some((mut int, mut term)) = unix {
            tokio::select! {
                _ = int.recv() => tracing::info!("SIGINT received"),
                _ = term.recv() => tracing::info!("SIGTERM received"),
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting
/// (new connections are refused), lets requests in flight finish for up to
/// [`ServeOptions::shutdown_grace`], closes what is left and returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let options = Arc::new(options);
    let slots = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let registry = Arc::new(Registry::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);

    'accept: loop {
        // Reap finished connections so the set does not grow.
        while tasks.try_join_next().is_some() {}
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) if is_per_connection(&e) => continue,
                Err(e) => {
                    // Out of file descriptors, most likely: make room, and
                    // do not spin.
                    tracing::warn!(error = %e, "accept failed; closing an idle connection");
                    registry.evict_idlest();
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                        _ = &mut shutdown => break 'accept,
                    }
                }
            },
            _ = &mut shutdown => break 'accept,
        };
        let permit = loop {
            if let Ok(permit) = slots.clone().try_acquire_owned() {
                break permit;
            }
            // Full: the connection idle the longest makes room. If every
            // connection is busy, wait for one to end.
            registry.evict_idlest();
            tokio::select! {
                permit = slots.clone().acquire_owned() => break permit.expect("never closed"),
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = &mut shutdown => break 'accept,
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = registry.add();
        let app = app.clone();
        let options = options.clone();
        let registry = registry.clone();
        let stop = stop_rx.clone();
        tasks.spawn(async move {
            serve_connection(stream, app, &conn, &options, stop).await;
            registry.remove(conn.id);
            drop(permit);
        });
    }

    drop(listener);
    let _ = stop_tx.send(true);
    let open = tasks.len();
    if open > 0 {
        tracing::info!(
            open,
            grace = ?options.shutdown_grace,
            "shutting down: no new connections; waiting for requests in flight"
        );
    }
    let drained = tokio::time::timeout(options.shutdown_grace, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            closed = tasks.len(),
            "shutdown grace period over: closing the remaining connections"
        );
        tasks.shutdown().await;
    }
    Ok(())
}

/// Accept errors that concern one connection only.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Why a connection was closed by the server.
#[derive(Debug, Clone, Copy)]
enum Closed {
    Idle,
    HeaderTimeout,
    Evicted,
    /// The client stopped reading its response.
    WriteStalled,
}

async fn serve_connection(
    stream: TcpStream,
    app: Router,
    conn: &Arc<Conn>,
    options: &ServeOptions,
    mut stop: watch::Receiver<bool>,
) {
    let io = TokioIo::new(Tracked {
        io: stream,
        conn: conn.clone(),
    });
    let service_conn = conn.clone();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let guard = Active::start(service_conn.clone());
        let mut app = app.clone();
        async move {
            let response = tower_service::Service::call(&mut app, request.map(Body::new)).await?;
            // The request counts as in flight until its body is sent (or dropped).
            Ok::<Response, Infallible>(response.map(|body| {
                Body::new(Guarded {
                    inner: body,
                    _active: guard,
                })
            }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // Timeouts are the watchdog's (hyper's own one timer cannot tell idle from slow).
    builder.keep_alive(true).header_read_timeout(None);
    let connection = builder.serve_connection(io, service);
    let mut connection = std::pin::pin!(connection);
    let mut stopping = *stop.borrow();
    if stopping {
        connection.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            // The connection first: a request that has arrived starts (and
            // counts as in flight) before the watchdog looks.
            biased;
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            why = watchdog(conn, options) => {
                tracing::debug!(reason = ?why, "closing a connection");
                return;
            }
            changed = stop.changed(), if !stopping => {
                stopping = true;
                if changed.is_ok() {
                    // Idle: closes now. Busy: after the response in flight.
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Resolves when the connection should be closed: idle too long, a request
/// head too slow, evicted to make room, or, with a request in flight, its
/// client no longer reading the response.
async fn watchdog(conn: &Conn, options: &ServeOptions) -> Closed {
    loop {
        let notified = conn.changed.notified();
        let deadline = {
            let state = conn.state.lock().expect("not poisoned");
            if state.active > 0 {
                // In flight: only a client that stopped reading is cut off,
                // after as long as an idle one would be; a slow generation
                // writes nothing and is never at fault.
                state
                    .write_blocked_since
                    .map(|since| (since + options.idle_timeout, Closed::WriteStalled))
            } else if state.evicted {
                return Closed::Evicted;
            } else if let Some(since) = state.head_since {
                Some((since + options.header_timeout, Closed::HeaderTimeout))
            } else {
                Some((state.idle_since + options.idle_timeout, Closed::Idle))
            }
        };
        match deadline {
            None => notified.await,
            Some((at, why)) => {
                if Instant::now() >= at {
                    return why;
                }
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep_until(at) => {}
                }
            }
        }
    }
}

/// Every open connection, so that the accept loop can close an idle one.
#[derive(Default)]
struct Registry {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Conn>>>,
}

impl Registry {
    fn add(&self) -> Arc<Conn> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            id,
            state: Mutex::new(ConnState {
                active: 0,
                idle_since: Instant::now(),
                head_since: None,
                evicted: false,
                write_blocked_since: None,
            }),
            changed: Notify::new(),
        });
        self.open
            .lock()
            .expect("not poisoned")
            .insert(id, conn.clone());
        conn
    }

    fn remove(&self, id: u64) {
        self.open.lock().expect("not poisoned").remove(&id);
    }

    /// Marks for closing the connection with no request in flight that has
    /// been quiet longest (one that never started a request before one in
    /// the middle of sending its headers). Returns whether there was one.
    fn evict_idlest(&self) -> bool {
        let open = self.open.lock().expect("not poisoned");
        let mut best: Option<(&Arc<Conn>, (bool, Instant))> = None;
        for conn in open.values() {
            let state = conn.state.lock().expect("not poisoned");
            if state.active > 0 || state.evicted {
                continue;
            }
            let rank = match state.head_since {
                None => (false, state.idle_since),
                Some(since) => (true, since),
            };
            if best.as_ref().is_none_or(|(_, r)| rank < *r) {
                best = Some((conn, rank));
            }
        }
        match best {
            Some((conn, _)) => {
                let mut state = conn.state.lock().expect("not poisoned");
                // It may have received a request since it was ranked.
                state.evicted = state.active == 0;
                drop(state);
                conn.changed.notify_one();
                true
            }
            None => false,
        }
    }
}

struct Conn {
    id: u64,
    state: Mutex<ConnState>,
    /// Wakes the watchdog when the state changes.
    changed: Notify,
}

struct ConnState {
    /// Requests in flight (received, response not yet fully sent).
    active: usize,
    /// When the last response ended, or the connection opened.
    idle_since: Instant,
    /// When the first byte of the next request arrived.
    head_since: Option<Instant>,
    /// Asked to close to make room for another connection.
    evicted: bool,
    /// Since when the socket has refused more of a response (the client is
    /// not reading); `None` while writes go through.
    write_blocked_since: Option<Instant>,
}

impl Conn {
    fn update(&self, f: impl FnOnce(&mut ConnState)) {
        f(&mut self.state.lock().expect("not poisoned"));
        self.changed.notify_one();
    }
}

/// A request in flight; ends when dropped.
struct Active(Arc<Conn>);

impl Active {
    fn start(conn: Arc<Conn>) -> Self {
        conn.update(|s| {
            s.active += 1;
            s.head_since = None;
            // A request arrived: whatever asked it to make room was too late.
            s.evicted = false;
        });
        Self(conn)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.update(|s| {
            s.active -= 1;
            s.idle_since = Instant::now();
            s.head_since = None;
        });
    }
}

/// A response body that keeps its request counted as in flight.
struct Guarded {
    inner: Body,
    _active: Active,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, noting when the first byte of a request arrives.
struct Tracked {
    io: TcpStream,
    conn: Arc<Conn>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let mut state = self.conn.state.lock().expect("not poisoned");
            if state.active == 0 && state.head_since.is_none() {
                state.head_since = Some(Instant::now());
                drop(state);
                self.conn.changed.notify_one();
            }
        }
        result
    }
}

impl Tracked {
    /// Notes when writes start to block, and that they flow again.
    fn note_write(&self, blocked: bool) {
        let mut state = self.conn.state.lock().expect("not poisoned");
        match (blocked, state.write_blocked_since) {
            (true, None) => {
                state.write_blocked_since = Some(Instant::now());
                drop(state);
                self.conn.changed.notify_one();
            }
            (false, Some(_)) => state.write_blocked_since = None,
            _ => {}
        }
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write(cx, buf);
        self.note_write(result.is_pending());
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.note_write(result.is_pending());
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
