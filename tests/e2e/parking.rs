//! Idle HTTP/1 keep-alive connections give hyper's buffers back (src/worker/parking.rs): a
//! connection idle for a second is parked, and its next request, whole, in pieces or
//! pipelined, is answered as if nothing happened; it still closes at its keep-alive timeout and
//! at a drain. What it saves is measured in `memory.rs`.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::http::Conn;
use super::support::{Bin, PATIENCE, Server};

/// The server's debug log says how many idle connections each sweep asked to park.
fn demo(args: &[&str]) -> Server {
    Server::builder(Bin::Demo, 1)
        .args(&["--log-level", "debug"])
        .args(args)
        .start()
}

/// Waits until the worker's sweeps have asked at least `n` idle connections to park.
pub(super) fn wait_asked(server: &Server, n: usize) {
    server.wait_until(format!("{n} idle connections asked to park"), || {
        let asked: usize = server
            .log()
            .lines()
            .filter_map(|line| {
                let (_, rest) = line.split_once("asked ")?;
                rest.split_once(" idle keep-alive")?.0.parse::<usize>().ok()
            })
            .sum();
        (asked >= n).then_some(())
    });
}

#[test]
fn parked_connections_answer_their_next_requests_whole_in_pieces_and_pipelined() {
    let server = demo(&["--keepalive", "60s"]);
    let mut plain = Conn::connect(server.addr).unwrap();
    assert_eq!(plain.get("/").unwrap().text(), "Hello, World!");
    // A body read to its end leaves the connection between requests.
    let mut posted = Conn::connect(server.addr).unwrap();
    let echoed = posted
        .send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nping")
        .and_then(|()| posted.read_response(false))
        .unwrap();
    assert_eq!(echoed.text(), "ping");
    // Part of a next request already read: the connection stays with hyper.
    let mut started = Conn::connect(server.addr).unwrap();
    assert_eq!(started.get("/").unwrap().status, 200);
    started.send(b"GET /pi").unwrap();

    wait_asked(&server, 3);

    plain
        .send(b"GET /pid HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let pid = plain.read_response(false).unwrap();
    assert_eq!(pid.text(), server.workers()[0].to_string());
    assert_eq!(plain.read_response(false).unwrap().text(), "Hello, World!");

    posted.send(b"POST /echo HTTP/1.1\r\n").unwrap();
    posted
        .send(b"Host: t\r\nContent-Length: 5\r\n\r\npo")
        .unwrap();
    posted.send(b"ng!").unwrap();
    assert_eq!(posted.read_response(false).unwrap().text(), "pong!");

    started.send(b"d HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(
        started.read_response(false).unwrap().text(),
        server.workers()[0].to_string()
    );
}

#[test]
fn a_parked_connection_closes_at_its_keepalive_timeout() {
    let server = demo(&["--keepalive", "2s"]);
    let mut conn = Conn::connect(server.addr).unwrap();
    assert_eq!(conn.get("/").unwrap().status, 200);
    let answered = Instant::now();
    wait_asked(&server, 1);
    assert!(
        conn.closed_within(Duration::from_secs(3)),
        "still open 3 s after it was parked"
    );
    let closed = answered.elapsed();
    assert!(
        closed >= Duration::from_millis(1900),
        "closed {closed:?} after its answer, before the keep-alive timeout"
    );
    assert!(
        closed < Duration::from_millis(2900),
        "closed after {closed:?}"
    );
}

#[test]
fn term_answers_a_parked_connection_in_the_linger_and_closes_the_others() {
    let mut server = demo(&["--keepalive", "60s", "--linger", "2s"]);
    let mut conns: Vec<Conn> = (0..10)
        .map(|_| {
            let mut conn = Conn::connect(server.addr).unwrap();
            assert_eq!(conn.get("/").unwrap().status, 200);
            conn
        })
        .collect();
    wait_asked(&server, conns.len());
    server.signal(Signal::SIGTERM);
    server.wait_log("connection(s), deadline in", PATIENCE);
    let last = conns[0].get("/").expect("answered in the linger");
    assert_eq!(last.text(), "Hello, World!");
    assert!(
        last.closes(),
        "an answer in the drain says Connection: close"
    );
    let (status, took) = server.expect_exit(PATIENCE);
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(3), "stop took {took:?}");
    for conn in &mut conns[1..] {
        assert!(conn.closed_within(Duration::from_secs(1)));
    }
}
