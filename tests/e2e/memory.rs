//! Memory a flood takes comes back once it has passed: the worker trims its heap when its load
//! falls, so its resident memory returns near where it was, and it goes on serving. Idle
//! keep-alive connections give back hyper's buffers while they stay open.

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

/// Raises this process's descriptor limit to its hard limit, which must leave room for `conns`
/// connections counted twice (the client's end and the worker's).
fn room_for(conns: usize) {
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    assert!(
        hard > 2 * conns as u64 + 100,
        "the descriptor limit ({hard}) is too low for this test"
    );
}

/// A one-worker static server of a `hello` file with room for thousands of idle connections,
/// and the directory it serves.
fn hello_server(args: &[&str]) -> (Server, tempfile::TempDir) {
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
    (server, root)
}

/// Runs `flood` against a one-worker server started with `args`, and checks that the worker's resident memory grew
/// by [`GROWTH`], came back to within [`TOLERANCE`] of where it was once the flood's
/// connections closed, and that the same worker still serves.
fn memory_comes_back<C>(args: &[&str], flood: impl FnOnce(SocketAddr) -> Vec<C>) {
    // Each connection takes a descriptor here as well as in the worker.
    room_for(CONNECTION_FLOOD);
    let (server, _root) = hello_server(args);
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

/// Idle keep-alive connections give hyper's buffers back (src/worker/parking.rs): each of
/// [`IDLE`] connections, all answered within well under a second, costs the worker at least
/// [`GIVEN_BACK`] less once they have been idle for a second or two, and each is served on.
#[test]
fn idle_keep_alive_connections_give_back_their_buffers() {
    /// hyper's read buffer alone is 8 KiB, most of it resident once a request has been read.
    const GIVEN_BACK: u64 = 4 * 1024;
    const IDLE: usize = 1000;
    room_for(IDLE);
    let (server, _root) = hello_server(&[]);
    let worker = server.wait_workers(1, &[])[0];
    for _ in 0..10 {
        assert_eq!(get(server.addr, "/hello").status, 200);
    }
    let start = resident(worker);
    let mut conns: Vec<Conn> = (0..IDLE)
        .map(|_| Conn::connect(server.addr).unwrap())
        .collect();
    // Every request is sent before any answer is read, so that all are answered before the
    // first of them has been idle long enough to be parked.
    for conn in &mut conns {
        conn.send(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
    }
    for conn in &mut conns {
        assert_eq!(conn.read_response(false).unwrap().text(), "hello\n");
    }
    let peak = resident(worker);
    let per_connection = peak.saturating_sub(start) / IDLE as u64;
    assert!(
        per_connection >= GIVEN_BACK,
        "{per_connection} bytes per answered connection: too little to give back {GIVEN_BACK}"
    );
    let parked = poll(PATIENCE, Duration::from_millis(50), || {
        let now = resident(worker);
        (now + GIVEN_BACK * IDLE as u64 <= peak).then_some(now)
    });
    assert!(
        parked.is_some(),
        "{IDLE} idle connections took the worker from {} to {} KiB, and it still holds {} KiB \
         after {PATIENCE:?}",
        start >> 10,
        peak >> 10,
        resident(worker) >> 10
    );
    for conn in &mut conns {
        assert_eq!(conn.get("/hello").unwrap().text(), "hello\n");
    }
}
