//! A connection's socket, counted by the worker for as long as it is open.
//!
//! The count lives in the socket rather than in the task serving it because an upgraded
//! connection (a websocket) leaves hyper's task and lives on in the application's: the worker
//! must still wait for it while draining and know to cut it at the deadline. The same goes for
//! the count on the accept-balancing board.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::debug;

use super::room::Room;
use crate::process::board::Seat;
use crate::stall::Watchdog;

pub(crate) struct Tracked<IO> {
    io: IO,
    _token: TaskTrackerToken,
    seat: Seat,
    room: &'static Room,
    /// How long a write may wait for the client to read (`--io-timeout`).
    writes: Watchdog,
}

impl<IO> Tracked<IO> {
    pub(crate) fn new(
        io: IO,
        token: TaskTrackerToken,
        seat: Seat,
        room: &'static Room,
        io_timeout: Duration,
    ) -> Self {
        seat.opened();
        Self {
            io,
            _token: token,
            seat,
            room,
            writes: Watchdog::new(io_timeout),
        }
    }

    /// A write that waits for a client that has read nothing for the io timeout fails: a
    /// client that asks for a response and never reads it would otherwise hold the connection,
    /// and a descriptor, for as long as it likes. The error ends the connection's task
    /// (hyper's, or the application's for an upgraded one), which closes the socket. The cut
    /// comes between one and two timeouts after the client's last read.
    fn written<T>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if result.is_ready() {
            self.writes.progressed();
            return result;
        }
        std::task::ready!(self.writes.poll_stalled(cx));
        debug!(
            "closing a connection whose client read nothing for {:?}",
            self.writes.timeout()
        );
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client read nothing for the io timeout",
        )))
    }
}

impl<IO> Drop for Tracked<IO> {
    fn drop(&mut self) {
        self.seat.closed();
        self.room.freed();
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write(cx, buf);
        self.written(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.written(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.io).poll_flush(cx);
        self.written(cx, result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
