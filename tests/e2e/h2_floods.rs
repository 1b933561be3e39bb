//! Hostile HTTP/2 traffic (docs/security.md, "HTTP/2 floods"): floods of frames that cost the
//! server work and the attacker nothing are cut with GOAWAY `ENHANCE_YOUR_CALM`, the worker
//! serves its other clients meanwhile, and the log does not grow a line per attacking
//! connection.

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::frames;
use super::http;
use super::support::procfs::cpu_time;
use super::support::{Bin, PATIENCE, Server};

/// How long a flood may go on before the test calls it not cut. A flood reaches the budget
/// in well under a millisecond.
const CUT_WITHIN: Duration = Duration::from_secs(5);

/// The server's log line that counts connections cut for flooding.
const REPORT: &str = "HTTP/2 connection(s) for flooding since the last report";

/// A frame of `kind` that asks for an acknowledgement: a PING, or an empty SETTINGS.
fn asking(kind: u8) -> Vec<u8> {
    let payload: &[u8] = if kind == frames::PING {
        b"pingpong"
    } else {
        b""
    };
    frames::encode(kind, 0, 0, payload)
}

/// What a flood on a new connection came to.
struct Flood {
    /// The GOAWAY's last stream id and error code, if one came before the connection closed.
    goaway: Option<(u32, u32)>,
    /// From the first frame sent to the GOAWAY, or to the connection's end.
    took: Duration,
    /// Acknowledgements of the flood's frames that came back.
    answered: usize,
}

/// Sends up to `n` frames of `kind` on a new connection, from a thread of its own, after one
/// request (stream 1), while this thread reads what the server answers, as a flooder that
/// keeps its socket drained would.
fn flood(addr: SocketAddr, kind: u8, n: usize) -> Flood {
    let mut tcp = frames::connect(addr);
    let flags = frames::END_HEADERS | frames::END_STREAM;
    frames::write(&mut tcp, frames::HEADERS, flags, 1, &frames::get("/"));
    let mut writer = tcp.try_clone().unwrap();
    writer.set_write_timeout(Some(PATIENCE)).unwrap();
    let started = Instant::now();
    let sending = std::thread::spawn(move || {
        let batch = asking(kind).repeat(1000);
        for _ in 0..n.div_ceil(1000) {
            if writer.write_all(&batch).is_err() {
                break;
            }
        }
    });
    let mut answered = 0;
    let mut goaway = None;
    while let Some(frame) = frames::read(&mut tcp) {
        goaway = frame.goaway();
        if goaway.is_some() {
            break;
        }
        answered += usize::from(frame.kind == kind && frame.stream == 0);
    }
    let took = started.elapsed();
    // Also ends a writer blocked on a server that neither reads nor closes.
    let _ = tcp.shutdown(Shutdown::Both);
    sending.join().unwrap();
    Flood {
        goaway,
        took,
        answered,
    }
}

/// Floods connection after connection with `kind` frames while a client of the same worker
/// makes requests, and checks every flood is cut and every request answered.
fn flood_is_cut_and_the_worker_serves_on(kind: u8) {
    let server = Server::start(Bin::Demo, 1);
    let workers = server.workers();
    let stop = Arc::new(AtomicBool::new(false));
    let attacker = {
        let stop = Arc::clone(&stop);
        let addr = server.addr;
        std::thread::spawn(move || {
            let mut floods = Vec::new();
            while floods.is_empty() || !stop.load(Ordering::Relaxed) {
                floods.push(flood(addr, kind, 1_000_000));
            }
            floods
        })
    };
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(http::get(server.addr, "/").status, 200);
        assert!(started.elapsed() < CUT_WITHIN, "{:?}", started.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    let floods = attacker.join().unwrap();
    for flood in &floods {
        // Stream 1, the request sent before the flood, is the last the server may have
        // processed.
        assert_eq!(flood.goaway, Some((1, frames::ENHANCE_YOUR_CALM)));
        assert!(flood.took < CUT_WITHIN, "cut after {:?}", flood.took);
        assert!(flood.answered < 1000, "{} answered", flood.answered);
    }
    assert_eq!(server.workers(), workers, "a worker was replaced");
    // The first cut is reported at once.
    let report = server.wait_log(REPORT, PATIENCE);
    assert!(
        report.contains(&format!("worker 1 (pid {})", workers[0])),
        "{report}"
    );
}

#[test]
fn a_ping_flood_is_cut_and_the_worker_serves_on() {
    flood_is_cut_and_the_worker_serves_on(frames::PING);
}

#[test]
fn a_settings_flood_is_cut_and_the_worker_serves_on() {
    flood_is_cut_and_the_worker_serves_on(frames::SETTINGS);
}

#[test]
fn a_ping_flood_costs_the_worker_little_cpu() {
    let server = Server::start(Bin::Demo, 1);
    let worker = server.workers()[0];
    let before = cpu_time(worker);
    // Answering five million PINGs takes a worker seconds of CPU.
    let flood = flood(server.addr, frames::PING, 5_000_000);
    assert!(
        flood.goaway.is_some(),
        "not cut: {} answered",
        flood.answered
    );
    let spent = cpu_time(worker) - before;
    assert!(spent < Duration::from_millis(500), "{spent:?}");
}

#[test]
fn pings_at_a_client_s_pace_are_answered() {
    let server = Server::start(Bin::Demo, 1);
    let mut tcp = frames::connect(server.addr);
    let flags = frames::END_HEADERS | frames::END_STREAM;
    let acked = |tcp: &mut TcpStream, payload: &[u8; 8]| loop {
        let frame = frames::read(tcp).expect("the connection closed");
        assert_eq!(frame.goaway(), None);
        if frame.kind == frames::PING {
            assert_eq!(frame.payload, payload);
            return;
        }
    };
    // A keepalive ten times a second, more than any client sends.
    for i in 0..10u64 {
        frames::write(&mut tcp, frames::PING, 0, 0, &i.to_be_bytes());
        acked(&mut tcp, &i.to_be_bytes());
        std::thread::sleep(Duration::from_millis(100));
    }
    // One PING per response, as fast as they come (gRPC's bandwidth estimate): the responses
    // pay for them, well past the budget of PINGs alone.
    for i in 0..300u32 {
        let stream = 2 * i + 1;
        frames::write(&mut tcp, frames::HEADERS, flags, stream, &frames::get("/"));
        frames::write(&mut tcp, frames::PING, 0, 0, &u64::from(i).to_be_bytes());
        acked(&mut tcp, &u64::from(i).to_be_bytes());
    }
    // The connection still serves.
    frames::write(&mut tcp, frames::HEADERS, flags, 601, &frames::get("/"));
    loop {
        let frame = frames::read(&mut tcp).expect("the connection closed");
        assert_eq!(frame.goaway(), None);
        if frame.kind == frames::HEADERS && frame.stream == 601 {
            break;
        }
    }
    assert_eq!(server.count_log(REPORT), 0, "{}", server.log());
}

#[test]
fn a_rapid_reset_flood_is_cut_without_a_warning_per_connection() {
    let server = Server::start(Bin::Demo, 1);
    let connections = 10;
    let started = Instant::now();
    for _ in 0..connections {
        let mut tcp = frames::connect(server.addr);
        // Each stream reset before the server took it: hyper allows 20 such at a time.
        let mut flood = Vec::new();
        for i in 0..100u32 {
            let stream = 2 * i + 1;
            let flags = frames::END_HEADERS | frames::END_STREAM;
            flood.extend(frames::encode(
                frames::HEADERS,
                flags,
                stream,
                &frames::get("/"),
            ));
            let cancel = frames::CANCEL.to_be_bytes();
            flood.extend(frames::encode(frames::RST_STREAM, 0, stream, &cancel));
        }
        let _ = tcp.write_all(&flood);
        let goaway = std::iter::from_fn(|| frames::read(&mut tcp)).find_map(|f| f.goaway());
        assert_eq!(
            goaway.map(|(_, code)| code),
            Some(frames::ENHANCE_YOUR_CALM)
        );
    }
    let span = started.elapsed();
    // Counted in one line a second at most; the last count within a second of the last cut.
    let reported = || -> usize {
        let log = server.log();
        let counts = log.lines().filter_map(|line| {
            let (_, after) = line.split_once(": cut ")?;
            after.split_once(' ')?.0.parse::<usize>().ok()
        });
        counts.sum()
    };
    server.wait_until("every cut reported", || {
        (reported() >= connections).then_some(())
    });
    assert_eq!(reported(), connections);
    let log = server.log();
    let warnings: Vec<_> = log
        .lines()
        .filter(|line| line.contains("WARN") && !line.contains(REPORT))
        .collect();
    assert!(warnings.is_empty(), "{warnings:#?}");
    // The first cut is reported at once, the others once a second.
    let lines = server.count_log(REPORT) as u64;
    assert!(
        lines <= 2 + span.as_secs(),
        "{lines} reports in {span:?}: {log}"
    );
}
