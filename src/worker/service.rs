//! The adapter between hyper and the application's tower service: it refuses requests over the
//! limits, answers the health path, hands every request the drain handle, and once the drain has
//! begun asks HTTP/1 clients to close the connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, FORWARDED, HOST, HeaderValue, TRANSFER_ENCODING};
use http::{Extensions, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tower::ServiceExt;
use tower::util::Oneshot;

use super::Shared;
use super::activity::{Activity, InFlight};
use super::forwarded::{self, X_FORWARDED_FOR, X_FORWARDED_PROTO};
use super::response::ResponseBody;
use crate::application::ClientAddr;
use crate::application::{AppService, Connection, FileSender, RequestBody};
use crate::config::Config;
use crate::drain::Drain;
use crate::log::access::{Entry, Session};
use crate::process::metrics::{Measured, Meter};

/// The service of one connection.
pub(crate) struct HyperService<S> {
    inner: S,
    shared: &'static Shared,
    /// The connection's requests: HTTP/2 ones are counted so that an idle connection can be
    /// closed, and so that its drain starts with GOAWAY at once instead of lingering.
    activity: Arc<Activity>,
    /// The connection's client, before what forwarding headers may say of each request.
    client: ClientAddr,
    /// Whether the connection's peer is a trusted proxy, whose forwarding headers are read.
    speaker_trusted: bool,
    /// The connection's TLS session, when it is over TLS and there is an access log.
    session: Option<Arc<Session>>,
    /// Given to HTTP/1 requests when the connection can send files as they are (no TLS).
    sender: Option<FileSender>,
}

impl<S> HyperService<S> {
    pub(crate) fn new(
        inner: S,
        shared: &'static Shared,
        activity: Arc<Activity>,
        client: ClientAddr,
        session: Option<Arc<Session>>,
        sender: Option<FileSender>,
    ) -> Self {
        let speaker_trusted = shared.trusted.trusts(client.speaker().map(|a| a.ip()));
        Self {
            inner,
            shared,
            activity,
            client,
            speaker_trusted,
            session,
            sender,
        }
    }

    /// The request's client: the connection's, or what its forwarding headers say when the
    /// one who sent them is a trusted proxy.
    fn client<B>(&self, req: &Request<B>) -> ClientAddr {
        let headers = req.headers();
        // One pass over the names, cheaper than a lookup (a hash) of each of the three.
        let forwarding = || {
            headers.keys().any(|name| {
                name == FORWARDED || name == X_FORWARDED_FOR || name == X_FORWARDED_PROTO
            })
        };
        if !self.speaker_trusted || !forwarding() {
            return self.client.clone();
        }
        let told = forwarded::told(headers, &self.shared.trusted);
        let mut client = self.client.clone();
        if let Some(addr) = told.client {
            client.client = Some(addr);
            client.forwarded = true;
        }
        client.scheme = told.scheme;
        client
    }
}

impl<S: AppService> hyper::service::Service<Request<Incoming>> for HyperService<S> {
    type Response = Response<ResponseBody<Either<S::Body, Full<Bytes>>>>;
    type Error = S::Error;
    type Future = ResponseFuture<S>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let metered = self.shared.meter.as_ref().map(Meter::request);
        let http1 = req.version() <= Version::HTTP_11;
        let in_flight = Some(if http1 {
            self.activity.http1()
        } else {
            self.activity.http2()
        });
        // Only HTTP/1 is asked to close: HTTP/2 forbids the header and drains with GOAWAY.
        let closing = http1.then_some(self.shared);
        // Boxed, so that without an access log the response future stays small.
        let client = self.client(&req);
        let entry = Entry::begin(&req, client.addr(), self.session.as_ref()).map(Box::new);
        if let Some(status) = self.shared.limits.refusal(&req) {
            return ResponseFuture::Own {
                response: Some(refused(status, http1)),
                closing,
                entry,
                in_flight,
                metered,
            };
        }
        if self.shared.health_path.as_deref() == Some(req.uri().path()) {
            return ResponseFuture::Own {
                response: Some(health(self.shared.healthy())),
                closing,
                entry,
                in_flight,
                metered,
            };
        }
        self.shared.count_request();
        let mut req = req.map(|body| {
            RequestBody::new(body, self.shared.io_timeout, || {
                Arc::clone(&self.activity) as Arc<dyn Connection>
            })
        });
        let extensions = req.extensions_mut();
        if extensions.is_empty() {
            *extensions = self.shared.extensions.clone();
        } else {
            extensions.insert(self.shared.drain.clone());
        }
        #[cfg(feature = "axum")]
        if let Some(addr) = client.addr() {
            extensions.insert(axum::extract::ConnectInfo(addr));
        }
        extensions.insert(client);
        // HTTP/2 frames every body itself: a file's bytes cannot go to the socket as they are.
        if let Some(sender) = self.sender.as_ref().filter(|_| http1) {
            extensions.insert(sender.clone());
        }
        ResponseFuture::App {
            inner: self.inner.clone().oneshot(req),
            closing,
            entry,
            in_flight,
            metered,
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
    extensions.insert(Room::<4>);
    extensions.insert(Room::<5>);
    extensions.clear();
    extensions.insert(drain.clone());
    extensions
}

/// What a request may hold, checked before it reaches the application (see
/// `docs/security.md`, "Request limits"). hyper bounds the whole head and, past its own
/// default, the number of fields (`protocols`); what it does not check is checked here.
pub(crate) struct Limits {
    /// Longest HTTP/1 request line, in bytes without the line end; 0 for no limit.
    line: usize,
    fields: usize,
    /// Longest field, name plus value, in bytes; 0 for no limit.
    field_size: usize,
}

impl Limits {
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            line: config.limit_request_line,
            fields: config.limit_request_fields,
            field_size: config.limit_request_field_size,
        }
    }

    /// The status `req` is refused with, or `None` when it may reach the application.
    fn refusal<B>(&self, req: &Request<B>) -> Option<StatusCode> {
        let headers = req.headers();
        let http1 = req.version() <= Version::HTTP_11;
        if http1 && self.line != 0 && request_line_len(req) > self.line {
            return Some(StatusCode::URI_TOO_LONG);
        }
        // `len` counts every value, so a repeated field counts each time, as on the wire.
        if headers.len() > self.fields {
            return Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        }
        // One pass over the fields, cheaper than a lookup (a hash) of each name it looks for.
        let (mut hosts, mut codings) = (0, 0);
        for (name, value) in headers {
            if self.field_size != 0 && name.as_str().len() + value.len() > self.field_size {
                return Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
            }
            if name == HOST {
                hosts += 1;
            } else if name == TRANSFER_ENCODING {
                codings += 1;
            }
        }
        if http1 {
            // RFC 9112: an HTTP/1.1 request has exactly one Host (HTTP/1.0 may have none), and
            // a request with two Hosts or two Transfer-Encodings may be read one way by a
            // proxy in front and another way here, which lets a request be smuggled past it.
            let missing = hosts == 0 && req.version() == Version::HTTP_11;
            if missing || hosts > 1 || codings > 1 {
                return Some(StatusCode::BAD_REQUEST);
            }
        }
        None
    }
}

/// The length of an HTTP/1 request line as it came: hyper's parser (httparse) takes exactly one
/// space between method, target and version, and the version is `HTTP/1.0` or `HTTP/1.1`.
fn request_line_len<B>(req: &Request<B>) -> usize {
    const VERSION: usize = "HTTP/1.1".len();
    req.method().as_str().len() + 1 + target_len(req.uri()) + 1 + VERSION
}

/// The length of a request target as sent: origin form (`/p?q`), absolute form
/// (`http://host/p?q`), authority form (`host:443`) or `*`. A fragment, which no client sends,
/// is not kept by `Uri` and so not counted.
fn target_len(uri: &Uri) -> usize {
    let scheme = uri.scheme_str().map_or(0, |s| s.len() + "://".len());
    let authority = uri.authority().map_or(0, |a| a.as_str().len());
    let path = uri.path_and_query().map_or(0, |p| p.as_str().len());
    scheme + authority + path
}

/// The answer to a refused request; an HTTP/1 connection is closed after it, since what
/// follows on it cannot be trusted to be framed as the refused request said.
fn refused(status: StatusCode, http1: bool) -> Response<Full<Bytes>> {
    let reason = status.canonical_reason().unwrap_or("refused");
    let mut response = Response::new(Full::new(Bytes::from(format!("{reason}\n"))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if http1 {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
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
            inner: Oneshot<S, Request<RequestBody>>,
            closing: Option<&'static Shared>,
            entry: Option<Box<Entry>>,
            // Taken into the response body once the response is produced.
            in_flight: Option<InFlight>,
            metered: Option<Measured>,
        },
        /// A response prefork gives itself: the health path's, or a refusal.
        Own {
            response: Option<Response<Full<Bytes>>>,
            closing: Option<&'static Shared>,
            entry: Option<Box<Entry>>,
            in_flight: Option<InFlight>,
            metered: Option<Measured>,
        },
    }
}

impl<S: AppService> Future for ResponseFuture<S> {
    type Output = Result<Response<ResponseBody<Either<S::Body, Full<Bytes>>>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Taken apart once and put together once: each `Response::map` moves the whole head.
        let (mut parts, body, closing, entry, in_flight, metered) = match self.project() {
            Projection::App {
                inner,
                closing,
                entry,
                in_flight,
                metered,
            } => {
                let (parts, body) = std::task::ready!(inner.poll(cx))?.into_parts();
                (
                    parts,
                    Either::Left(body),
                    closing,
                    entry,
                    in_flight,
                    metered,
                )
            }
            Projection::Own {
                response,
                closing,
                entry,
                in_flight,
                metered,
            } => {
                // Polled again only after it returned Ready, which hyper never does.
                let (parts, body) = response
                    .take()
                    .expect("own response polled after completion")
                    .into_parts();
                (
                    parts,
                    Either::Right(body),
                    closing,
                    entry,
                    in_flight,
                    metered,
                )
            }
        };
        if let Some(metered) = metered.take() {
            metered.answered(parts.status.as_u16());
        }
        // Polled again only after it returned Ready, which hyper never does.
        let mut in_flight = in_flight
            .take()
            .expect("response future polled after completion");
        in_flight.answered();
        if closing.as_ref().is_some_and(|s| s.drain.is_draining()) {
            // hyper reads this header and closes the connection once the response is written.
            parts
                .headers
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(entry) = entry.take() {
            entry.finish(&parts);
        }
        let body = ResponseBody::new(body, in_flight);
        Poll::Ready(Ok(Response::from_parts(parts, body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_target_is_measured_as_sent() {
        for target in [
            "/",
            "/a/b?c=d&e",
            "http://example.com:8080/p?q",
            "example.com:443",
            "*",
        ] {
            let uri: Uri = target.parse().unwrap();
            assert_eq!(target_len(&uri), target.len(), "{target}");
        }
    }

    #[test]
    fn a_request_line_counts_method_target_version_and_two_spaces() {
        let req = Request::get("/abc").body(()).unwrap();
        assert_eq!(request_line_len(&req), "GET /abc HTTP/1.1".len());
    }
}
