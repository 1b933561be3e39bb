//! A connection with bytes already read from it put back in front: what was read past a PROXY
//! header, or the first bytes read to tell HTTP/1 from HTTP/2.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub(crate) struct Prefixed<IO> {
    prefix: Vec<u8>,
    at: usize,
    io: IO,
}

impl<IO> Prefixed<IO> {
    pub(crate) fn new(prefix: Vec<u8>, io: IO) -> Self {
        Self { prefix, at: 0, io }
    }

    /// Puts `bytes` back in front, before what is left of the prefix.
    pub(crate) fn put_back(&mut self, bytes: &[u8]) {
        let mut prefix = Vec::with_capacity(bytes.len() + self.prefix.len() - self.at);
        prefix.extend_from_slice(bytes);
        prefix.extend_from_slice(&self.prefix[self.at..]);
        self.prefix = prefix;
        self.at = 0;
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Prefixed<IO> {
    /// The read that hands back the end of the prefix also takes what the connection already
    /// has after it. hyper's HTTP/1 reader tops its buffer up to 8 KiB before each read: given
    /// only the prefix, a part of a request head, it would read again into a buffer grown to
    /// 16 KiB, and keep that for the connection's life.
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at == this.prefix.len() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let n = buf.remaining().min(this.prefix.len() - this.at);
        buf.put_slice(&this.prefix[this.at..this.at + n]);
        this.at += n;
        if this.at < this.prefix.len() {
            return Poll::Ready(Ok(()));
        }
        this.prefix = Vec::new();
        this.at = 0;
        if buf.remaining() > 0 {
            // Nothing there yet (Pending) or an error: the prefix is this read's answer, and
            // the next read finds the error again, or the end of the connection it left.
            let _ = Pin::new(&mut this.io).poll_read(cx, buf);
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Prefixed<IO> {
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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn the_prefix_and_what_already_follows_it_come_in_one_read() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b" / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut prefixed = Prefixed::new(b"GET".to_vec(), server);
        let mut buf = [0u8; 64];
        let n = prefixed.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn a_prefix_longer_than_the_read_comes_in_parts_then_the_rest() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"DEF").await.unwrap();
        drop(client);
        let mut prefixed = Prefixed::new(b"ABC".to_vec(), server);
        let mut first = [0u8; 2];
        prefixed.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"AB");
        let mut rest = String::new();
        prefixed.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "CDEF");
    }
}
