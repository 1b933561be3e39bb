//! The drain handle: how application code learns that its worker has begun to stop.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Checked on every response; the token's own check takes a lock.
    started: AtomicBool,
    /// Wakes whoever waits.
    token: CancellationToken,
}

impl Drain {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn start(&self) {
        self.inner.started.store(true, Ordering::Release);
        self.inner.token.cancel();
    }

    /// Whether the drain has begun.
    pub fn is_draining(&self) -> bool {
        self.inner.started.load(Ordering::Acquire)
    }

    /// Completes when the drain begins (at once if it already has).
    pub async fn draining(&self) {
        self.inner.token.cancelled().await
    }

    /// Like [`Drain::draining`], but owns what it needs, for a `'static` task or stream.
    pub fn draining_owned(&self) -> impl Future<Output = ()> + Send + use<> {
        let inner = Arc::clone(&self.inner);
        async move { inner.token.cancelled().await }
    }
}
