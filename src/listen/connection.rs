//! One connection: hyper's HTTP/1 server, watched for idleness, slow
//! request heads and clients that stopped reading.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::grace::GraceOver;
use super::options::ServeOptions;
use super::registry::{Active, Conn};
use super::tracked::{Guarded, Tracked};

/// Why a connection was closed by the server.
#[derive(Debug, Clone, Copy)]
enum Closed {
    Idle,
    HeaderTimeout,
    Evicted,
    /// The client stopped reading its response.
    WriteStalled,
}

/// Serves one connection until it ends, its watchdog closes it, or (after
/// `stop`) its response in flight is sent.
pub(super) async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    conn: &Arc<Conn>,
    options: &ServeOptions,
    mut stop: watch::Receiver<bool>,
    grace: GraceOver,
) {
    let io = TokioIo::new(Tracked {
        io: stream,
        conn: conn.clone(),
    });
    let service_conn = conn.clone();
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        let guard = Active::start(service_conn.clone());
        let mut app = app.clone();
        request.extensions_mut().insert(ConnectInfo(peer));
        request.extensions_mut().insert(grace.clone());
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
