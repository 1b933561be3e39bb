//! The connection limit (`--worker-connections`): a full worker leaves new connections in the
//! queue for its siblings, still serves its own, and takes connections again once one closes.

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
    let (second, b) = held(&server);
    assert_ne!(a, b, "a worker at its limit took another connection");

    // Both full: a third connection waits in the queue, unanswered.
    let mut third = Conn::connect(server.addr).unwrap();
    third.read_timeout(Duration::from_millis(300));
    assert!(
        matches!(third.get("/pid"), Err(Failure::Timeout)),
        "a worker past its limit answered"
    );
    // Each still serves the connection it holds.
    assert_eq!(first.get("/pid").unwrap().text(), a);

    // Once one closes, its worker takes the waiting connection.
    drop(second);
    third.read_timeout(PATIENCE);
    let answer = third
        .read_response(false)
        .expect("served once there was room");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), b);
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
fn a_client_that_reads_nothing_is_closed_at_the_io_timeout_and_a_slow_reader_is_not() {
    use std::io::{Read, Write};
    use std::time::Instant;

    const SIZE: u64 = 32 << 20;
    let root = tempfile::tempdir().unwrap();
    // Sparse: 32 MiB of zeros, far more than the socket buffers hold.
    let big = std::fs::File::create(root.path().join("big")).unwrap();
    big.set_len(SIZE).unwrap();
    let server = Server::builder(Bin::Prefork, 1)
        .args(&[
            "--root",
            root.path().to_str().unwrap(),
            "--io-timeout",
            "1s",
        ])
        .start();
    let worker = server.wait_workers(1, &[])[0];
    let idle = sockets(worker);
    let request = b"GET /big HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

    // Asks, and reads nothing.
    let mut stalled = std::net::TcpStream::connect(server.addr).unwrap();
    stalled.write_all(request).unwrap();
    server.wait_until("the worker holds the connection", || {
        (sockets(worker) > idle).then_some(())
    });
    let asked = Instant::now();
    server.wait_until("the worker closes the stalled connection", || {
        (sockets(worker) == idle).then_some(())
    });
    let after = asked.elapsed();
    assert!(
        after >= Duration::from_millis(900),
        "closed after {after:?}"
    );
    stalled.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut got = Vec::new();
    let _ = stalled.read_to_end(&mut got);
    assert!(
        (got.len() as u64) < SIZE,
        "the stalled client got the whole file"
    );

    // Reads slowly, but reads: never idle for the io timeout, so it gets the whole file.
    let mut slow = std::net::TcpStream::connect(server.addr).unwrap();
    slow.set_read_timeout(Some(PATIENCE)).unwrap();
    slow.write_all(request).unwrap();
    let started = Instant::now();
    let mut total = 0u64;
    let mut buf = vec![0u8; 512 << 10];
    loop {
        let n = slow.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
        // A slow client: well under the io timeout between reads.
        std::thread::sleep(Duration::from_millis(40));
    }
    assert!(
        total > SIZE,
        "the slow reader got {total} bytes of {SIZE} and the head"
    );
    let took = started.elapsed();
    assert!(
        took > Duration::from_millis(1500),
        "not slower than the timeout: {took:?}"
    );
}
