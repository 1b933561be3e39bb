//! The connection limit (`--worker-connections`): a full worker leaves new connections in the
//! queue for its siblings, still serves its own, and takes connections again once one closes;
//! with no sibling to take them, or out of descriptors, it closes idle keep-alive connections
//! to serve new clients.

use std::time::Duration;

use super::http::{Conn, Failure};
use super::support::procfs::sockets;
use super::support::{Bin, PATIENCE, Server};

/// Opens a keep-alive connection and has it answered, so the worker surely holds it; returns
/// it with the pid of the worker that answered.
fn held(server: &Server) -> (Conn, String) {
    let mut conn = Conn::connect(server.addr).unwrap();
    let response = conn.get("/pid").unwrap();
    assert_eq!(response.status, 200);
    (conn, response.text())
}

#[test]
fn a_full_worker_leaves_new_connections_to_its_sibling_and_serves_its_own() {
    let server = Server::builder(Bin::Demo, 2)
        .args(&["--worker-connections", "1"])
        .start();
    let (mut first, a) = held(&server);
    let (mut second, b) = held(&server);
    assert_ne!(a, b, "a worker at its limit took another connection");

    // Both full, and with a request in flight on each, so that neither has an idle
    // connection to shed: a third connection waits in the queue, unanswered.
    first
        .send(b"GET /sleep?ms=3000 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    second
        .send(b"GET /sleep?ms=30000 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    server.wait_log_count("/sleep: waiting", 2, PATIENCE);
    let mut third = Conn::connect(server.addr).unwrap();
    third.read_timeout(Duration::from_millis(300));
    assert!(
        matches!(third.get("/pid"), Err(Failure::Timeout)),
        "a worker past its limit answered"
    );

    // Once one closes, its worker takes the waiting connection.
    drop(second);
    third.read_timeout(PATIENCE);
    let answer = third
        .read_response(false)
        .expect("served once there was room");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), b);
    // The other still serves the connection it holds.
    let slept = first.read_response(false).unwrap();
    assert_eq!(slept.text(), "slept 3000 ms\n");
    assert_eq!(first.get("/pid").unwrap().text(), a);
}

#[test]
fn the_descriptor_limit_is_raised_and_logged() {
    let server = Server::start(Bin::Demo, 1);
    let line = server.wait_log("descriptor limit:", PATIENCE);
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    assert!(
        line.contains(&format!("descriptor limit: {hard} per process")),
        "{line}"
    );
    let worker = server.wait_workers(1, &[])[0];
    let limits = std::fs::read_to_string(format!("/proc/{worker}/limits")).unwrap();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap();
    assert_eq!(soft, hard.to_string(), "the worker did not inherit it");
}

#[test]
fn a_full_worker_with_no_sibling_sheds_idle_keep_alive_connections_for_a_new_client() {
    use std::time::Instant;

    const LIMIT: usize = 20;
    // Keep-alive far longer than the test: an idle connection only closes if it is shed.
    let server = Server::builder(Bin::Demo, 1)
        .args(&[
            "--worker-connections",
            &LIMIT.to_string(),
            "--keepalive",
            "120s",
        ])
        .start();
    // One connection with a request in flight, longer than the new client may wait; the rest
    // idle between requests.
    let mut busy = Conn::connect(server.addr).unwrap();
    busy.send(b"GET /sleep?ms=6000 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    server.wait_log("/sleep: waiting", PATIENCE);
    let mut idle: Vec<Conn> = (1..LIMIT).map(|_| held(&server).0).collect();

    let started = Instant::now();
    let mut new = Conn::connect(server.addr).unwrap();
    let answer = new.get("/pid").expect("the new client is served");
    let took = started.elapsed();
    assert_eq!(answer.status, 200);
    assert!(took < Duration::from_secs(5), "served after {took:?}");

    // Room was made by closing idle connections; they were closed, not reset mid-answer.
    let mut shed = 0;
    for conn in &mut idle {
        shed += usize::from(conn.closed_within(Duration::from_millis(100)));
    }
    assert!(shed >= 1, "no idle connection was closed");
    // The one with a request in flight is answered.
    let slept = busy
        .read_response(false)
        .expect("the busy connection's answer");
    assert_eq!(slept.status, 200);
    assert_eq!(slept.text(), "slept 6000 ms\n");
}

#[test]
fn a_worker_out_of_descriptors_sheds_idle_keep_alive_connections_and_serves_new_clients() {
    // 64 descriptors in all, soft and hard: the worker runs out after a few dozen
    // connections, far below its connection limit.
    const NOFILE: usize = 64;
    let server = Server::wrapped(&["prlimit", "--nofile=64:64", "--"], Bin::Demo, 1)
        .args(&["--keepalive", "120s"])
        .start();
    let worker = server.wait_workers(1, &[])[0];
    // Each new client is answered even once there is no descriptor left for it, because
    // older idle ones are closed to make room; without that, one would wait unanswered.
    let mut conns = Vec::new();
    for _ in 0..NOFILE + 16 {
        let mut conn = Conn::connect(server.addr).unwrap();
        conn.read_timeout(Duration::from_secs(5));
        let answer = conn.get("/pid").unwrap_or_else(|f| {
            panic!(
                "client {} not served: {f:?}; worker holds {} sockets",
                conns.len(),
                sockets(worker)
            )
        });
        assert_eq!(answer.status, 200);
        conns.push(conn);
    }
    let mut shed = 0;
    for conn in &mut conns {
        shed += usize::from(conn.closed_within(Duration::from_millis(50)));
    }
    assert!(shed >= 16, "only {shed} idle connections were closed");
    server.wait_log("accept failed", PATIENCE);
}
