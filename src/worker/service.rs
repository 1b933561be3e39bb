//! The adapter between hyper and the application's tower service: it answers the health path,
//! hands every request the drain handle, and once the drain has begun asks HTTP/1 clients to
//! close the connection.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, HeaderValue};
use http::{Extensions, Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tower::ServiceExt;
use tower::util::Oneshot;

use super::Shared;
use super::activity::{Activity, Answering};
use crate::application::AppService;
use crate::drain::Drain;
use crate::log::access::Entry;

/// The service of one connection.
pub(crate) struct HyperService<S> {
    inner: S,
    shared: &'static Shared,
    /// The connection's requests: HTTP/2 ones are counted so that an idle connection can be
    /// closed, and so that its drain starts with GOAWAY at once instead of lingering.
    activity: Arc<Activity>,
    /// The client, for the access log; `None` on a unix socket.
    peer: Option<SocketAddr>,
}

impl<S> HyperService<S> {
    pub(crate) fn new(
        inner: S,
        shared: &'static Shared,
        activity: Arc<Activity>,
        peer: Option<SocketAddr>,
    ) -> Self {
        Self {
            inner,
            shared,
            activity,
            peer,
        }
    }
}

impl<S: AppService> hyper::service::Service<Request<Incoming>> for HyperService<S> {
    type Response = Response<Either<S::Body, Full<Bytes>>>;
    type Error = S::Error;
    type Future = ResponseFuture<S>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        let http1 = req.version() <= Version::HTTP_11;
        let answering = if http1 {
            self.activity.http1();
            None
        } else {
            Some(self.activity.http2())
        };
        // Only HTTP/1 is asked to close: HTTP/2 forbids the header and drains with GOAWAY.
        let closing = http1.then_some(self.shared);
        // Boxed, so that without an access log the response future stays small.
        let entry = Entry::begin(&req, self.peer).map(Box::new);
        if self.shared.health_path.as_deref() == Some(req.uri().path()) {
            return ResponseFuture::Health {
                response: Some(health(self.shared.healthy())),
                closing,
                entry,
                answering,
            };
        }
        self.shared.count_request();
        let extensions = req.extensions_mut();
        if extensions.is_empty() {
            *extensions = self.shared.extensions.clone();
        } else {
            extensions.insert(self.shared.drain.clone());
        }
        ResponseFuture::App {
            inner: self.inner.clone().oneshot(req),
            closing,
            entry,
            answering,
        }
    }
}

/// Request extensions holding only the drain handle, with room for a few more entries.
///
/// Routers and middleware add their own entries (axum adds three); had the map been sized for
/// the drain handle alone, the fourth would grow it, a second allocation and a rehash on every
/// request. A clone keeps the capacity, so cloning this costs what inserting the handle into an
/// empty map costs, and the entries added later fit.
pub(crate) fn extensions(drain: &Drain) -> Extensions {
    #[derive(Clone)]
    struct Room<const N: usize>;
    let mut extensions = Extensions::new();
    extensions.insert(Room::<0>);
    extensions.insert(Room::<1>);
    extensions.insert(Room::<2>);
    extensions.insert(Room::<3>);
    extensions.clear();
    extensions.insert(drain.clone());
    extensions
}

fn health(healthy: bool) -> Response<Full<Bytes>> {
    let (status, body) = if healthy {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "stopping\n")
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

pin_project! {
    #[project = Projection]
    pub(crate) enum ResponseFuture<S>
    where
        S: AppService,
    {
        App {
            #[pin]
            inner: Oneshot<S, Request<Incoming>>,
            closing: Option<&'static Shared>,
            entry: Option<Box<Entry>>,
            answering: Option<Answering>,
        },
        Health {
            response: Option<Response<Full<Bytes>>>,
            closing: Option<&'static Shared>,
            entry: Option<Box<Entry>>,
            answering: Option<Answering>,
        },
    }
}

impl<S: AppService> Future for ResponseFuture<S> {
    type Output = Result<Response<Either<S::Body, Full<Bytes>>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (mut response, closing, entry, answering) = match self.project() {
            Projection::App {
                inner,
                closing,
                entry,
                answering,
            } => {
                let response = std::task::ready!(inner.poll(cx))?;
                (response.map(Either::Left), closing, entry, answering)
            }
            Projection::Health {
                response,
                closing,
                entry,
                answering,
            } => {
                // Polled again only after it returned Ready, which hyper never does.
                let response = response
                    .take()
                    .expect("health response polled after completion");
                (response.map(Either::Right), closing, entry, answering)
            }
        };
        // The request is answered once its response is produced; its body may still stream.
        drop(answering.take());
        if closing.as_ref().is_some_and(|s| s.drain.is_draining()) {
            // hyper reads this header and closes the connection once the response is written.
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(entry) = entry.take() {
            entry.finish(&response);
        }
        Poll::Ready(Ok(response))
    }
}
