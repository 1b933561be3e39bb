//! The request body an application reads: hyper's, bounded by the io timeout while the
//! application waits for it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use tracing::debug;

use super::BoxError;
use crate::stall::Watchdog;

/// The body of a request, as the application's service receives it (`Request<RequestBody>`).
///
/// It is hyper's body, with one addition: while the application waits for it, the body may go
/// at most `--io-timeout` (60 s by default) without a byte arriving. Past that, reading it
/// fails with an [`std::io::Error`] of kind [`TimedOut`](std::io::ErrorKind::TimedOut), and
/// the connection is closed once the application has answered (nginx's `client_body_timeout`).
/// Time the application spends not reading does not count, and neither does a body it never
/// reads.
pub struct RequestBody {
    inner: Incoming,
    /// `None` once the body has ended, and for one that had ended before the application got
    /// it.
    connection: Option<Arc<dyn Connection>>,
    /// `None` with no io timeout, and for a body that had ended before the application got it.
    arrivals: Option<Watchdog>,
}

/// The connection a body arrives on, told when the body begins, ends and stalls.
pub(crate) trait Connection: Send + Sync {
    /// A body that has not ended yet was handed to the application.
    fn body_begun(&self);
    /// That body was read to its end. Never called for one dropped before its end.
    fn body_ended(&self);
    /// The body stopped arriving for the io timeout: the connection is not to be reused.
    fn body_stalled(&self);
}

impl RequestBody {
    /// Wraps hyper's body; `io_timeout` zero turns the watch off.
    pub(crate) fn new(
        inner: Incoming,
        io_timeout: Duration,
        connection: impl FnOnce() -> Arc<dyn Connection>,
    ) -> Self {
        // A request without a body (most GETs) costs no reference to the connection.
        if http_body::Body::is_end_stream(&inner) {
            return Self {
                inner,
                connection: None,
                arrivals: None,
            };
        }
        let connection = connection();
        connection.body_begun();
        Self {
            inner,
            connection: Some(connection),
            arrivals: (!io_timeout.is_zero()).then(|| Watchdog::new(io_timeout)),
        }
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            _ => false,
        };
        if ended && let Some(connection) = this.connection.take() {
            connection.body_ended();
        }
        let (Some(arrivals), Some(connection)) = (&mut this.arrivals, &this.connection) else {
            return polled.map_err(Into::into);
        };
        if polled.is_ready() {
            arrivals.progressed();
            return polled.map_err(Into::into);
        }
        std::task::ready!(arrivals.poll_stalled(cx));
        debug!(
            "a request body stopped arriving for {:?}; closing its connection",
            arrivals.timeout()
        );
        connection.body_stalled();
        Poll::Ready(Some(Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the request body stopped arriving for the io timeout",
        )
        .into())))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestBody")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}
