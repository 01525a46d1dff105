//! What a request can know of a shutdown: that its grace period has run
//! out, so that it can say so to its client before its connection closes.

use tokio::sync::watch;

/// In every request's extensions under [`serve`](super::serve): resolves
/// when a shutdown's grace period has run out. A handler still running then
/// has a moment to answer (a stream its last event) before its connection
/// is closed.
#[derive(Clone, Debug)]
pub struct GraceOver(pub(super) watch::Receiver<bool>);

impl GraceOver {
    /// Resolves when the grace period runs out; never, if the server stops
    /// otherwise (its connections are gone with it then).
    pub async fn wait(mut self) {
        if self.0.wait_for(|over| *over).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// [`GraceOver::wait`] for a request that may not have come through
    /// [`serve`](super::serve) (a router served otherwise): then never.
    pub fn of(extensions: &axum::http::Extensions) -> impl std::future::Future<Output = ()> {
        let grace = extensions.get::<GraceOver>().cloned();
        async move {
            match grace {
                Some(grace) => grace.wait().await,
                None => std::future::pending().await,
            }
        }
    }
}
