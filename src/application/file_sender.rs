//! Response bodies sent from a file by the kernel (`sendfile(2)`), never copied through the
//! worker's memory.
//!
//! hyper owns a connection's writes: it frames the response, counts its length and decides
//! when the connection may carry the next one. So a file's bytes still pass through hyper, but
//! as stand-ins: [`FileSpan`] yields chunks of a shared zero-filled region whose pages are
//! never touched, and tells the connection which file range each chunk stands for. The
//! connection's socket, below hyper, recognises a stand-in by its address and sends the file's
//! bytes in its place, in order. hyper's bookkeeping (Content-Length, keep-alive, pipelining)
//! sees the right lengths; the bytes on the wire are the file's.
//!
//! A stand-in must never be written as it is: the extension is given only to requests whose
//! connection writes straight to its socket (HTTP/1 without TLS), and the socket refuses a
//! stand-in that does not match the next range it was told of, closing the connection instead.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

/// The largest stand-in chunk, and so the most one body frame stands for: 1 MiB. Larger
/// means fewer trips through hyper per file; the region is allocated once per worker and,
/// never written or read, costs no memory.
const STAND_IN_MAX: usize = 1024 * 1024;

/// A request extension on connections that can send a response body from a file with
/// `sendfile(2)`: plain-text HTTP/1. Absent over TLS and HTTP/2, whose bytes the worker must
/// frame or encrypt itself.
///
/// The built-in static file server uses it for files over 32 KiB; an application may too, for
/// a body that is a range of an open file:
///
/// ```no_run
/// # use std::sync::Arc;
/// # fn answer(req: &http::Request<prefork::RequestBody>, file: Arc<std::fs::File>, len: u64) {
/// if let Some(sender) = req.extensions().get::<prefork::FileSender>() {
///     let body = sender.body(file, 0, len);
///     // Answer with `body` and a Content-Length of `len`.
/// }
/// # }
/// ```
#[derive(Clone)]
pub struct FileSender {
    spans: Arc<Spans>,
}

impl FileSender {
    pub(crate) fn new(spans: Arc<Spans>) -> Self {
        Self { spans }
    }

    /// A body of `len` bytes of `file` from `offset`, sent by the kernel from the page cache.
    ///
    /// The response must say `len` as its Content-Length. Should the file end before
    /// `offset + len` when its bytes are sent (it was truncated meanwhile), the client gets
    /// the bytes the file still has and then a closed connection: a response visibly cut
    /// short, never one padded out. The file is read at its offset on disk as it is sent: if
    /// it is rewritten in place meanwhile, the client may get the new bytes, as with any read.
    pub fn body(&self, file: Arc<File>, offset: u64, len: u64) -> FileSpan {
        FileSpan {
            spans: Arc::clone(&self.spans),
            file,
            offset,
            remaining: len,
        }
    }
}

impl std::fmt::Debug for FileSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSender").finish_non_exhaustive()
    }
}

/// A response body sent from a file by the kernel: see [`FileSender::body`].
pub struct FileSpan {
    spans: Arc<Spans>,
    file: Arc<File>,
    offset: u64,
    remaining: u64,
}

impl http_body::Body for FileSpan {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let len = usize::try_from(this.remaining).map_or(STAND_IN_MAX, |r| r.min(STAND_IN_MAX));
        let Ok(offset) = i64::try_from(this.offset) else {
            return Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a file offset past what sendfile can address",
            ))));
        };
        this.spans.lock().push_back(Span {
            file: Arc::clone(&this.file),
            offset,
            remaining: len,
        });
        this.offset += len as u64;
        this.remaining -= len as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
            &stand_ins()[..len],
        )))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// The file ranges a connection's stand-ins stand for, in the order they were handed to
/// hyper, which is the order hyper writes them.
#[derive(Default)]
pub(crate) struct Spans {
    queue: Mutex<VecDeque<Span>>,
}

impl Spans {
    /// The queue. Both ends are used on the connection's task, so the lock is never contended.
    pub(crate) fn lock(&self) -> MutexGuard<'_, VecDeque<Span>> {
        // A panic while the queue was held left whole entries: it is still consistent.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A stand-in's file range still to be sent.
pub(crate) struct Span {
    pub(crate) file: Arc<File>,
    /// Where the next byte to send is in the file; advanced by `sendfile(2)` itself.
    pub(crate) offset: i64,
    /// The bytes left, which is also the length of what is left of the stand-in.
    pub(crate) remaining: usize,
}

/// Whether `bytes` lies in the stand-in region: a body chunk that must not be written as it
/// is.
pub(crate) fn is_stand_in(bytes: &[u8]) -> bool {
    let region = stand_ins().as_ptr_range();
    !bytes.is_empty() && region.contains(&bytes.as_ptr())
}

/// The stand-in region: zeros, allocated by the first large file and never freed. A zeroed
/// allocation this large is fresh anonymous memory, which takes no page until touched.
fn stand_ins() -> &'static [u8] {
    static REGION: OnceLock<&'static [u8]> = OnceLock::new();
    REGION.get_or_init(|| vec![0; STAND_IN_MAX].leak())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_span_yields_stand_ins_of_its_length_and_queues_their_ranges() {
        let spans = Arc::new(Spans::default());
        let file = Arc::new(tempfile::tempfile().unwrap());
        let len = STAND_IN_MAX as u64 * 2 + 5;
        let mut body = FileSender::new(Arc::clone(&spans)).body(file, 7, len);
        assert_eq!(body.size_hint().exact(), Some(len));
        let mut total = 0;
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            assert!(is_stand_in(&data));
            total += data.len() as u64;
        }
        assert_eq!(total, len);
        assert!(body.is_end_stream());
        let queued: Vec<_> = spans
            .lock()
            .iter()
            .map(|s| (s.offset, s.remaining))
            .collect();
        let max = STAND_IN_MAX;
        assert_eq!(
            queued,
            [(7, max), (7 + max as i64, max), (7 + 2 * max as i64, 5)]
        );
    }

    #[test]
    fn only_the_region_is_a_stand_in() {
        assert!(is_stand_in(&stand_ins()[10..20]));
        assert!(!is_stand_in(&stand_ins()[..0]));
        assert!(!is_stand_in(&[0u8; 16]));
        assert!(!is_stand_in(b"HTTP/1.1 200 OK\r\n"));
    }
}
