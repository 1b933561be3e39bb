//! The adapter between hyper and the application's tower service: it hands every request the
//! drain handle and, once the drain has begun, asks HTTP/1 clients to close the connection.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::header::{CONNECTION, HeaderValue};
use http::{Request, Response, Version};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tower::ServiceExt;
use tower::util::Oneshot;

use crate::Drain;

#[derive(Clone)]
pub(crate) struct HyperService<S> {
    inner: S,
    drain: Drain,
}

impl<S> HyperService<S> {
    pub(crate) fn new(inner: S, drain: Drain) -> Self {
        Self { inner, drain }
    }
}

impl<S, B> hyper::service::Service<Request<Incoming>> for HyperService<S>
where
    S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = ResponseFuture<S>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        let http1 = req.version() <= Version::HTTP_11;
        req.extensions_mut().insert(self.drain.clone());
        ResponseFuture {
            inner: self.inner.clone().oneshot(req),
            drain: http1.then(|| self.drain.clone()),
        }
    }
}

pin_project! {
    pub(crate) struct ResponseFuture<S>
    where
        S: tower::Service<Request<Incoming>>,
    {
        #[pin]
        inner: Oneshot<S, Request<Incoming>>,
        // Only for HTTP/1: HTTP/2 forbids the Connection header and drains with GOAWAY.
        drain: Option<Drain>,
    }
}

impl<S, B> Future for ResponseFuture<S>
where
    S: tower::Service<Request<Incoming>, Response = Response<B>>,
{
    type Output = Result<Response<B>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = std::task::ready!(this.inner.poll(cx))?;
        if this.drain.as_ref().is_some_and(Drain::is_draining) {
            // hyper reads this header and closes the connection once the response is written.
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        Poll::Ready(Ok(response))
    }
}
