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
    /// `None` for a body that had ended before the application got it, or with no io timeout.
    watch: Option<Watch>,
}

struct Watch {
    arrivals: Watchdog,
    connection: Arc<dyn Connection>,
}

/// The connection a body arrives on, told when the body stalls.
pub(crate) trait Connection: Send + Sync {
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
        let watch =
            (!io_timeout.is_zero() && !http_body::Body::is_end_stream(&inner)).then(|| Watch {
                arrivals: Watchdog::new(io_timeout),
                connection: connection(),
            });
        Self { inner, watch }
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
        let Some(watch) = &mut this.watch else {
            return polled.map_err(Into::into);
        };
        if polled.is_ready() {
            watch.arrivals.progressed();
            return polled.map_err(Into::into);
        }
        std::task::ready!(watch.arrivals.poll_stalled(cx));
        debug!(
            "a request body stopped arriving for {:?}; closing its connection",
            watch.arrivals.timeout()
        );
        watch.connection.body_stalled();
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
