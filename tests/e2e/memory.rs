//! Memory a flood takes comes back once it has passed: the worker trims its heap when its load
//! falls, so its resident memory returns near where it was, and it goes on serving.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use nix::sys::resource::{Resource, getrlimit, setrlimit};

use super::http::{Conn, get};
use super::support::procfs::{mem, sockets};
use super::support::{Bin, PATIENCE, Server, poll};

/// How far above its resting size a worker's resident memory may stay after a flood.
const TOLERANCE: u64 = 4 << 20;

/// How much a flood must grow the worker for the test to mean anything: were the heap never
/// trimmed, the memory would stay this far above the tolerance.
const GROWTH: u64 = 4 * TOLERANCE;

/// Connections held open at once: about 18 KiB each once answered.
const CONNECTION_FLOOD: usize = 2000;

/// Unfinished request heads held open at once, each [`HEAD_SIZE`] bytes, which the worker
/// buffers until the head is complete.
const HEADER_FLOOD: usize = 600;
const HEAD_SIZE: usize = 60 * 1024;

/// [`Server::wait_until`], looking every 50 ms: a look at thousands of sockets is not free.
fn slowly<T>(server: &Server, what: impl std::fmt::Display, check: impl FnMut() -> Option<T>) -> T {
    poll(PATIENCE, Duration::from_millis(50), check)
        .unwrap_or_else(|| panic!("{what}: not within {PATIENCE:?}; log:\n{}", server.log()))
}

fn resident(worker: nix::unistd::Pid) -> u64 {
    mem(worker).expect("the worker is alive").rss
}

/// Runs `flood` against a one-worker server started with `args`, and checks that the worker's resident memory grew
/// by [`GROWTH`], came back to within [`TOLERANCE`] of where it was once the flood's
/// connections closed, and that the same worker still serves.
fn memory_comes_back<C>(args: &[&str], flood: impl FnOnce(SocketAddr) -> Vec<C>) {
    // Each connection takes a descriptor here as well as in the worker.
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    assert!(
        hard > 2 * CONNECTION_FLOOD as u64 + 100,
        "the descriptor limit ({hard}) is too low for this test"
    );
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("hello"), "hello\n").unwrap();
    let server = Server::builder(Bin::Prefork, 1)
        .args(&[
            "--root",
            root.path().to_str().unwrap(),
            "--worker-connections",
            "10000",
            // Long enough that the worker holds every connection until the test closes it.
            "--keepalive",
            "120s",
        ])
        .args(args)
        .start();
    let worker = server.wait_workers(1, &[])[0];
    let idle_sockets = sockets(worker);
    // The first requests fault in the code and the buffers every connection uses.
    for _ in 0..10 {
        assert_eq!(get(server.addr, "/hello").status, 200);
    }
    slowly(&server, "the worker closes the first connections", || {
        (sockets(worker) <= idle_sockets).then_some(())
    });
    let start = resident(worker);

    let conns = flood(server.addr);
    let held = conns.len();
    slowly(&server, "the worker holds every connection", || {
        (sockets(worker) >= idle_sockets + held).then_some(())
    });
    let peak = slowly(
        &server,
        format!(
            "the worker grows by {} MiB from {} MiB",
            GROWTH >> 20,
            start >> 20
        ),
        || {
            let now = resident(worker);
            (now >= start + GROWTH).then_some(now)
        },
    );

    drop(conns);
    slowly(&server, "the worker closes the flood's connections", || {
        (sockets(worker) <= idle_sockets).then_some(())
    });
    let settled = poll(PATIENCE, Duration::from_millis(50), || {
        let now = resident(worker);
        (now <= start + TOLERANCE).then_some(now)
    });
    let now = resident(worker);
    assert!(
        settled.is_some(),
        "the worker's resident memory went from {} MiB past {} MiB in the flood and is still \
         {} MiB after {PATIENCE:?}",
        start >> 20,
        peak >> 20,
        now >> 20
    );
    assert_eq!(server.workers(), vec![worker], "the worker was replaced");
    assert_eq!(get(server.addr, "/hello").text(), "hello\n");
}

/// [`CONNECTION_FLOOD`] connections, each answered and then idle on keep-alive.
fn connection_flood(addr: SocketAddr) -> Vec<Conn> {
    (0..CONNECTION_FLOOD)
        .map(|_| {
            let mut conn = Conn::connect(addr).unwrap();
            assert_eq!(conn.get("/hello").unwrap().status, 200);
            conn
        })
        .collect()
}

#[test]
fn memory_taken_by_a_connection_flood_comes_back() {
    memory_comes_back(&[], connection_flood);
}

/// A multi-thread runtime: the flood's memory is spread over several threads' arenas.
#[test]
fn memory_taken_by_a_connection_flood_comes_back_from_every_thread() {
    memory_comes_back(&["--threads", "2"], connection_flood);
}

#[test]
fn memory_taken_by_a_header_flood_comes_back() {
    // Fields of 4 KiB, within --limit-request-field-size, and a head that never ends.
    let mut head = b"GET /hello HTTP/1.1\r\nHost: t\r\n".to_vec();
    let field = format!("X-Pad: {}\r\n", "a".repeat(4096 - 9));
    while head.len() + field.len() <= HEAD_SIZE {
        head.extend_from_slice(field.as_bytes());
    }
    memory_comes_back(&[], |addr| {
        (0..HEADER_FLOOD)
            .map(|_| {
                let mut stream = TcpStream::connect(addr).unwrap();
                stream.write_all(&head).unwrap();
                stream
            })
            .collect()
    });
}
