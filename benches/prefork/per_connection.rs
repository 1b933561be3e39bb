//! Section `connections`: what an idle connection costs in memory. Each server is given N
//! keep-alive connections that are each answered one `GET /` and then left idle, then N open
//! websockets that send nothing (the demo's `/ws-quiet`); the figure is the growth of the
//! resident memory of all the server's processes, per connection, once the connections have
//! been idle long enough for prefork to park them (src/worker/parking.rs), and right after
//! they were answered. prefork runs one worker, so that its figure and the single-process
//! servers' are counted alike.

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
        "8. Memory per idle connection: resident memory of the server's processes grown by \
         {CONNECTIONS} connections, each answered once and then idle, or upgraded to a websocket \
         that sends nothing; prefork with one worker"
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
        let pre = per_connection(prefork(), "/", false);
        let base = per_connection(baseline(), "/", false);
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
    let websocket = per_connection(server::demo(1, PREFORK), "/ws-quiet", true);
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

/// The growth of the server's resident memory for [`CONNECTIONS`] connections to `path`, each
/// upgraded to a websocket when `websocket`.
fn per_connection(server: Server, path: &str, websocket: bool) -> PerConnection {
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
    let held: Vec<TcpStream> = (0..CONNECTIONS)
        .map(|_| open(server.addr, path, websocket))
        .collect();
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

/// A connection that has been answered once (`GET path`), or upgraded to a websocket.
fn open(addr: SocketAddr, path: &str, websocket: bool) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(PATIENCE))
        .expect("a read timeout");
    let upgrade = if websocket {
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    } else {
        ""
    };
    write!(tcp, "GET {path} HTTP/1.1\r\nHost: bench\r\n{upgrade}\r\n").expect("send");
    // The head, and for a plain GET the short body after it.
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tcp.read(&mut buf).expect("a response");
        assert!(n > 0, "the server closed a connection");
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen);
        if websocket && text.contains("\r\n\r\n") {
            assert!(text.starts_with("HTTP/1.1 101"), "{text}");
            return tcp;
        }
        if !websocket && text.ends_with("Hello, World!") {
            return tcp;
        }
    }
}
