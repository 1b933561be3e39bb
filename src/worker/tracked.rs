//! A connection's socket, counted by the worker for as long as it is open.
//!
//! The count lives in the socket rather than in the task serving it because an upgraded
//! connection (a websocket) leaves hyper's task and lives on in the application's: the worker
//! must still wait for it while draining and know to cut it at the deadline. The same goes for
//! the count on the accept-balancing board.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::room::Room;
use crate::process::board::Seat;

pub(crate) struct Tracked<IO> {
    io: IO,
    _token: TaskTrackerToken,
    seat: Seat,
    room: &'static Room,
}

impl<IO> Tracked<IO> {
    pub(crate) fn new(io: IO, token: TaskTrackerToken, seat: Seat, room: &'static Room) -> Self {
        seat.opened();
        Self {
            io,
            _token: token,
            seat,
            room,
        }
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
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
