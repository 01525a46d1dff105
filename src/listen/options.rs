//! How the accept loop treats connections: its cap and timeouts.

use std::time::Duration;

/// How connections are accepted, timed out and shut down. Build it from
/// [`ServeOptions::default`] and its setters: more settings may come.
#[derive(Clone, Debug)]
#[non_exhaustive]
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

impl ServeOptions {
    /// Sets [`ServeOptions::max_connections`].
    pub fn max_connections(mut self, max_connections: usize) -> Self {
        self.max_connections = max_connections;
        self
    }

    /// Sets [`ServeOptions::header_timeout`].
    pub fn header_timeout(mut self, header_timeout: Duration) -> Self {
        self.header_timeout = header_timeout;
        self
    }

    /// Sets [`ServeOptions::idle_timeout`].
    pub fn idle_timeout(mut self, idle_timeout: Duration) -> Self {
        self.idle_timeout = idle_timeout;
        self
    }

    /// Sets [`ServeOptions::shutdown_grace`].
    pub fn shutdown_grace(mut self, shutdown_grace: Duration) -> Self {
        self.shutdown_grace = shutdown_grace;
        self
    }
}
