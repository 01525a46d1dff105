//! The signals that stop a server: SIGINT and SIGTERM.

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
