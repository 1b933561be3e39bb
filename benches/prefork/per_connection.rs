//! Section `connections`: what an idle connection costs in memory. Each server is given N
//! keep-alive connections that are each answered one `GET /` and then left idle, then N HTTP/2
//! connections (prior knowledge) answered the same way, then N open websockets that send
//! nothing (the demo's `/ws-quiet`); the figure is the growth of the resident memory of all the
//! server's processes, per connection, once the connections have been idle long enough for
//! prefork to park them (src/worker/parking.rs), and right after they were answered. prefork
//! runs one worker, so that its figure and the single-process servers' are counted alike.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::Bench;
use crate::report::{Row, Table};
use crate::server;
use crate::support::procfs::mem;
use crate::support::{PATIENCE, Server, wait_for};

/// Connections opened per measurement.
const CONNECTIONS: usize = 2000;

/// Starts one of the servers compared.
type Start = fn() -> Server;

/// prefork's settings here: room for every connection, and no idle timeout during the count.
const PREFORK: &[&str] = &["--worker-connections", "20000", "--keepalive", "60s"];

/// The baseline's: no idle timeout during the count either.
const BASELINE: &[&str] = &["--keepalive", "60"];

/// The target of issue 18, per idle keep-alive connection.
const TARGET_KIB: f64 = 8.0;

/// How long the connections are left idle before the second count: at least this, 3 s (a
/// connection is parked one to two seconds after its answer, and the worker trims its heap at
/// its next look, a second later), and until the memory has not moved for [`STEADY`].
const IDLE_AT_LEAST: Duration = Duration::from_secs(3);
const STEADY: Duration = Duration::from_secs(1);
const IDLE_AT_MOST: Duration = Duration::from_secs(10);

pub fn memory(_: &Bench) -> Table {
    let mut table = Table::new(format!(
        "9. Memory per idle connection: resident memory of the server's processes grown by \
         {CONNECTIONS} connections, each answered once (HTTP/1.1, or HTTP/2 by prior knowledge) \
         and then idle, or upgraded to a websocket that sends nothing; prefork with one worker"
    ));
    let pairs: [(&str, Start, Start); 2] = [
        (
            "demo (axum)",
            || server::demo(1, PREFORK),
            || server::baseline_with(1, BASELINE),
        ),
        (
            "bare service_fn",
            || server::bare_with(1, PREFORK),
            || server::bare_baseline_with(1, BASELINE),
        ),
    ];
    for (label, prefork, baseline) in pairs {
        let pre = per_connection(prefork(), Kind::KeepAlive);
        let base = per_connection(baseline(), Kind::KeepAlive);
        table.row(
            Row::new(format!("{label}: KiB per idle keep-alive connection"))
                .value(format!("{:.1}", pre.idle))
                .baseline(format!("{:.1}", base.idle))
                .ratio(pre.idle / base.idle)
                .target(format!("<= {TARGET_KIB} KiB"), pre.idle <= TARGET_KIB),
        );
        table.row(
            Row::new(format!("{label}: KiB per connection just answered"))
                .value(format!("{:.1}", pre.answered))
                .baseline(format!("{:.1}", base.answered))
                .ratio(pre.answered / base.answered),
        );
    }
    let pre = per_connection(server::demo(1, PREFORK), Kind::Http2);
    let base = per_connection(server::baseline_with(1, BASELINE), Kind::Http2);
    table.row(
        Row::new("demo (axum): KiB per idle HTTP/2 connection (not parked)")
            .value(format!("{:.1}", pre.idle))
            .baseline(format!("{:.1}", base.idle))
            .ratio(pre.idle / base.idle),
    );
    let websocket = per_connection(server::demo(1, PREFORK), Kind::Websocket);
    for (when, kib) in [
        ("idle", websocket.idle),
        ("just opened", websocket.answered),
    ] {
        table.row(
            Row::new(format!("demo (axum): KiB per open websocket, {when}"))
                .value(format!("{kib:.1}"))
                .baseline("-")
                .ratio_text("-"),
        );
    }
    table.note(
        "baseline: the same service in one process (examples/baseline.rs, which has no \
         websocket route); ratio: prefork's memory per connection over the baseline's, lower is \
         better; idle: counted once the memory has been steady for 1 s, at least 3 s after the \
         last answer; just answered: counted right after it",
    );
    table
}

/// The growth of a server's resident memory, in KiB per connection.
struct PerConnection {
    answered: f64,
    idle: f64,
}

/// What each connection counted is.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// HTTP/1.1, `GET /` answered.
    KeepAlive,
    /// HTTP/1.1 upgraded by `GET /ws-quiet` to a websocket that sends nothing.
    Websocket,
    /// HTTP/2 by prior knowledge, `GET /` answered.
    Http2,
}

/// The growth of the server's resident memory for [`CONNECTIONS`] connections of `kind`.
fn per_connection(server: Server, kind: Kind) -> PerConnection {
    let pids = || {
        let mut pids = server.processes();
        pids.dedup();
        pids
    };
    wait_for("the server answering", || {
        server::probe(server.addr, "/", PATIENCE).ok()
    });
    let rss = || -> u64 { pids().iter().filter_map(|p| mem(*p)).map(|m| m.rss).sum() };
    let before = rss();
    let held: Vec<TcpStream> = (0..CONNECTIONS).map(|_| open(server.addr, kind)).collect();
    let answered = rss();
    let idle = steady(rss);
    drop(held);
    drop(server);
    let per = |after: u64| after.saturating_sub(before) as f64 / 1024.0 / CONNECTIONS as f64;
    PerConnection {
        answered: per(answered),
        idle: per(idle),
    }
}

/// What `rss` says once it has not moved for [`STEADY`], looking at least [`IDLE_AT_LEAST`]
/// and at most [`IDLE_AT_MOST`] from now.
fn steady(rss: impl Fn() -> u64) -> u64 {
    let started = Instant::now();
    let mut last = (rss(), Instant::now());
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = rss();
        if now != last.0 {
            last = (now, Instant::now());
        }
        let waited = started.elapsed();
        if waited >= IDLE_AT_MOST || (waited >= IDLE_AT_LEAST && last.1.elapsed() >= STEADY) {
            return now;
        }
    }
}

/// A connection of `kind`, answered once or upgraded.
fn open(addr: SocketAddr, kind: Kind) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(PATIENCE))
        .expect("a read timeout");
    let request: Vec<u8> = match kind {
        Kind::KeepAlive => b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n".to_vec(),
        Kind::Websocket => b"GET /ws-quiet HTTP/1.1\r\nHost: bench\r\n\
              Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            .to_vec(),
        Kind::Http2 => http2_get(),
    };
    tcp.write_all(&request).expect("send");
    // The head, and for a GET the short body after it.
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tcp.read(&mut buf).expect("a response");
        assert!(n > 0, "the server closed a connection");
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen);
        if kind == Kind::Websocket && text.contains("\r\n\r\n") {
            assert!(text.starts_with("HTTP/1.1 101"), "{text}");
            return tcp;
        }
        if kind != Kind::Websocket && text.contains("Hello, World!") {
            return tcp;
        }
    }
}

/// The HTTP/2 preface, empty SETTINGS, and `GET /` on stream 1, its header block in HPACK's
/// static table (`:method GET`, `:path /`, `:scheme http`) with a one-letter `:authority`.
fn http2_get() -> Vec<u8> {
    let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
        let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        frame.extend_from_slice(&[kind, flags]);
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    };
    const SETTINGS: u8 = 4;
    const HEADERS: u8 = 1;
    const END_STREAM_AND_HEADERS: u8 = 0x5;
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend(frame(SETTINGS, 0, 0, &[]));
    let block = [0x82, 0x84, 0x86, 0x41, 1, b'b'];
    bytes.extend(frame(HEADERS, END_STREAM_AND_HEADERS, 1, &block));
    bytes
}
