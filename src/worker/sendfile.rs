//! The connection's socket, sending file ranges with `sendfile(2)` where hyper writes their
//! stand-ins (see [`crate::application::FileSender`]).
//!
//! Bytes before a stand-in in the same write (a response head) go first with `MSG_MORE`, so
//! that they leave in one packet with the file's first bytes, as nginx's `tcp_nopush` does.

use std::io::{self, IoSlice};
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::application::{Spans, is_stand_in};

/// A socket the worker serves: what `sendfile(2)` needs of it besides reads and writes.
pub(crate) trait Socket: AsyncRead + AsyncWrite + AsFd + Unpin + Send + 'static {
    /// Ready when the socket may take more bytes.
    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Runs `write` on the socket, which the runtime then knows to be full if it fails with
    /// `WouldBlock`.
    fn try_write_with<R>(&self, write: impl FnOnce() -> io::Result<R>) -> io::Result<R>;
}

macro_rules! socket {
    ($stream:ty) => {
        impl Socket for $stream {
            fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                <$stream>::poll_write_ready(self, cx)
            }

            fn try_write_with<R>(&self, write: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
                self.try_io(Interest::WRITABLE, write)
            }
        }
    };
}

socket!(TcpStream);
socket!(UnixStream);

/// A socket, and the file ranges its connection's stand-ins stand for: `None` on a connection
/// that is given no [`crate::application::FileSender`] (TLS), where a stand-in is refused.
pub(crate) struct FileSending<S> {
    socket: S,
    spans: Option<Arc<Spans>>,
}

impl<S: Socket> FileSending<S> {
    pub(crate) fn new(socket: S, spans: Option<Arc<Spans>>) -> Self {
        Self { socket, spans }
    }

    /// Writes `bufs` up to the first stand-in, then that stand-in's file range as far as the
    /// socket takes it.
    fn poll_write_spans(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let Some(first) = bufs.iter().position(|b| is_stand_in(b)) else {
            return Pin::new(&mut self.socket).poll_write_vectored(cx, bufs);
        };
        if first == 0 {
            return self.poll_send_file(cx, &bufs[0]);
        }
        let before = &bufs[..first];
        let wanted: usize = before.iter().map(|b| b.len()).sum();
        let sent = ready!(self.poll_send_more(cx, before))?;
        if sent < wanted {
            return Poll::Ready(Ok(sent));
        }
        // What was sent is reported either way; a failure of the file recurs on the next call,
        // which then starts with the stand-in.
        match self.poll_send_file(cx, &bufs[first]) {
            Poll::Ready(Ok(n)) => Poll::Ready(Ok(sent + n)),
            Poll::Ready(Err(_)) | Poll::Pending => Poll::Ready(Ok(sent)),
        }
    }

    /// Sends `bufs`, telling the kernel that more follows at once.
    fn poll_send_more(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let flags = libc::MSG_MORE | libc::MSG_NOSIGNAL;
        loop {
            ready!(self.socket.poll_write_ready(cx))?;
            let socket = SockRef::from(&self.socket);
            let sent = self
                .socket
                .try_write_with(|| socket.send_vectored_with_flags(bufs, flags));
            match sent {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                sent => return Poll::Ready(sent),
            }
        }
    }

    /// Sends the file range `stand_in` stands for, as far as the socket takes it.
    fn poll_send_file(
        &mut self,
        cx: &mut Context<'_>,
        stand_in: &IoSlice<'_>,
    ) -> Poll<io::Result<usize>> {
        let Some(spans) = &self.spans else {
            return Poll::Ready(Err(mismatch("on a connection that sends no file")));
        };
        let mut queue = spans.lock();
        let Some(span) = queue.front_mut() else {
            return Poll::Ready(Err(mismatch("with no file range queued")));
        };
        if span.remaining != stand_in.len() {
            return Poll::Ready(Err(mismatch("of another length than its file range")));
        }
        loop {
            ready!(self.socket.poll_write_ready(cx))?;
            let fd = self.socket.as_fd();
            // A stand-in is at most 1 MiB: the whole range is asked for at once.
            let count = span.remaining;
            let sent = self.socket.try_write_with(|| {
                nix::sys::sendfile::sendfile64(fd, span.file.as_fd(), Some(&mut span.offset), count)
                    .map_err(io::Error::from)
            });
            match sent {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the file ended before the length promised for it: it was truncated \
                         while being sent",
                    )));
                }
                Ok(n) => {
                    span.remaining -= n;
                    if span.remaining == 0 {
                        queue.pop_front();
                    }
                    return Poll::Ready(Ok(n));
                }
            }
        }
    }
}

/// A stand-in that cannot be matched to its file range: writing it would send zeros in place
/// of a file, so the connection is closed instead.
fn mismatch(how: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("a file's stand-in bytes reached the socket {how}"),
    )
}

impl<S: Socket> AsyncRead for FileSending<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_read(cx, buf)
    }
}

impl<S: Socket> AsyncWrite for FileSending<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_spans(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_spans(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        // hyper then queues body chunks as they are instead of copying them into its buffer,
        // which would turn stand-ins into zeros.
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use bytes::Bytes;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::application::FileSender;

    /// A body's frames as hyper would get them: stand-ins, their ranges queued on `spans`.
    async fn stand_ins(spans: &Arc<Spans>, content: &[u8], offset: u64, len: u64) -> Bytes {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(content).unwrap();
        let body = FileSender::new(Arc::clone(spans)).body(Arc::new(file), offset, len);
        // One frame: its bytes are the stand-in itself, not a copy.
        let stand_in = body.collect().await.unwrap().to_bytes();
        assert!(is_stand_in(&stand_in));
        stand_in
    }

    #[tokio::test]
    async fn a_stand_in_after_a_head_goes_out_as_its_file_range() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let spans = Arc::new(Spans::default());
        let mut socket = FileSending::new(ours, Some(Arc::clone(&spans)));
        let stand_in = stand_ins(&spans, b"0123456789", 2, 5).await;
        let head = b"HEAD\r\n";
        let bufs = [IoSlice::new(head), IoSlice::new(&stand_in)];
        let n = socket.write_vectored(&bufs).await.unwrap();
        assert_eq!(n, head.len() + 5);
        drop(socket);
        let mut got = Vec::new();
        theirs.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"HEAD\r\n23456");
        assert!(spans.lock().is_empty());
    }

    #[tokio::test]
    async fn a_stand_in_without_its_range_is_refused_not_written() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let spans = Arc::new(Spans::default());
        let stand_in = stand_ins(&spans, b"0123456789", 0, 10).await;
        // No socket was told of the range: none may write it.
        let mut untold = FileSending::new(ours, None);
        let e = untold.write(&stand_in).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        // A socket told of another range refuses it too.
        let mut told = FileSending::new(untold.socket, Some(Arc::clone(&spans)));
        let e = told.write(&stand_in[..4]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        spans.lock().clear();
        let e = told.write(&stand_in).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        drop(told);
        let mut got = Vec::new();
        theirs.read_to_end(&mut got).await.unwrap();
        assert!(got.is_empty(), "{} bytes were written", got.len());
    }

    #[tokio::test]
    async fn a_file_that_ends_early_fails_the_write() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let spans = Arc::new(Spans::default());
        let mut socket = FileSending::new(ours, Some(Arc::clone(&spans)));
        let stand_in = stand_ins(&spans, b"0123", 0, 10).await;
        assert_eq!(socket.write(&stand_in).await.unwrap(), 4);
        let e = socket.write(&stand_in[4..]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
