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

use std::error::Error;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use hyper::body::{Body, Incoming};
use hyper::rt::bounds::Http2ServerConnExec;
use hyper::server::conn::{http1, http2};
use hyper::service::HttpService;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::h2_batch::{self, Batched};
use super::h2_flood::PREFACE;
use super::prefixed::Prefixed;

type BoxError = Box<dyn Error + Send + Sync>;

/// The settings of both protocols.
pub(crate) struct Builders {
    pub(crate) http1: http1::Builder,
    pub(crate) http2: http2::Builder<TokioExecutor>,
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

/// The socket as hyper is given it.
type Io<IO> = TokioIo<Prefixed<IO>>;

/// hyper's HTTP/2 connection, its writes batched.
type Http2<IO, S> = http2::Connection<Io<Batched<IO>>, S, TokioExecutor>;

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
    Http1(http1::UpgradeableConnection<Io<IO>, S>),
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
            Connection::Detecting { .. } => *self = Connection::Closed,
            Connection::Http1(conn) => Pin::new(conn).graceful_shutdown(),
            Connection::Http2(conn) => conn.as_mut().graceful_shutdown(),
            Connection::Closed => {}
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
            let io = TokioIo::new(Prefixed::new(read, Batched::new(io)));
            Connection::Http2(Box::pin(builders.http2.serve_connection(io, service)))
        } else {
            let io = TokioIo::new(Prefixed::new(read, io));
            Connection::Http1(builders.http1.serve_connection(io, service).with_upgrades())
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
                Connection::Http1(conn) => return Pin::new(conn).poll(cx).map_err(Into::into),
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
    use tokio::io::AsyncWriteExt;

    use super::*;

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
