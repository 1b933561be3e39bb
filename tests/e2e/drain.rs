//! Zero-loss drain: under load, for every kind of connection, a graceful stop loses no request
//! the server accepted and never hangs.

use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::h2;
use super::http::{self, Conn};
use super::load::{Load, Tally};
use super::support::procfs::{accept_queue, blocked_in, wait_dead};
use super::support::{Bin, PATIENCE, Server};

/// 32 clients sending as fast as they can on keep-alive connections; TERM at 20 different
/// moments, each on a fresh server.
#[test]
fn term_under_keepalive_load_loses_nothing() {
    let mut total = Tally::default();
    for round in 0..20u64 {
        // Each round prints its own tally; the sum is checked and printed at the end.
        let mut server = Server::start(Bin::Demo, 2);
        let load = Load::keepalive(server.addr, 32, "/");
        load.wait_each_served();
        // The moment of the TERM into the running load, varied on purpose: the subject here.
        thread::sleep(Duration::from_millis((round * 37) % 250));
        server.signal(Signal::SIGTERM);
        load.signalled();
        let (status, _) = server.expect_exit(PATIENCE);
        assert!(status.success(), "round {round}: {status:?}");
        let tally = load.finish();
        tally.assert_nothing_lost(&format!("round {round}"));
        total.add(tally);
    }
    total.assert_nothing_lost("20 rounds of TERM under 32 keep-alive clients");
}

#[test]
fn slow_requests_in_flight_and_steady_load_lose_nothing() {
    let mut server = Server::start(Bin::Demo, 2);
    let addr = server.addr;
    let slow: Vec<_> = (0..8)
        .map(|_| thread::spawn(move || Conn::connect(addr).unwrap().get("/sleep?ms=3000")))
        .collect();
    let load = Load::keepalive(addr, 16, "/");
    server.wait_log_count("/sleep: waiting", 8, PATIENCE);
    load.wait_each_served();
    server.signal(Signal::SIGTERM);
    load.signalled();
    for request in slow {
        let response = request
            .join()
            .unwrap()
            .expect("a slow request in flight completes");
        assert_eq!(response.status, 200);
        assert!(response.closes());
    }
    let (status, _) = server.expect_exit(PATIENCE);
    assert!(status.success());
    load.finish().assert_nothing_lost("slow requests plus load");
}

/// The only worker is blocked while clients queue up in the kernel's accept queue; a TERM
/// arrives. Every queued client is served when the worker wakes, none is reset.
#[test]
fn a_full_accept_backlog_is_served_not_reset() {
    const QUEUED: usize = 32;
    let mut server = Server::builder(Bin::Demo, 1)
        .args(&["--backlog", &QUEUED.to_string()])
        .start();
    let addr = server.addr;
    let worker = server.wait_workers(1, &[])[0];
    let blocker = thread::spawn(move || Conn::connect(addr).unwrap().get("/block?ms=1500"));
    server.wait_until("the worker blocked in /block", || {
        blocked_in(worker, "nanosleep").then_some(())
    });
    let mut queued: Vec<Conn> = (0..QUEUED)
        .map(|_| {
            let mut conn = Conn::connect(addr).expect("the kernel completes the handshake");
            conn.send(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
            conn
        })
        .collect();
    server.wait_until(format!("{QUEUED} connections in the accept queue"), || {
        (accept_queue(addr) == Some(QUEUED)).then_some(())
    });
    server.signal(Signal::SIGTERM);
    for (i, conn) in queued.iter_mut().enumerate() {
        let response = conn
            .read_response(false)
            .unwrap_or_else(|f| panic!("queued client {i} lost: {f:?}\n{}", server.log()));
        assert_eq!(response.status, 200);
        assert!(response.closes(), "queued client {i} was not told to close");
    }
    assert_eq!(blocker.join().unwrap().unwrap().status, 200);
    let (status, _) = server.expect_exit(PATIENCE);
    assert!(status.success());
}

#[test]
fn http2_streams_open_at_the_signal_finish_and_idle_connections_get_goaway_at_once() {
    use http_body_util::BodyExt;

    // A linger far longer than the streams: an idle HTTP/2 connection kept for it would be
    // closed only after them.
    let mut server = Server::builder(Bin::Demo, 1)
        .args(&["--linger", "5s"])
        .start();
    let rt = super::support::runtime();
    let url = |path: &str| server.url(path);
    rt.block_on(async {
        let connect = || h2::connect(server.addr);
        let get = |send: &mut h2::Sender, path: &str| h2::get(send, &url(path));
        // One connection with ten slow streams in flight, one idle after a request.
        let (mut busy, busy_conn) = connect().await;
        let (mut idle, idle_conn) = connect().await;
        assert_eq!(get(&mut idle, "/").await.unwrap().status(), 200);
        let streams: Vec<_> = (0..10)
            .map(|_| tokio::spawn(get(&mut busy, "/sleep?ms=1500")))
            .collect();
        server.wait_log_count("/sleep: waiting", 10, PATIENCE);
        server.signal(Signal::SIGTERM);
        // The idle connection is told to go away at once, not after the HTTP/1 linger: while
        // the streams are still in flight.
        tokio::time::timeout(PATIENCE, idle_conn)
            .await
            .expect("the idle HTTP/2 connection was never closed")
            .unwrap()
            .unwrap();
        assert!(
            streams.iter().all(|s| !s.is_finished()),
            "the idle HTTP/2 connection was closed only after the streams"
        );
        for stream in streams {
            let response = tokio::time::timeout(PATIENCE, stream)
                .await
                .unwrap()
                .unwrap()
                .expect("a stream open at the signal completes");
            assert_eq!(response.status(), 200);
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"slept 1500 ms\n");
        }
        tokio::time::timeout(PATIENCE, busy_conn)
            .await
            .expect("the busy connection closes after its streams")
            .unwrap()
            .unwrap();
    });
    let (status, _) = server.expect_exit(PATIENCE);
    assert!(status.success());
}

#[test]
fn websockets_get_going_away_and_event_streams_end_cleanly() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    let mut server = Server::start(Bin::Demo, 2);
    let addr = server.addr;
    let (ticked, first_ticks) = std::sync::mpsc::channel();
    let streams: Vec<_> = (0..5)
        .map(|i| {
            let ticked = ticked.clone();
            thread::spawn(move || {
                let mut conn = Conn::connect(addr).unwrap();
                let accept = [("Accept", "text/event-stream")];
                conn.request_streaming("GET", "/sse", &accept, |chunk| {
                    if String::from_utf8_lossy(chunk).contains("data: tick") {
                        let _ = ticked.send(i);
                    }
                })
            })
        })
        .collect();
    let rt = super::support::runtime();
    let closes = rt.block_on(async {
        let mut sockets = Vec::new();
        for _ in 0..5 {
            let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
                .await
                .unwrap();
            // A first tick: the handler runs.
            let first = tokio::time::timeout(PATIENCE, ws.next()).await.unwrap();
            assert!(matches!(first, Some(Ok(Message::Text(_)))), "{first:?}");
            sockets.push(ws);
        }
        // Every event stream is streaming: each has sent an event.
        let mut streaming = std::collections::HashSet::new();
        while streaming.len() < 5 {
            streaming.insert(
                first_ticks
                    .recv_timeout(PATIENCE)
                    .expect("an event on each stream"),
            );
        }
        server.signal(Signal::SIGTERM);
        let signalled = Instant::now();
        let mut closes = Vec::new();
        for mut ws in sockets {
            let frame = loop {
                match tokio::time::timeout(PATIENCE, ws.next()).await.unwrap() {
                    Some(Ok(Message::Close(frame))) => break frame,
                    Some(Ok(_)) => {}
                    other => panic!("no Close frame: {other:?}"),
                }
            };
            closes.push((frame.map(|f| f.code), signalled.elapsed()));
            // Answer the Close, as a well-behaved client does; drain the stream to the end.
            while let Ok(Some(_)) = tokio::time::timeout(PATIENCE, ws.next()).await {}
        }
        closes
    });
    for (code, after) in closes {
        assert_eq!(code, Some(CloseCode::Away));
        assert!(
            after < Duration::from_millis(500),
            "Close came {after:?} after TERM"
        );
    }
    for stream in streams {
        let response = stream
            .join()
            .unwrap()
            .expect("the event stream ends cleanly");
        assert_eq!(response.status, 200);
        assert!(
            response.text().contains("data: tick"),
            "{}",
            response.text()
        );
    }
    let (status, took) = server.expect_exit(PATIENCE);
    assert!(status.success());
    assert!(took < Duration::from_secs(2), "stop took {took:?}");
}

/// A websocket handler that ignores the drain and never touches its socket: only the deadline
/// ends it, and the stop does end.
#[test]
fn a_handler_that_ignores_the_drain_is_cut_at_the_deadline() {
    let mut server = Server::builder(Bin::Demo, 1)
        .args(&["--graceful-timeout", "2s"])
        .start();
    let rt = super::support::runtime();
    let _ws = rt.block_on(async {
        tokio_tungstenite::connect_async(format!("ws://{}/ws-quiet", server.addr))
            .await
            .unwrap()
            .0
    });
    server.signal(Signal::SIGTERM);
    let (status, took) = server.expect_exit(PATIENCE);
    assert!(status.success());
    assert!(took >= Duration::from_millis(1900), "cut early: {took:?}");
    assert!(took < Duration::from_millis(3000), "stop took {took:?}");
    server.wait_log("cutting 1 connection(s)", PATIENCE);
}

/// systemd's default `KillMode=control-group` signals every process at once.
#[test]
fn term_to_the_whole_process_group_loses_nothing() {
    let mut server = Server::start(Bin::Demo, 2);
    let load = Load::keepalive(server.addr, 16, "/");
    load.wait_each_served();
    server.signal_group(Signal::SIGTERM);
    load.signalled();
    let (status, _) = server.expect_exit(PATIENCE);
    assert!(status.success());
    load.finish()
        .assert_nothing_lost("TERM to the process group");
}

/// The master is killed outright: its workers notice, finish what they have, and exit; none
/// keeps serving, and the port is free afterwards.
#[test]
fn workers_drain_and_exit_when_the_master_is_killed() {
    let server = Server::builder(Bin::Demo, 2)
        .args(&["--graceful-timeout", "5s"])
        .start();
    let workers = server.wait_workers(2, &[]);
    let addr = server.addr;
    let slow: Vec<_> = (0..4)
        .map(|_| thread::spawn(move || Conn::connect(addr).unwrap().get("/sleep?ms=1500")))
        .collect();
    let load = Load::keepalive(addr, 8, "/");
    server.wait_log_count("/sleep: waiting", 4, PATIENCE);
    load.wait_each_served();
    server.signal(Signal::SIGKILL);
    load.signalled();
    for request in slow {
        let response = request
            .join()
            .unwrap()
            .expect("a request in flight completes");
        assert_eq!(response.status, 200);
    }
    assert!(
        wait_dead(&workers, Duration::from_secs(5)),
        "workers outlived their master's deadline\n{}",
        server.log()
    );
    load.finish().assert_nothing_lost("master killed");
    std::net::TcpListener::bind(addr).expect("the port is free again");
}

#[test]
fn shutdown_delay_keeps_serving_while_health_checks_fail() {
    let mut server = Server::builder(Bin::Demo, 2)
        .args(&["--shutdown-delay", "1s", "--health-path", "/healthz"])
        .start();
    assert_eq!(http::get(server.addr, "/healthz").status, 200);
    assert_eq!(http::get(server.addr, "/healthz").text(), "ok\n");
    let mut keepalive = Conn::connect(server.addr).unwrap();
    assert_eq!(keepalive.get("/").unwrap().status, 200);
    server.signal(Signal::SIGTERM);
    let signalled = Instant::now();
    server.wait_log("shutdown delay", PATIENCE);
    // During the delay: health fails, everything else is served normally, new connections too.
    assert_eq!(http::get(server.addr, "/healthz").status, 503);
    let normal = keepalive.get("/").unwrap();
    assert_eq!(normal.status, 200);
    assert!(
        !normal.closes(),
        "served with Connection: close during the delay"
    );
    assert_eq!(http::get(server.addr, "/").text(), "Hello, World!");
    assert!(signalled.elapsed() < Duration::from_millis(900));
    drop(keepalive);
    let (status, _) = server.expect_exit(PATIENCE);
    assert!(status.success());
    let took = signalled.elapsed();
    assert!(
        took >= Duration::from_millis(950),
        "the delay was skipped: {took:?}"
    );
    assert!(took < Duration::from_millis(2500), "stop took {took:?}");
}

/// The control for every test above: a server killed outright does lose the requests in
/// flight, and the tool counts them.
#[test]
fn the_load_tool_counts_what_a_killed_server_loses() {
    let server = Server::start(Bin::Demo, 2);
    let load = Load::keepalive(server.addr, 8, "/sleep?ms=300");
    load.wait_each_served();
    server.signal_group(Signal::SIGKILL);
    load.signalled();
    let tally = load.finish();
    assert!(tally.ok > 0, "{tally:?}");
    // Each client had one request in flight. A client may also reconnect to a listener of a
    // dying worker in the instant before the signal is recorded; that loss counts too.
    assert!(
        tally.lost >= 8,
        "each client had one request in flight: {tally:?}"
    );
}
