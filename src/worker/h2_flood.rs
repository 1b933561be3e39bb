//! HTTP/2 floods of PING and SETTINGS frames, cut with GOAWAY `ENHANCE_YOUR_CALM`.
//!
//! h2 answers every PING and every SETTINGS frame, with no limit: one connection sending PINGs
//! as fast as it can kept a worker's core busy and multiplied its other clients' latency by
//! 12. h2 has no setting for it, so the worker counts those frames itself, on the bytes the
//! client sends, and ends a connection that sends more than a real client ever does.
//!
//! Only HTTP/2 connections carry the guard: `protocol` puts it on those that sent the preface,
//! and it reads the preface again before the frames. Bytes that are not the preface are passed
//! through with one branch per read and per write.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant as Clock;
use tracing::{debug, warn};

use super::Me;
use super::h2_frames::{DATA, Frames, GOAWAY, HEADERS, PING, SETTINGS};

/// PING and SETTINGS frames (acknowledgements included) that make a flood when a connection
/// sends this many within [`WINDOW`]: a steady 10 a second. Each DATA or HEADERS frame the
/// server sends takes one off the count. Real clients send a handful per connection (browsers,
/// curl), a keepalive PING every 10 s at most (gRPC clients; gRPC servers refuse more), or one
/// PING per round trip while a response flows (gRPC's bandwidth estimate), which the
/// response's frames pay for. The count starts again when a window has passed, so a flood is
/// cut after at most twice this many frames: at full speed, well within a millisecond.
const BUDGET: u32 = 100;
/// See [`BUDGET`].
const WINDOW: Duration = Duration::from_secs(10);

/// How often at most the worker reports how many connections it cut for flooding.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// What an HTTP/2 client sends first (RFC 9113, 3.4).
pub(super) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The GOAWAY error code for floods.
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// A connection's socket, watched for PING and SETTINGS floods.
pub(crate) struct FloodGuard<IO> {
    io: IO,
    state: State,
    floods: &'static Floods,
}

enum State {
    /// Reading the first bytes: this many of them are the HTTP/2 preface so far.
    Sniffing(usize),
    /// Boxed: HTTP/1 connections, the most numerous, do not carry it.
    Http2(Box<Http2>),
    /// A flood was found; the GOAWAY is being written, and then every call fails. Boxed, as
    /// is `Http2`: every connection carries this enum.
    Cutting(Box<Cut>),
    /// Not HTTP/2: passed through.
    Off,
}

/// What is counted on an HTTP/2 connection.
struct Http2 {
    /// What the client sends.
    incoming: Frames,
    /// What h2 writes: a GOAWAY of our own may only go between two of its frames.
    outgoing: Frames,
    /// PING and SETTINGS frames received since `since`, less the DATA and HEADERS frames sent
    /// meanwhile, never below zero.
    owed: u32,
    since: Clock,
    /// The highest stream the client opened: the last stream id of our GOAWAY.
    last_stream: u32,
}

/// A GOAWAY being written; the connection then fails.
struct Cut {
    goaway: [u8; 17],
    written: usize,
}

impl<IO> FloodGuard<IO> {
    pub(crate) fn new(io: IO, floods: &'static Floods) -> Self {
        Self {
            io,
            state: State::Sniffing(0),
            floods,
        }
    }
}

impl State {
    /// Takes the connection's first bytes: past the preface they are frames.
    fn sniff(&mut self, matched: usize, bytes: &[u8]) {
        let n = (PREFACE.len() - matched).min(bytes.len());
        if bytes[..n] != PREFACE[matched..matched + n] {
            *self = State::Off;
        } else if matched + n < PREFACE.len() {
            *self = State::Sniffing(matched + n);
        } else {
            let mut http2 = Box::new(Http2 {
                incoming: Frames::default(),
                outgoing: Frames::default(),
                owed: 0,
                since: Clock::now(),
                last_stream: 0,
            });
            if http2.received(&bytes[n..]) {
                *self = State::Cutting(http2.cut());
            } else {
                *self = State::Http2(http2);
            }
        }
    }
}

impl Http2 {
    /// Counts what the client sent; true once it is a flood.
    fn received(&mut self, bytes: &[u8]) -> bool {
        let mut flood = false;
        self.incoming.feed(bytes, |frame| match frame.kind {
            PING | SETTINGS => {
                self.owed += 1;
                if self.owed < BUDGET {
                    return;
                }
                let now = Clock::now();
                if now - self.since < WINDOW {
                    flood = true;
                } else {
                    self.owed = 0;
                    self.since = now;
                }
            }
            // Streams the client opens have odd ids; h2 refuses the others.
            HEADERS if frame.stream % 2 == 1 => {
                self.last_stream = self.last_stream.max(frame.stream);
            }
            _ => {}
        });
        flood
    }

    /// Takes what h2 wrote: its responses pay for PINGs, and its own flood protections (rapid
    /// reset, CONTINUATION floods) are counted with ours.
    fn sent(&mut self, bytes: &[u8], floods: &'static Floods) {
        self.outgoing.feed(bytes, |frame| match frame.kind {
            DATA | HEADERS => self.owed = self.owed.saturating_sub(1),
            GOAWAY if frame.goaway_code() == Some(ENHANCE_YOUR_CALM) => floods.cut(),
            _ => {}
        });
    }

    fn cut(&self) -> Box<Cut> {
        debug!(
            "closing an HTTP/2 connection that sent {BUDGET} PING or SETTINGS frames more than \
             it was sent responses within {WINDOW:?} (GOAWAY ENHANCE_YOUR_CALM)"
        );
        let mut goaway = [0; 17];
        // Length 8, type GOAWAY, no flags, stream 0; then the last stream and the error code.
        goaway[2] = 8;
        goaway[3] = GOAWAY;
        goaway[9..13].copy_from_slice(&self.last_stream.to_be_bytes());
        goaway[13..].copy_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
        // In the middle of one of h2's frames the GOAWAY cannot be written: the connection is
        // closed without it. h2 writes a frame in several pieces only when the client does
        // not read what it is sent, so such a client would not have read the GOAWAY either.
        let written = if self.outgoing.at_boundary() {
            0
        } else {
            goaway.len()
        };
        Box::new(Cut { goaway, written })
    }
}

impl Cut {
    fn poll_goaway<IO: AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.written < self.goaway.len() {
            let n = ready!(Pin::new(&mut *io).poll_write(cx, &self.goaway[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        Pin::new(io).poll_flush(cx)
    }

    /// Writes the GOAWAY, then fails: the error ends h2's connection, which closes the socket.
    fn poll_fail<IO: AsyncWrite + Unpin, T>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        ready!(self.poll_goaway(io, cx))?;
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "HTTP/2 PING or SETTINGS flood",
        )))
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for FloodGuard<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let State::Cutting(cut) = &mut this.state {
            return cut.poll_fail(&mut this.io, cx);
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        let bytes = &buf.filled()[before..];
        match &mut this.state {
            State::Off | State::Cutting(_) => return Poll::Ready(Ok(())),
            State::Sniffing(matched) => {
                let matched = *matched;
                this.state.sniff(matched, bytes);
            }
            State::Http2(http2) => {
                if http2.received(bytes) {
                    this.state = State::Cutting(http2.cut());
                }
            }
        }
        let State::Cutting(cut) = &mut this.state else {
            return Poll::Ready(Ok(()));
        };
        // What the flood sent is not passed on to h2.
        buf.set_filled(before);
        this.floods.cut();
        cut.poll_fail(&mut this.io, cx)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for FloodGuard<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match &mut this.state {
            State::Off => Pin::new(&mut this.io).poll_write(cx, buf),
            State::Http2(http2) => {
                let n = ready!(Pin::new(&mut this.io).poll_write(cx, buf))?;
                http2.sent(&buf[..n], this.floods);
                Poll::Ready(Ok(n))
            }
            State::Cutting(cut) => cut.poll_fail(&mut this.io, cx),
            State::Sniffing(_) => {
                // The server speaks first only on HTTP/1 (an error answer to a request too
                // short to tell): this is not an HTTP/2 connection.
                this.state = State::Off;
                Pin::new(&mut this.io).poll_write(cx, buf)
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match &mut this.state {
            State::Off => Pin::new(&mut this.io).poll_write_vectored(cx, bufs),
            State::Http2(http2) => {
                let mut n = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, bufs))?;
                let written = n;
                for buf in bufs {
                    let part = n.min(buf.len());
                    http2.sent(&buf[..part], this.floods);
                    n -= part;
                    if n == 0 {
                        break;
                    }
                }
                Poll::Ready(Ok(written))
            }
            State::Cutting(cut) => cut.poll_fail(&mut this.io, cx),
            State::Sniffing(_) => {
                this.state = State::Off;
                Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match &mut this.state {
            State::Cutting(cut) => cut.poll_fail(&mut this.io, cx),
            _ => Pin::new(&mut this.io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let State::Cutting(cut) = &mut this.state {
            ready!(cut.poll_goaway(&mut this.io, cx))?;
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// The worker's count of HTTP/2 connections cut for flooding, by prefork or by h2's own
/// protections: one line at most every [`REPORT_EVERY`] rather than one per connection, so
/// that an attacker's traffic does not become log volume. Each cut is logged at debug.
pub(crate) struct Floods {
    me: Me,
    unreported: AtomicU64,
    reported_at: Mutex<Option<Instant>>,
}

impl Floods {
    pub(super) fn new(me: Me) -> Self {
        Self {
            me,
            unreported: AtomicU64::new(0),
            reported_at: Mutex::new(None),
        }
    }

    /// Counts a cut; reports now if the last report is a second old, or else once it is.
    fn cut(&'static self) {
        let before = self.unreported.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut reported_at = self.reported_at();
        match *reported_at {
            Some(at) if now - at < REPORT_EVERY => {
                // The first cut since the last report sees that the count is reported in time.
                if before == 0 {
                    let due = at + REPORT_EVERY;
                    tokio::spawn(async move {
                        tokio::time::sleep_until(due.into()).await;
                        self.report(&mut self.reported_at(), Instant::now());
                    });
                }
            }
            _ => self.report(&mut reported_at, now),
        }
    }

    fn reported_at(&self) -> MutexGuard<'_, Option<Instant>> {
        // A panic while holding the lock leaves only a time behind: still usable.
        self.reported_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn report(&self, reported_at: &mut Option<Instant>, now: Instant) {
        let cut = self.unreported.swap(0, Ordering::Relaxed);
        if cut == 0 {
            return;
        }
        *reported_at = Some(now);
        // A worker's line, not one of the connection (or h2's span) it was found in.
        warn!(
            parent: None,
            "{}: cut {cut} HTTP/2 connection(s) for flooding since the last report \
             (GOAWAY ENHANCE_YOUR_CALM)",
            self.me
        );
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    use super::super::h2_frames::frame;
    use super::*;

    fn pings(n: usize) -> Vec<u8> {
        frame(PING, 0, 0, b"pingpong").repeat(n)
    }

    /// A guarded server end, and the client's end.
    fn pair() -> (FloodGuard<DuplexStream>, DuplexStream) {
        let floods = Box::leak(Box::new(Floods::new(Me(0))));
        let (client, server) = duplex(1 << 20);
        (FloodGuard::new(server, floods), client)
    }

    /// Reads on the server end until `n` bytes came, or until a read fails.
    async fn serve_reads(server: &mut FloodGuard<DuplexStream>, n: usize) -> io::Result<Vec<u8>> {
        let mut got = Vec::new();
        let mut buf = [0; 4096];
        while got.len() < n {
            let read = server.read(&mut buf).await?;
            got.extend(&buf[..read]);
        }
        Ok(got)
    }

    #[tokio::test]
    async fn http1_is_passed_through_whatever_follows() {
        let (mut server, mut client) = pair();
        let mut sent = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
        sent.extend(pings(1000));
        client.write_all(&sent).await.unwrap();
        assert_eq!(serve_reads(&mut server, sent.len()).await.unwrap(), sent);
        assert!(matches!(server.state, State::Off));
    }

    #[tokio::test]
    async fn a_ping_flood_is_answered_with_goaway_naming_the_last_stream() {
        let (mut server, mut client) = pair();
        let mut sent = PREFACE.to_vec();
        sent.extend(frame(SETTINGS, 0, 0, &[]));
        sent.extend(frame(HEADERS, 5, 3, b"\x82"));
        // With the SETTINGS, one short of the budget.
        sent.extend(pings(BUDGET as usize - 2));
        // Byte by byte through the preface, then in pieces that cut frames anywhere.
        for piece in sent[..PREFACE.len()]
            .chunks(1)
            .chain(sent[PREFACE.len()..].chunks(7))
        {
            client.write_all(piece).await.unwrap();
        }
        let passed = serve_reads(&mut server, sent.len()).await.unwrap();
        assert_eq!(passed, sent);
        // h2's answers to stream 3 pay for one PING more.
        server
            .write_all(&frame(HEADERS, 4, 3, b"\x88"))
            .await
            .unwrap();
        server.write_all(&frame(DATA, 1, 3, b"ok")).await.unwrap();
        client.write_all(&pings(2)).await.unwrap();
        let got = serve_reads(&mut server, 34).await.unwrap();
        assert_eq!(got.len(), 34);
        client.write_all(&pings(1)).await.unwrap();
        let e = serve_reads(&mut server, 1).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted);
        // What the server wrote, then the GOAWAY: last stream 3, ENHANCE_YOUR_CALM.
        let mut answer = frame(HEADERS, 4, 3, b"\x88");
        answer.extend(frame(DATA, 1, 3, b"ok"));
        let mut goaway = 3u32.to_be_bytes().to_vec();
        goaway.extend(ENHANCE_YOUR_CALM.to_be_bytes());
        answer.extend(frame(GOAWAY, 0, 0, &goaway));
        let mut got = vec![0; answer.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, answer);
        assert!(server.write_all(b"more").await.is_err(), "the cut is final");
    }

    #[tokio::test]
    async fn no_goaway_is_written_into_one_of_h2_s_frames() {
        let (mut server, mut client) = pair();
        client.write_all(PREFACE).await.unwrap();
        serve_reads(&mut server, PREFACE.len()).await.unwrap();
        // h2 wrote half a frame when the flood is found.
        let half = &frame(DATA, 0, 1, b"abcdef")[..12];
        server.write_all(half).await.unwrap();
        let flood = pings(BUDGET as usize);
        client.write_all(&flood).await.unwrap();
        assert!(serve_reads(&mut server, flood.len()).await.is_err());
        drop(server);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, half);
    }

    #[tokio::test(start_paused = true)]
    async fn pings_under_the_rate_are_never_cut() {
        let (mut server, mut client) = pair();
        client.write_all(PREFACE).await.unwrap();
        serve_reads(&mut server, PREFACE.len()).await.unwrap();
        // Just under the budget in every window, in bursts.
        let burst = pings(BUDGET as usize / 2 - 1);
        for _ in 0..6 {
            client.write_all(&burst).await.unwrap();
            serve_reads(&mut server, burst.len()).await.unwrap();
            tokio::time::advance(WINDOW / 2).await;
        }
        // A window may end early in a flood, which then takes the next one's budget too.
        let flood = pings(2 * BUDGET as usize);
        client.write_all(&flood).await.unwrap();
        assert!(serve_reads(&mut server, flood.len()).await.is_err());
    }

    #[tokio::test]
    async fn a_server_that_speaks_first_is_not_http2() {
        let (mut server, mut client) = pair();
        server
            .write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            .await
            .unwrap();
        let mut sent = PREFACE.to_vec();
        sent.extend(pings(1000));
        client.write_all(&sent).await.unwrap();
        assert_eq!(serve_reads(&mut server, sent.len()).await.unwrap(), sent);
    }

    proptest::proptest! {
        #[test]
        fn no_bytes_make_the_guard_panic(
            preface in proptest::prelude::any::<bool>(),
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2000),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let (mut server, mut client) = pair();
                let mut sent = if preface { PREFACE.to_vec() } else { Vec::new() };
                sent.extend(&bytes);
                client.write_all(&sent).await.unwrap();
                drop(client);
                let mut got = Vec::new();
                let _ = server.read_to_end(&mut got).await;
                let _ = server.write_all(&bytes).await;
            });
        }
    }
}
