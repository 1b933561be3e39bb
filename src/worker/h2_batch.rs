//! HTTP/2 responses written together: one write for what h2 sends in one poll of the
//! connection, instead of one per response.
//!
//! h2 copies a small frame into its write buffer, but keeps a DATA frame of 256 bytes or more
//! aside to write it from the body's own bytes, and then counts its buffer as full: it flushes
//! before taking the next frame. So every response with more than 256 bytes of body cost a
//! `writev` of its own (20 032 for 20 000 responses of 1 KiB to 16 connections with 10
//! streams each, where h2o made 2 000, one per batch of requests read).
//!
//! While [`poll_batched`] polls an HTTP/2 connection, [`Batched`] copies small writes into a
//! buffer and answers h2's flushes at once without writing; when the poll ends with bytes
//! held, [`poll_batched`] polls the connection once more with holding off, and h2, which ends
//! every poll that wrote with a flush, writes them out in one call. Bytes are therefore never
//! held past the poll that produced them: the most a client waits for is the rest of that
//! poll. Large writes (a DATA frame of [`COPY_LIMIT`] or more) are not copied; they go out
//! from h2's own buffers with what is held in front of them, in the same `writev`.
//!
//! Which poll holds is told through a thread-local flag rather than a field shared by the two
//! halves: a task's poll runs on one thread from start to end, only the connection's own
//! socket is written during it (h2's stream tasks only queue frames for it), and the flag
//! needs no allocation per connection. HTTP/1 connections are not batched: hyper writes each
//! response in one call already (see `protocol`).

use std::cell::Cell;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Writes of this many bytes or more are not copied into the batch: for large bodies the copy
/// would cost more than the system call it saves. In bytes; 8 KiB takes a response of up to
/// about 8 KiB whole.
const COPY_LIMIT: usize = 8 * 1024;

/// The most a batch holds before it is written out, in bytes.
const BATCH_LIMIT: usize = 64 * 1024;

/// Where the poll running on this thread stands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// Not inside an HTTP/2 connection's first poll: writes and flushes go through.
    Off,
    /// Flushes are answered without writing.
    On,
    /// As `On`, and a flush was answered with bytes held: the poll must be followed by one
    /// that writes them.
    Owed,
}

thread_local! {
    static HOLD: Cell<Hold> = const { Cell::new(Hold::Off) };
    /// The buffer of the last batch written out whole, empty, for the next batch on this
    /// thread. Connections take turns on a worker's thread, so one spare serves them all:
    /// a batch grown from nothing doubled its way up (about nine reallocations for ten 1 KiB
    /// responses, each past 1 KiB making glibc's malloc consolidate its free lists), and a
    /// fresh buffer of a fixed size per batch cost a large allocation and free instead.
    static SPARE: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

fn holding() -> bool {
    HOLD.get() != Hold::Off
}

/// Turns holding off when dropped: also when the connection's poll panics, so that no other
/// socket polled on this thread afterwards ever holds.
struct HoldGuard;

impl HoldGuard {
    fn on() -> Self {
        HOLD.set(Hold::On);
        Self
    }

    /// Turns holding off; true if bytes were held by a flush.
    fn owed(self) -> bool {
        HOLD.replace(Hold::Off) == Hold::Owed
    }
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        HOLD.set(Hold::Off);
    }
}

/// Polls an HTTP/2 connection so that what it writes in this poll goes out in one write (see
/// the module doc); its socket must be [`Batched`].
pub(crate) fn poll_batched<F: Future>(
    mut conn: Pin<&mut F>,
    cx: &mut Context<'_>,
) -> Poll<F::Output> {
    let hold = HoldGuard::on();
    let first = conn.as_mut().poll(cx);
    if hold.owed() && first.is_pending() {
        // h2 flushes at the end of every poll that buffered a frame; with holding off this
        // flush writes. (A connection that completed has shut its socket down, which writes
        // what is held first.)
        return conn.poll(cx);
    }
    first
}

/// An HTTP/2 connection's socket, with the write buffer of [`poll_batched`].
pub(crate) struct Batched<IO> {
    io: IO,
    /// Bytes accepted from h2 and not yet written; empty, and unallocated, between batches
    /// (the buffer goes back to [`SPARE`]).
    held: Vec<u8>,
}

impl<IO> Batched<IO> {
    pub(crate) fn new(io: IO) -> Self {
        Self {
            io,
            held: Vec::new(),
        }
    }
}

impl<IO: AsyncWrite + Unpin> Batched<IO> {
    /// Writes out what is held, until nothing is or the socket is full.
    fn poll_write_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.held.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.held))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.held.drain(..n);
        }
        self.release();
        Poll::Ready(Ok(()))
    }

    /// Gives the emptied buffer back for the next batch, so that an idle connection holds
    /// none.
    fn release(&mut self) {
        // A connection that held nothing has no buffer, and must not displace the spare.
        if self.held.capacity() == 0 {
            return;
        }
        let mut buffer = std::mem::take(&mut self.held);
        buffer.clear();
        SPARE.set(buffer);
    }

    /// Writes `bufs`, after what is held and in the same call when the socket takes both.
    fn poll_write_through(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            let held = self.held.len();
            if held == 0 {
                return Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
            }
            // h2 writes two slices (its buffer and a DATA frame's payload); more are allowed
            // to wait for the next call, as any short write.
            let mut slices = [IoSlice::new(&[]); 4];
            slices[0] = IoSlice::new(&self.held);
            let taken = bufs.len().min(slices.len() - 1);
            slices[1..=taken].copy_from_slice(&bufs[..taken]);
            let n = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..=taken]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if n > held {
                self.release();
                return Poll::Ready(Ok(n - held));
            }
            // Only held bytes went: none of the caller's may be reported written yet.
            self.held.drain(..n);
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for Batched<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Outside a holding poll, held bytes go out at the latest when the socket is next
        // used, whatever h2 calls first; a full socket wakes the task when it drains.
        if !this.held.is_empty()
            && !holding()
            && let Poll::Ready(Err(e)) = this.poll_write_held(cx)
        {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Batched<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if len < COPY_LIMIT && this.held.len() + len <= BATCH_LIMIT && holding() {
            if this.held.capacity() == 0 {
                this.held = SPARE.take();
            }
            for buf in bufs {
                this.held.extend_from_slice(buf);
            }
            return Poll::Ready(Ok(len));
        }
        this.poll_write_through(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.held.is_empty() {
            if holding() {
                HOLD.set(Hold::Owed);
                return Poll::Ready(Ok(()));
            }
            ready!(this.poll_write_held(cx))?;
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_held(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::task::Waker;

    use super::*;

    /// A socket that takes every write whole and records each call.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Recorder {
        fn calls(&self) -> Vec<Vec<u8>> {
            self.0.lock().unwrap().clone()
        }
    }

    impl AsyncRead for Recorder {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let call = bufs
                .iter()
                .flat_map(|b| b.iter().copied())
                .collect::<Vec<_>>();
            let n = call.len();
            self.0.lock().unwrap().push(call);
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A connection as h2 drives one: on its first poll it writes `frames`, flushing after
    /// each as h2 does after a large DATA frame; every poll ends with a flush.
    fn connection(
        mut io: Batched<Recorder>,
        frames: Vec<Vec<u8>>,
    ) -> impl Future<Output = ()> + Unpin {
        let mut frames = Some(frames);
        std::future::poll_fn(move |cx| {
            for frame in frames.take().unwrap_or_default() {
                let n = Pin::new(&mut io).poll_write(cx, &frame);
                assert!(matches!(n, Poll::Ready(Ok(n)) if n == frame.len()));
                assert!(Pin::new(&mut io).poll_flush(cx).is_ready());
            }
            assert!(Pin::new(&mut io).poll_flush(cx).is_ready());
            Poll::Pending
        })
    }

    /// Polls `conn` once, batched or not.
    fn poll_once(mut conn: impl Future<Output = ()> + Unpin, batched: bool) {
        let mut cx = Context::from_waker(Waker::noop());
        let conn = Pin::new(&mut conn);
        let polled = if batched {
            poll_batched(conn, &mut cx)
        } else {
            conn.poll(&mut cx)
        };
        assert!(polled.is_pending());
    }

    #[test]
    fn what_an_http2_poll_writes_leaves_in_one_call() {
        let socket = Recorder::default();
        let frames = vec![vec![1; 300], vec![2; 1100], vec![3; 40]];
        let conn = connection(Batched::new(socket.clone()), frames.clone());
        poll_once(conn, true);
        assert_eq!(socket.calls(), vec![frames.concat()]);
        assert!(!holding(), "holding is off once the poll is over");
    }

    #[test]
    fn writes_outside_a_batched_poll_are_passed_through() {
        let socket = Recorder::default();
        let frames = vec![vec![1; 300], vec![2; 1100]];
        let conn = connection(Batched::new(socket.clone()), frames.clone());
        poll_once(conn, false);
        assert_eq!(socket.calls(), frames);
    }

    #[test]
    fn a_large_write_is_not_copied_but_leaves_behind_what_is_held() {
        let socket = Recorder::default();
        let frames = vec![vec![1; 300], vec![2; COPY_LIMIT], vec![3; 40]];
        let conn = connection(Batched::new(socket.clone()), frames.clone());
        poll_once(conn, true);
        let calls = socket.calls();
        assert_eq!(calls, vec![frames[..2].concat(), frames[2].clone()]);
    }

    #[test]
    fn a_full_batch_is_written_without_waiting_for_the_flush() {
        let socket = Recorder::default();
        // As many as the batch holds, one that goes out with them, and one more.
        let frames = vec![vec![7; COPY_LIMIT - 1]; BATCH_LIMIT / (COPY_LIMIT - 1) + 2];
        let conn = connection(Batched::new(socket.clone()), frames.clone());
        poll_once(conn, true);
        let calls = socket.calls();
        assert_eq!(calls.concat(), frames.concat());
        assert!(
            calls
                .iter()
                .all(|call| call.len() <= BATCH_LIMIT + COPY_LIMIT)
        );
        assert_eq!(calls.len(), 2);
    }

    #[test]
    fn a_written_batch_leaves_its_buffer_to_the_next_batch_not_to_its_connection() {
        let mut cx = Context::from_waker(Waker::noop());
        let first = Recorder::default();
        let mut one = Batched::new(first.clone());
        let hold = HoldGuard::on();
        assert!(
            Pin::new(&mut one)
                .poll_write(&mut cx, &[1; 3000])
                .is_ready()
        );
        drop(hold);
        assert!(Pin::new(&mut one).poll_flush(&mut cx).is_ready());
        assert_eq!(first.calls(), vec![vec![1; 3000]]);
        assert_eq!(one.held.capacity(), 0, "an idle connection holds no buffer");

        let second = Recorder::default();
        let mut other = Batched::new(second.clone());
        let hold = HoldGuard::on();
        assert!(Pin::new(&mut other).poll_write(&mut cx, b"next").is_ready());
        drop(hold);
        assert!(
            other.held.capacity() >= 3000,
            "the next batch takes the spare instead of growing one of its own"
        );
        assert!(Pin::new(&mut other).poll_flush(&mut cx).is_ready());
        assert_eq!(second.calls(), vec![b"next".to_vec()]);

        // Shutting down a connection that holds nothing leaves the spare where it is.
        assert!(Pin::new(&mut one).poll_shutdown(&mut cx).is_ready());
        let mut third = Batched::new(Recorder::default());
        let hold = HoldGuard::on();
        assert!(Pin::new(&mut third).poll_write(&mut cx, b"last").is_ready());
        drop(hold);
        assert!(third.held.capacity() >= 3000, "the spare is still there");
    }

    #[test]
    fn shutting_down_writes_what_is_held() {
        let socket = Recorder::default();
        let mut io = Batched::new(socket.clone());
        let mut cx = Context::from_waker(Waker::noop());
        let hold = HoldGuard::on();
        assert!(Pin::new(&mut io).poll_write(&mut cx, b"goaway").is_ready());
        assert!(Pin::new(&mut io).poll_flush(&mut cx).is_ready());
        assert!(socket.calls().is_empty());
        assert!(Pin::new(&mut io).poll_shutdown(&mut cx).is_ready());
        drop(hold);
        assert_eq!(socket.calls(), vec![b"goaway".to_vec()]);
    }
}
