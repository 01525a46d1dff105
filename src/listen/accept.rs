//! The accept loop: a slot per connection, the idlest evicted when full,
//! and a bounded graceful shutdown.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use super::connection::serve_connection;
use super::grace::GraceOver;
use super::options::ServeOptions;
use super::registry::Registry;

/// A request still running when the grace period is over has this long to
/// answer (a stream its last event, see [`GraceOver`]) before its
/// connection is closed.
const LAST_WORDS: Duration = Duration::from_secs(2);

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting
/// (new connections are refused), lets requests in flight finish for up to
/// [`ServeOptions::shutdown_grace`], closes what is left and returns.
///
/// Each request carries its peer's address (axum's `ConnectInfo`) and a
/// [`GraceOver`] in its extensions.
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
    let (grace_tx, grace_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);

    'accept: loop {
        // Reap finished connections so the set does not grow.
        while tasks.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
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
        let grace = GraceOver(grace_rx.clone());
        tasks.spawn(async move {
            serve_connection(stream, peer, app, &conn, &options, stop, grace).await;
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
            open = tasks.len(),
            "shutdown grace period over: requests still running get their last words, then their connections close"
        );
        let _ = grace_tx.send(true);
        let answered = tokio::time::timeout(LAST_WORDS, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if answered.is_err() {
            tasks.shutdown().await;
        }
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
