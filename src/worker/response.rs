//! The response body as hyper sees it: the application's, carrying its request's
//! [`InFlight`] guard, so that the connection knows when the response has been sent whole (an
//! idle keep-alive connection may then be shed) and, over HTTP/2, when a frame waits on the
//! client's flow-control window (see [`super::flow`]).

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::activity::InFlight;

pin_project! {
    pub(crate) struct ResponseBody<B> {
        #[pin]
        inner: B,
        // Dropped with the body, or once it has ended.
        in_flight: Option<InFlight>,
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn new(inner: B, in_flight: InFlight) -> Self {
        Self {
            inner,
            in_flight: Some(in_flight),
        }
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        if let Some(in_flight) = this.in_flight.as_mut() {
            in_flight.polled();
        }
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(_))) => {
                if let Some(in_flight) = this.in_flight.as_mut() {
                    in_flight.handed();
                }
            }
            Poll::Ready(None | Some(Err(_))) => *this.in_flight = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
