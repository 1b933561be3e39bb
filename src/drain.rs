//! The drain handle: how application code learns that its worker has begun to stop.

use std::future::Future;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

/// Fires once, when the worker serving a request starts to drain (graceful stop, reload,
/// scale-down, or the master going away).
///
/// Every request carries one in its extensions (`req.extensions().get::<Drain>()`, or axum's
/// `Extension<Drain>`), and the application factory receives one through
/// [`WorkerContext::drain`](crate::WorkerContext::drain). Long-lived handlers — websockets,
/// server-sent events, streams — should wait on it and finish: close a websocket with 1001
/// (Going Away), end an event stream. What is still running at the graceful timeout is cut.
///
/// Cloning is cheap (one reference count).
#[derive(Clone, Debug, Default)]
pub struct Drain {
    token: Arc<CancellationToken>,
}

impl Drain {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn start(&self) {
        self.token.cancel();
    }

    /// Whether the drain has begun.
    pub fn is_draining(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes when the drain begins (at once if it already has).
    pub async fn draining(&self) {
        self.token.cancelled().await
    }

    /// Like [`Drain::draining`], but owns what it needs, for a `'static` task or stream.
    pub fn draining_owned(&self) -> impl Future<Output = ()> + Send + use<> {
        let token = Arc::clone(&self.token);
        async move { token.cancelled().await }
    }
}
