//! HTTP/1 or HTTP/2 on one connection, told apart by the HTTP/2 preface (prior knowledge, and
//! over TLS whatever ALPN chose: h2 clients send the preface too), each served by hyper's own
//! connection type.
//!
//! hyper-util's auto builder does the same, but hands its first bytes to hyper in a read of
//! their own. hyper's HTTP/1 reader then holds part of a request head, and since it tops its
//! buffer up to 8 KiB before every read, it grows the buffer to 16 KiB for the next one, for
//! the connection's life: about 5.5 KiB of resident memory per idle keep-alive connection (see
//! docs/performance.md). Here the first bytes come back together with what follows them
//! ([`Prefixed`]), so that a head that arrived whole is whole in hyper's first read.
//!
//! An idle HTTP/1 connection can be parked: hyper's connection is taken apart and only the
//! socket and the service are kept until the next request's first bytes (see [`super::parking`]).

use std::error::Error;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use hyper::body::{Body, Incoming};
use hyper::rt::bounds::Http2ServerConnExec;
use hyper::server::conn::{http1, http2};
use hyper::service::HttpService;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::h2_batch::{self, Batched};
use super::h2_flood::{FloodGuard, Floods, PREFACE};
use super::parking::{Rest, Resting};
use super::prefixed::Prefixed;
use crate::process::metrics::Meter;

type BoxError = Box<dyn Error + Send + Sync>;

/// The settings of both protocols.
pub(crate) struct Builders {
    pub(crate) http1: http1::Builder,
    pub(crate) http2: http2::Builder<TokioExecutor>,
    /// HTTP/2 connections cut for flooding, reported at most once a second.
    pub(crate) floods: Floods,
    /// HTTP/1 connections parked now.
    pub(crate) parked: AtomicUsize,
    /// Where the parked ones are also counted, with `--metrics-bind`.
    pub(crate) meter: Option<Meter>,
}

impl Builders {
    /// Serves `io` with `service`, upgrades (websockets) included.
    pub(crate) fn serve<IO, S>(&'static self, io: IO, service: S) -> Connection<IO, S>
    where
        S: HttpService<Incoming>,
    {
        Connection::Detecting {
            io,
            read: [0; PREFACE.len()],
            filled: 0,
            service,
            builders: self,
        }
    }
}

/// The socket of an HTTP/1 connection, parked or as hyper is given it.
type Http1Io<IO> = Resting<Prefixed<IO>>;

/// hyper's HTTP/2 connection, its writes batched, the client's frames watched for floods.
/// The guard reads the first bytes again from [`Prefixed`], the preface included; HTTP/1
/// connections go without it.
type Http2<IO, S> = http2::Connection<TokioIo<Batched<FloodGuard<Prefixed<IO>>>>, S, TokioExecutor>;

/// One connection, from its first bytes until it closes or is upgraded.
// The HTTP/1 state is where nearly every connection spends its life, and the enum is only as
// large as it: boxing it would add an allocation, not save memory.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Connection<IO, S>
where
    S: HttpService<Incoming>,
{
    /// Reading the first bytes, until they are the whole preface or cannot be.
    Detecting {
        io: IO,
        read: [u8; PREFACE.len()],
        filled: usize,
        service: S,
        builders: &'static Builders,
    },
    Http1 {
        conn: http1::UpgradeableConnection<TokioIo<Http1Io<IO>>, S>,
        /// What hyper last did with the socket: whether the connection can be parked.
        rest: Rest,
        builders: &'static Builders,
    },
    /// An idle HTTP/1 connection without hyper's state, until its next bytes, or until the
    /// connection's task times it out.
    Parked {
        io: Http1Io<IO>,
        service: S,
        builders: &'static Builders,
        _counted: Counted,
    },
    /// Boxed: HTTP/1 connections, the most numerous, do not carry room for it. Its writes are
    /// batched per poll (see [`h2_batch`]).
    Http2(Pin<Box<Http2<IO, S>>>),
    /// Shut down before it sent enough to tell.
    Closed,
}

// The service is never pinned here: it is moved, whole, to hyper, whose connections are
// `Unpin` whatever the service is.
impl<IO: Unpin, S: HttpService<Incoming>> Unpin for Connection<IO, S> {}

impl<IO, S, B> Connection<IO, S>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    B: Body + 'static,
    B::Error: Into<BoxError>,
    TokioExecutor: Http2ServerConnExec<S::Future, B>,
{
    /// Asks the connection to finish what it is doing and close; it must still be polled.
    /// One that has not sent enough to tell its protocol closes at once.
    pub(crate) fn graceful_shutdown(&mut self) {
        match self {
            Connection::Detecting { .. } | Connection::Parked { .. } => {
                *self = Connection::Closed;
            }
            Connection::Http1 { conn, .. } => Pin::new(conn).graceful_shutdown(),
            Connection::Http2(conn) => conn.as_mut().graceful_shutdown(),
            Connection::Closed => {}
        }
    }

    /// Closes a connection idle past its timeout: at once when hyper has nothing left to write
    /// and only waits for bytes, which drops any part of a head it has read, as its header-read
    /// timer would have; gracefully otherwise (GOAWAY for HTTP/2, or an HTTP/1 response still
    /// to be flushed to a slow reader, which the io timeout bounds). It must still be polled.
    pub(crate) fn time_out(&mut self) {
        match self {
            Connection::Http1 { rest, .. } if rest.resting() => *self = Connection::Closed,
            _ => self.graceful_shutdown(),
        }
    }

    /// A connection done detecting, served by hyper as HTTP/2 or HTTP/1.
    fn serving(self, http2: bool) -> Self {
        let Connection::Detecting {
            io,
            read,
            filled,
            service,
            builders,
        } = self
        else {
            return self;
        };
        let read = read[..filled].to_vec();
        if http2 {
            let io = Prefixed::new(read, io);
            let io = TokioIo::new(Batched::new(FloodGuard::new(io, &builders.floods)));
            Connection::Http2(Box::pin(builders.http2.serve_connection(io, service)))
        } else {
            let io = Resting::new(Prefixed::new(read, io), Rest::default());
            Self::http1(io, service, builders)
        }
    }

    fn http1(io: Http1Io<IO>, service: S, builders: &'static Builders) -> Self {
        let rest = io.rest();
        Connection::Http1 {
            conn: builders
                .http1
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades(),
            rest,
            builders,
        }
    }

    /// Parks an HTTP/1 connection that its service found between requests, if hyper rests too
    /// (see [`super::parking`]): hyper's state is dropped until bytes arrive. True if it was
    /// parked.
    pub(crate) fn park(&mut self) -> bool {
        let (conn, builders) = match std::mem::replace(self, Connection::Closed) {
            Connection::Http1 {
                conn,
                rest,
                builders,
            } if rest.resting() => (conn, builders),
            busy => {
                *self = busy;
                return false;
            }
        };
        // `None` only once upgraded, when the connection's future has completed.
        let Some(parts) = conn.into_parts() else {
            return false;
        };
        let mut io = parts.io.into_inner();
        if !parts.read_buf.is_empty() {
            // Part of a next request: hyper serves on, with what it had read put back.
            io.get_mut().put_back(&parts.read_buf);
            *self = Self::http1(io, parts.service, builders);
            return false;
        }
        *self = Connection::Parked {
            io,
            service: parts.service,
            builders,
            _counted: Counted::new(builders),
        };
        true
    }

    /// A parked connection whose next bytes arrived, served by hyper again.
    fn unparked(self) -> Self {
        let Connection::Parked {
            io,
            service,
            builders,
            ..
        } = self
        else {
            return self;
        };
        Self::http1(io, service, builders)
    }
}

/// A parked connection's place in [`Builders::parked`], and in the metrics' gauge.
pub(crate) struct Counted(&'static Builders);

impl Counted {
    fn new(builders: &'static Builders) -> Self {
        builders.parked.fetch_add(1, Ordering::Relaxed);
        if let Some(meter) = &builders.meter {
            meter.parked(true);
        }
        Self(builders)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.parked.fetch_sub(1, Ordering::Relaxed);
        if let Some(meter) = &self.0.meter {
            meter.parked(false);
        }
    }
}

impl<IO, S, B> Future for Connection<IO, S>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    B: Body + 'static,
    B::Error: Into<BoxError>,
    TokioExecutor: Http2ServerConnExec<S::Future, B>,
{
    type Output = Result<(), BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            match this {
                Connection::Detecting {
                    io, read, filled, ..
                } => {
                    let http2 = ready!(poll_preface(io, read, filled, cx))?;
                    *this = std::mem::replace(this, Connection::Closed).serving(http2);
                }
                Connection::Http1 { conn, .. } => {
                    return Pin::new(conn).poll(cx).map_err(Into::into);
                }
                Connection::Parked { io, .. } => {
                    // Room for a request line's start: what follows is read with it by hyper.
                    let mut first = [0; 16];
                    let mut buf = ReadBuf::new(&mut first);
                    if let Poll::Ready(read) = Pin::new(&mut *io).poll_read(cx, &mut buf) {
                        read?;
                        let got = buf.filled().len();
                        if got == 0 {
                            // The client closed it.
                            *this = Connection::Closed;
                            return Poll::Ready(Ok(()));
                        }
                        io.get_mut().put_back(&first[..got]);
                        *this = std::mem::replace(this, Connection::Closed).unparked();
                        continue;
                    }
                    return Poll::Pending;
                }
                Connection::Http2(conn) => {
                    return h2_batch::poll_batched(conn.as_mut(), cx).map_err(Into::into);
                }
                Connection::Closed => return Poll::Ready(Ok(())),
            }
        }
    }
}

/// Reads the first bytes into `read` until they are the whole HTTP/2 preface (true) or cannot
/// be (false: HTTP/1, or a connection that closed early, which hyper's HTTP/1 side ends).
fn poll_preface<IO: AsyncRead + Unpin>(
    io: &mut IO,
    read: &mut [u8; PREFACE.len()],
    filled: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<bool>> {
    while *filled < PREFACE.len() {
        let mut buf = ReadBuf::new(&mut read[*filled..]);
        ready!(Pin::new(&mut *io).poll_read(cx, &mut buf))?;
        let got = buf.filled().len();
        let start = *filled;
        *filled += got;
        if got == 0 || read[start..*filled] != PREFACE[start..*filled] {
            return Poll::Ready(Ok(false));
        }
    }
    Poll::Ready(Ok(true))
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::Full;
    use hyper::service::service_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;
    use crate::worker::Me;

    /// The settings the tests serve with: hyper's defaults, without its header-read timer, as
    /// the worker serves.
    fn builders() -> &'static Builders {
        let mut http1 = http1::Builder::new();
        http1.header_read_timeout(None);
        Box::leak(Box::new(Builders {
            http1,
            http2: http2::Builder::new(TokioExecutor::new()),
            floods: Floods::new(Me(0)),
            parked: AtomicUsize::new(0),
            meter: None,
        }))
    }

    /// Answers with the request's method and path, followed by `pad` dots.
    fn echo(
        pad: usize,
    ) -> impl HttpService<Incoming, ResBody = Full<Bytes>, Error = Infallible, Future: Send>
    + Send
    + 'static {
        service_fn(move |req: Request<Incoming>| async move {
            let text = format!("{} {}{}", req.method(), req.uri(), ".".repeat(pad));
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
        })
    }

    /// Polls the connection once, as its task would: the duplex pipe makes every read and write
    /// that can proceed do so within the poll.
    fn turn<S>(conn: &mut Connection<DuplexStream, S>) -> Poll<Result<(), BoxError>>
    where
        S: HttpService<Incoming, ResBody = Full<Bytes>, Error = Infallible> + Send + 'static,
        S::Future: Send + 'static,
    {
        Pin::new(conn).poll(&mut Context::from_waker(std::task::Waker::noop()))
    }

    /// Reads one response whose body ends with `end`, and returns it whole.
    async fn response(client: &mut DuplexStream, end: &str) -> String {
        let mut seen = Vec::new();
        let mut buf = [0; 1024];
        while !String::from_utf8_lossy(&seen).ends_with(end) {
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(seen).unwrap()
    }

    const GET_ONE: &[u8] = b"GET /one HTTP/1.1\r\nHost: t\r\n\r\n";

    /// A connection served by `builders` with [`echo`] that has answered `GET /one` whole, and
    /// its client.
    async fn answered_once(
        builders: &'static Builders,
    ) -> (
        DuplexStream,
        Connection<
            DuplexStream,
            impl HttpService<Incoming, ResBody = Full<Bytes>, Error = Infallible, Future: Send>
            + Send
            + 'static,
        >,
    ) {
        let (mut client, server) = tokio::io::duplex(4096);
        let mut conn = builders.serve(server, echo(0));
        client.write_all(GET_ONE).await.unwrap();
        assert!(turn(&mut conn).is_pending());
        let answer = response(&mut client, "GET /one").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        // hyper looked for a next request before it flushed this answer; the wake that asks a
        // connection to park polls it again first, and that look finds the socket resting.
        assert!(turn(&mut conn).is_pending());
        (client, conn)
    }

    #[tokio::test]
    async fn an_idle_connection_parks_and_serves_its_next_request_from_its_first_bytes() {
        let builders = builders();
        let (mut client, mut conn) = answered_once(builders).await;
        assert!(conn.park());
        assert!(matches!(conn, Connection::Parked { .. }));
        assert_eq!(builders.parked.load(Ordering::Relaxed), 1);
        assert!(turn(&mut conn).is_pending(), "parked, nothing to read");
        client.write_all(b"GE").await.unwrap();
        assert!(turn(&mut conn).is_pending());
        assert!(matches!(conn, Connection::Http1 { .. }), "served again");
        assert_eq!(builders.parked.load(Ordering::Relaxed), 0);
        client
            .write_all(b"T /two HTTP/1.1\r\nHost: t\r\n\r\nGET /three HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        assert!(turn(&mut conn).is_pending());
        let answers = response(&mut client, "GET /three").await;
        assert!(
            answers.contains("GET /two") && answers.starts_with("HTTP/1.1 200"),
            "{answers}"
        );
        assert!(turn(&mut conn).is_pending());
        assert!(conn.park(), "parks again once idle");
    }

    #[tokio::test]
    async fn a_connection_is_not_parked_while_hyper_holds_a_response_not_flushed() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut conn = builders().serve(server, echo(1000));
        client.write_all(GET_ONE).await.unwrap();
        assert!(turn(&mut conn).is_pending());
        assert!(!conn.park(), "parked with the response half sent");
        assert!(matches!(conn, Connection::Http1 { .. }));
        let mut seen = Vec::new();
        let mut buf = [0; 64];
        while !seen.ends_with(&[b'.'; 1000][..]) {
            let n = client.read(&mut buf).await.unwrap();
            seen.extend_from_slice(&buf[..n]);
            assert!(turn(&mut conn).is_pending());
        }
        assert!(conn.park(), "the response went out whole");
    }

    #[tokio::test]
    async fn the_start_of_a_next_request_keeps_the_connection_in_hyper() {
        let (mut client, mut conn) = answered_once(builders()).await;
        client.write_all(b"GET /tw").await.unwrap();
        assert!(turn(&mut conn).is_pending());
        assert!(!conn.park(), "parked with part of a request read");
        assert!(matches!(conn, Connection::Http1 { .. }));
        client
            .write_all(b"o HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        assert!(turn(&mut conn).is_pending());
        assert!(
            response(&mut client, "GET /two")
                .await
                .starts_with("HTTP/1.1 200")
        );
    }

    #[tokio::test]
    async fn a_timed_out_connection_closes_at_once_unless_a_response_is_still_going_out() {
        // Parked: closed.
        let (mut client, mut conn) = answered_once(builders()).await;
        assert!(conn.park());
        conn.time_out();
        assert!(matches!(turn(&mut conn), Poll::Ready(Ok(()))));
        drop(conn);
        assert_eq!(client.read(&mut [0; 16]).await.unwrap(), 0, "closed");

        // Part of a head read: closed without an answer, as hyper's header-read timer did.
        let (mut client, mut conn) = answered_once(builders()).await;
        client.write_all(b"GET /tw").await.unwrap();
        assert!(turn(&mut conn).is_pending());
        conn.time_out();
        assert!(matches!(turn(&mut conn), Poll::Ready(Ok(()))));
        drop(conn);
        assert_eq!(client.read(&mut [0; 16]).await.unwrap(), 0, "closed");

        // A response half sent: it goes out whole, then the connection closes.
        let (mut client, server) = tokio::io::duplex(64);
        let mut conn = builders().serve(server, echo(1000));
        client.write_all(GET_ONE).await.unwrap();
        assert!(turn(&mut conn).is_pending());
        conn.time_out();
        let mut seen = Vec::new();
        let mut buf = [0; 64];
        loop {
            let finished = turn(&mut conn);
            let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf));
            let n = read.await.expect("hyper wrote nothing more").unwrap();
            if n == 0 {
                assert!(matches!(finished, Poll::Ready(Ok(()))), "{finished:?}");
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        assert!(seen.ends_with(&[b'.'; 1000][..]), "cut short");
    }

    #[tokio::test]
    async fn a_drain_closes_a_parked_connection_at_once() {
        let (_client, mut conn) = answered_once(builders()).await;
        assert!(conn.park());
        conn.graceful_shutdown();
        assert!(matches!(turn(&mut conn), Poll::Ready(Ok(()))));
    }

    #[tokio::test]
    async fn a_parked_connection_ends_when_its_client_closes() {
        let builders = builders();
        let (client, mut conn) = answered_once(builders).await;
        assert!(conn.park());
        drop(client);
        assert!(matches!(turn(&mut conn), Poll::Ready(Ok(()))));
        drop(conn);
        assert_eq!(builders.parked.load(Ordering::Relaxed), 0);
    }

    /// What the connection's first bytes say, and the bytes read to tell.
    async fn detect(sent: &[&[u8]]) -> (bool, Vec<u8>) {
        let (mut client, mut server) = tokio::io::duplex(64);
        for piece in sent {
            client.write_all(piece).await.unwrap();
            tokio::task::yield_now().await;
        }
        drop(client);
        let mut read = [0; PREFACE.len()];
        let mut filled = 0;
        let http2 =
            std::future::poll_fn(|cx| poll_preface(&mut server, &mut read, &mut filled, cx))
                .await
                .unwrap();
        (http2, read[..filled].to_vec())
    }

    #[tokio::test]
    async fn the_preface_is_http2_even_in_pieces() {
        let (start, end) = PREFACE.split_at(5);
        assert_eq!(detect(&[start, end]).await, (true, PREFACE.to_vec()));
    }

    #[tokio::test]
    async fn anything_else_is_http1_from_its_first_difference() {
        assert_eq!(
            detect(&[b"GET / HTTP/1.1\r\n"]).await,
            (false, b"GET / HTTP/1.1\r\n".to_vec())
        );
        // "PRI * " agrees with the preface: the rest decides.
        let (http2, _) = detect(&[b"PRI * ", b"HTTP/1.1\r\n"]).await;
        assert!(!http2);
    }

    #[tokio::test]
    async fn a_connection_that_ends_early_is_left_to_http1() {
        assert_eq!(detect(&[b"PRI"]).await, (false, b"PRI".to_vec()));
        assert_eq!(detect(&[]).await, (false, Vec::new()));
    }
}
