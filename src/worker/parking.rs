//! Idle HTTP/1 keep-alive connections give hyper's buffers back.
//!
//! hyper keeps an 8 KiB read buffer and a write buffer for every HTTP/1 connection for its whole
//! life, and has no option to let them go between requests: that is most of what an idle
//! keep-alive connection costs (docs/performance.md, "Memory per idle connection"). nginx frees
//! its request buffers when a connection goes idle, and so does prefork, with hyper's public
//! API: a connection idle for [`PARK_AFTER`] is taken apart
//! ([`hyper::server::conn::http1::UpgradeableConnection::into_parts`]), which drops hyper's
//! state, and only the socket and the service are kept, waiting for the next request's first
//! bytes; those are then put back in front of the socket and a new hyper connection serves them
//! (see [`super::protocol`]).
//!
//! Taking a connection apart is only safe between requests, and hyper does not say when that
//! is. Two sides tell it together: the service (no request open and no request body left unread,
//! [`super::activity::Activity::between_http1_requests`]) and the socket as hyper uses it
//! ([`Rest`]: hyper's last read found nothing, and all it wrote since was flushed). A
//! connection of which hyper had already read part of a next request is not parked: what hyper
//! read is put back and a new hyper connection serves on. A parked connection is closed at the
//! end of its keep-alive timeout as any idle one is, by its task
//! ([`super::activity::Activity::idle`]).
//!
//! Parking waits until a connection has been idle for a while, so that clients that send their
//! next request at once (a benchmark, a proxy's busy pool) never pay for taking hyper's state
//! apart and building it again; a sweep once per [`PARK_AFTER`] asks each connection idle that
//! long, once per idle period.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::debug;

use super::Shared;

/// How long an HTTP/1 connection stays idle before it gives hyper's buffers back: between one
/// and two of this, 1 s.
pub(crate) const PARK_AFTER: Duration = Duration::from_secs(1);

/// Bits of [`Rest`].
const WAITING: u8 = 1;
const UNFLUSHED: u8 = 2;
const SHUT: u8 = 4;

/// Asks the worker's idle HTTP/1 connections to park, once per [`PARK_AFTER`].
pub(super) async fn sweep(shared: &'static Shared) {
    let mut every = tokio::time::interval(PARK_AFTER);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let asked = shared.connections.ask_idle_to_park(PARK_AFTER);
        if asked > 0 {
            debug!("asked {asked} idle keep-alive connections to give back their buffers");
        }
    }
}

/// What hyper last did with a connection's socket, as [`Resting`] saw it.
#[derive(Clone, Default)]
pub(crate) struct Rest(Arc<AtomicU8>);

impl Rest {
    /// Whether hyper is waiting for bytes with nothing of its own left to write: its last read
    /// found nothing, nothing was written after it, and what was written before was flushed.
    /// A connection hyper has begun to shut down never rests.
    pub(crate) fn resting(&self) -> bool {
        self.0.load(Ordering::Relaxed) == WAITING
    }

    // Only the connection's task writes and reads it (hyper polls the socket inside that
    // task), so a load and a store do: no read-modify-write on every read and write.
    fn set(&self, bits: u8) {
        self.0
            .store(self.0.load(Ordering::Relaxed) | bits, Ordering::Relaxed);
    }

    fn clear(&self, bits: u8) {
        self.0
            .store(self.0.load(Ordering::Relaxed) & !bits, Ordering::Relaxed);
    }
}

/// The socket as hyper uses it, noting in [`Rest`] what hyper does with it.
pub(crate) struct Resting<IO> {
    io: IO,
    rest: Rest,
}

impl<IO> Resting<IO> {
    pub(crate) fn new(io: IO, rest: Rest) -> Self {
        Self { io, rest }
    }

    pub(crate) fn get_mut(&mut self) -> &mut IO {
        &mut self.io
    }

    pub(crate) fn rest(&self) -> Rest {
        self.rest.clone()
    }

    fn wrote(&self) {
        // hyper writes only what it holds; until a flush succeeds it may hold more.
        self.rest.clear(WAITING);
        self.rest.set(UNFLUSHED);
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Resting<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if polled.is_pending() {
            self.rest.set(WAITING);
        } else {
            self.rest.clear(WAITING);
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Resting<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.wrote();
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.wrote();
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        if let Poll::Ready(Ok(())) = polled {
            self.rest.clear(UNFLUSHED);
        }
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.rest.set(SHUT);
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn a_connection_rests_once_a_read_finds_nothing_after_a_flushed_write() {
        let (mut client, server) = tokio::io::duplex(64);
        let rest = Rest::default();
        let mut io = Resting::new(server, rest.clone());
        assert!(!rest.resting(), "nothing read yet");
        client.write_all(b"GET").await.unwrap();
        let mut buf = [0; 8];
        assert_eq!(io.read(&mut buf).await.unwrap(), 3);
        assert!(!rest.resting(), "a read that found bytes");
        io.write_all(b"answer").await.unwrap();
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut read = ReadBuf::new(&mut buf);
        assert!(Pin::new(&mut io).poll_read(&mut cx, &mut read).is_pending());
        assert!(!rest.resting(), "written and not flushed");
        io.flush().await.unwrap();
        assert!(Pin::new(&mut io).poll_read(&mut cx, &mut read).is_pending());
        assert!(rest.resting());
        io.write_all(b"more").await.unwrap();
        assert!(!rest.resting(), "written after the read");
        io.flush().await.unwrap();
        assert!(Pin::new(&mut io).poll_read(&mut cx, &mut read).is_pending());
        assert!(rest.resting());
        io.shutdown().await.unwrap();
        assert!(!rest.resting(), "shut down");
    }
}
