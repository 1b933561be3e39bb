//! The foundation: processes, serving, graceful and quick stop, replacement of dead workers,
//! and bad input.

use std::thread;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};

use super::h2;
use super::http::{self, Conn, Failure};
use super::support::procfs::{alive, blocked_in, process_group_alive, runtime_threads, wait_dead};
use super::support::{Bin, PATIENCE, Server, distinct, run};

#[test]
fn workers_are_children_of_the_master_and_all_serve() {
    let server = Server::start(Bin::Demo, 3);
    let workers = server.wait_workers(3, &[]);
    let mut pids = Vec::new();
    for _ in 0..60 {
        let body = http::get(server.addr, "/pid").text();
        pids.push(body.parse::<i32>().expect("a pid"));
    }
    for pid in &pids {
        assert!(
            workers.iter().any(|w| w.as_raw() == *pid),
            "{pid} is not a worker"
        );
    }
    assert!(distinct(&pids) >= 2, "all 60 requests went to one worker");
    assert_eq!(http::get(server.addr, "/").text(), "Hello, World!");
}

#[test]
fn static_files_have_validators_and_ranges() {
    let root = tempfile::tempdir().unwrap();
    let content: Vec<u8> = (0..1000u32).map(|i| b'a' + (i % 26) as u8).collect();
    std::fs::write(root.path().join("file.txt"), &content).unwrap();
    std::fs::create_dir(root.path().join("dir")).unwrap();
    std::fs::write(root.path().join("dir/index.html"), "<p>index</p>").unwrap();
    let server = Server::builder(Bin::Prefork, 2)
        .args(&["--root", root.path().to_str().unwrap()])
        .start();

    let full = http::get(server.addr, "/file.txt");
    assert_eq!(full.status, 200);
    assert_eq!(full.body, content);
    assert!(full.header("last-modified").is_some());
    let etag = full.header("etag").expect("an ETag").to_string();

    let mut conn = Conn::connect(server.addr).unwrap();
    let cached = conn
        .request("GET", "/file.txt", &[("If-None-Match", &etag)])
        .unwrap();
    assert_eq!(cached.status, 304);
    assert!(cached.body.is_empty());

    let range = conn
        .request("GET", "/file.txt", &[("Range", "bytes=10-19")])
        .unwrap();
    assert_eq!(range.status, 206);
    assert_eq!(range.header("content-range"), Some("bytes 10-19/1000"));
    assert_eq!(range.body, &content[10..20]);

    let bad_range = conn
        .request("GET", "/file.txt", &[("Range", "bytes=5000-")])
        .unwrap();
    assert_eq!(bad_range.status, 416);

    let head = conn.request("HEAD", "/file.txt", &[]).unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("1000"));

    assert_eq!(conn.get("/dir/").unwrap().text(), "<p>index</p>");
    assert_eq!(conn.get("/missing").unwrap().status, 404);
    assert_eq!(conn.get("/../etc/passwd").unwrap().status, 404);
}

/// `GET /` of `server` on a new HTTP/2 connection by prior knowledge, checked to be answered
/// over HTTP/2 with 200 and the demo's body.
fn assert_hello_over_h2(server: &Server) {
    use http_body_util::BodyExt;

    let rt = super::support::runtime();
    rt.block_on(async {
        let (mut send, _conn) = h2::connect(server.addr).await;
        let resp = tokio::time::timeout(PATIENCE, h2::get(&mut send, &server.url("/")))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.version(), ::http::Version::HTTP_2);
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"Hello, World!");
    });
}

#[test]
fn http2_prior_knowledge_is_served() {
    assert_hello_over_h2(&Server::start(Bin::Demo, 1));
}

/// The benchmark's bare application (examples/bare.rs) under prefork and the same service in
/// one process (baseline --bare) answer alike, over HTTP/1.1 and HTTP/2 by prior knowledge, so
/// that the bench compares the same work.
#[test]
fn the_bare_example_and_its_single_process_baseline_serve_the_same_body() {
    let bare = Server::start(Bin::Bare, 2);
    bare.wait_workers(2, &[]);
    let baseline = super::support::Builder::new(Bin::Baseline)
        .args(&["--threads", "1", "--bare"])
        .spawn();
    for server in [&bare, &baseline] {
        let response = http::get(server.addr, "/any/path?at=all");
        assert_eq!(response.status, 200, "{}", server.log());
        assert_eq!(response.text(), "Hello, World!");
        assert_eq!(response.header("content-length"), Some("13"));
        assert_hello_over_h2(server);
    }
}

#[test]
fn http1_heads_sent_too_slowly_are_cut_at_the_keepalive_timeout_and_slow_ones_in_time_answered() {
    use std::io::Write;
    use std::net::TcpStream;
    use std::time::Instant;

    /// Writes `head` a piece at a time, one every 200 ms, then one more byte of a field every
    /// 200 ms until the server closes the connection (or 20 s have passed).
    fn trickle(mut socket: TcpStream, head: &'static [u8], unending: bool) {
        let filler = std::iter::repeat_n(&[b'a'][..], if unending { 100 } else { 0 });
        for piece in head.chunks(8).chain(filler) {
            if socket.write_all(piece).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
    /// When `conn` closed, without an answer, after `since`; it must within `within`.
    fn closed_after(conn: &mut Conn, since: Instant, within: Duration) -> Duration {
        assert!(conn.closed_within(within), "not closed, or answered");
        since.elapsed()
    }
    const NEVER_ENDS: &[u8] = b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ";

    let server = Server::builder(Bin::Demo, 1)
        .args(&["--keepalive", "2s"])
        .start();
    // After an answer: the timeout runs from the answer, not from the head's last byte.
    let mut used = Conn::connect(server.addr).unwrap();
    assert_eq!(used.get("/").unwrap().status, 200);
    let answered = Instant::now();
    let writer = used.writer();
    let used_trickle = thread::spawn(move || trickle(writer, NEVER_ENDS, true));
    // As the connection's first request.
    let mut fresh = Conn::connect(server.addr).unwrap();
    let opened = Instant::now();
    let writer = fresh.writer();
    let fresh_trickle = thread::spawn(move || trickle(writer, NEVER_ENDS, true));
    // Slow, but whole within the timeout: 31 bytes in four pieces over 0.8 s.
    let mut slow = Conn::connect(server.addr).unwrap();
    trickle(
        slow.writer(),
        b"GET /pid HTTP/1.1\r\nHost: t\r\n\r\n",
        false,
    );
    let answer = slow
        .read_response(false)
        .expect("a slow head in time is answered");
    assert_eq!(answer.status, 200);

    let used_after = closed_after(&mut used, answered, Duration::from_secs(4));
    let fresh_after = closed_after(&mut fresh, opened, Duration::from_secs(4));
    for (what, after) in [("after an answer", used_after), ("first", fresh_after)] {
        assert!(
            after >= Duration::from_millis(1900),
            "{what}: cut after {after:?}"
        );
    }
    assert!(used_after < Duration::from_millis(2900), "{used_after:?}");
    // A connection without a request is looked at every quarter of the timeout.
    assert!(fresh_after < Duration::from_millis(3400), "{fresh_after:?}");
    used_trickle.join().unwrap();
    fresh_trickle.join().unwrap();
}

#[test]
fn idle_http2_connections_are_closed_after_the_keepalive_timeout() {
    use http_body_util::BodyExt;
    use std::time::Instant;

    let server = Server::builder(Bin::Demo, 1)
        .args(&["--keepalive", "1s"])
        .start();
    let rt = super::support::runtime();
    rt.block_on(async {
        let connect = || h2::connect(server.addr);
        let get = |send: &mut h2::Sender, path: &str| h2::get(send, &server.url(path));
        let started = Instant::now();
        // Idle after one request; never a request; a request outlasting the timeout.
        let (mut used, used_conn) = connect().await;
        assert_eq!(get(&mut used, "/").await.unwrap().status(), 200);
        let (_silent, silent_conn) = connect().await;
        let (mut busy, busy_conn) = connect().await;
        let slow = tokio::spawn(get(&mut busy, "/sleep?ms=2500"));

        // Half the idle timeout, the subject: a connection closed by then was closed early.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!used_conn.is_finished(), "closed well before the timeout");
        for conn in [used_conn, silent_conn] {
            tokio::time::timeout(PATIENCE, conn)
                .await
                .expect("an idle HTTP/2 connection stays open")
                .unwrap()
                .expect("closed with GOAWAY, not reset");
        }
        let response = tokio::time::timeout(PATIENCE, slow)
            .await
            .unwrap()
            .unwrap()
            .expect("a request longer than the idle timeout completes");
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"slept 2500 ms\n");
        assert!(started.elapsed() >= Duration::from_millis(2500));
        // The request held the connection: it is idle only from the answer on (GOAWAY sent
        // while the request ran would have closed it as soon as the answer was through). The
        // subject: the connection outlives its answer by a while, still short of the timeout.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !busy_conn.is_finished(),
            "closed while a request was in flight"
        );
        tokio::time::timeout(PATIENCE, busy_conn)
            .await
            .expect("the connection is closed once idle after its request")
            .unwrap()
            .unwrap();
    });
    assert!(alive(server.pid()), "the server stays up");
}

#[test]
fn term_lets_requests_in_flight_finish() {
    let mut server = Server::start(Bin::Demo, 3);
    let addr = server.addr;
    let clients: Vec<_> = (0..5)
        .map(|_| {
            thread::spawn(move || {
                let mut conn = Conn::connect(addr).unwrap();
                conn.get("/sleep?ms=2000")
            })
        })
        .collect();
    server.wait_log_count("/sleep: waiting", 5, PATIENCE);
    let start = std::time::Instant::now();
    server.signal(Signal::SIGTERM);
    for client in clients {
        let resp = client
            .join()
            .unwrap()
            .expect("the request in flight completes");
        assert_eq!(resp.status, 200);
        assert!(
            resp.closes(),
            "a response during the drain says Connection: close"
        );
    }
    let finished = start.elapsed();
    let (status, total) = server.expect_exit(PATIENCE);
    assert!(status.success(), "{status:?}");
    assert!(
        finished >= Duration::from_millis(1000),
        "responses came too soon: {finished:?}"
    );
    assert!(
        total < Duration::from_millis(500),
        "the master exited {total:?} after the last response"
    );
}

#[test]
fn term_with_idle_keepalive_connections_stops_at_once_without_linger() {
    let mut server = Server::builder(Bin::Demo, 2)
        .args(&["--linger", "0"])
        .start();
    let mut conns = idle_connections(&server, 50);
    server.signal(Signal::SIGTERM);
    let (status, took) = server.expect_exit(PATIENCE);
    assert!(status.success());
    assert!(took < Duration::from_millis(500), "stop took {took:?}");
    for conn in &mut conns {
        assert!(conn.closed_within(Duration::from_secs(1)));
    }
}

#[test]
fn term_with_idle_keepalive_connections_closes_them_after_the_linger() {
    let mut server = Server::builder(Bin::Demo, 2)
        .args(&["--linger", "300ms"])
        .start();
    let mut conns = idle_connections(&server, 50);
    server.signal(Signal::SIGTERM);
    let (status, took) = server.expect_exit(PATIENCE);
    assert!(status.success());
    assert!(
        took >= Duration::from_millis(250),
        "the linger was skipped: {took:?}"
    );
    assert!(took < Duration::from_millis(1000), "stop took {took:?}");
    for conn in &mut conns {
        assert!(conn.closed_within(Duration::from_secs(1)));
    }
}

fn idle_connections(server: &Server, n: usize) -> Vec<Conn> {
    (0..n)
        .map(|_| {
            let mut conn = Conn::connect(server.addr).unwrap();
            let resp = conn.get("/").unwrap();
            assert_eq!(resp.status, 200);
            assert!(!resp.closes());
            conn
        })
        .collect()
}

#[test]
fn graceful_timeout_cuts_what_is_left() {
    let mut server = Server::builder(Bin::Demo, 2)
        .args(&["--graceful-timeout", "2s"])
        .start();
    let addr = server.addr;
    let client = thread::spawn(move || Conn::connect(addr).unwrap().get("/sleep?ms=20000"));
    server.wait_log("/sleep: waiting", PATIENCE);
    server.signal(Signal::SIGTERM);
    let (status, took) = server.expect_exit(PATIENCE);
    assert!(status.success());
    assert!(
        took >= Duration::from_millis(1900),
        "cut before the deadline: {took:?}"
    );
    assert!(took < Duration::from_millis(3000), "stop took {took:?}");
    let failure = client.join().unwrap().expect_err("the request was cut");
    assert!(
        matches!(failure, Failure::Empty | Failure::Reset),
        "{failure:?}"
    );
    server.wait_log("cutting 1 connection(s)", PATIENCE);
}

#[test]
fn quick_stop_closes_connections_at_once() {
    for sig in [Signal::SIGINT, Signal::SIGQUIT] {
        let mut server = Server::start(Bin::Demo, 2);
        let addr = server.addr;
        let client = thread::spawn(move || Conn::connect(addr).unwrap().get("/sleep?ms=20000"));
        server.wait_log("/sleep: waiting", PATIENCE);
        server.signal(sig);
        let (status, took) = server.expect_exit(PATIENCE);
        assert!(status.success(), "{sig}: {status:?}");
        assert!(
            took < Duration::from_millis(1000),
            "{sig}: stop took {took:?}"
        );
        assert!(client.join().unwrap().is_err());
    }
}

#[test]
fn second_term_escalates_to_a_quick_stop() {
    let mut server = Server::start(Bin::Demo, 1);
    let addr = server.addr;
    let client = thread::spawn(move || Conn::connect(addr).unwrap().get("/sleep?ms=20000"));
    server.wait_log("/sleep: waiting", PATIENCE);
    server.signal(Signal::SIGTERM);
    server.wait_log("graceful stop", PATIENCE);
    server.signal(Signal::SIGTERM);
    let (status, took) = server.expect_exit(PATIENCE);
    assert!(status.success());
    assert!(took < Duration::from_millis(1000), "stop took {took:?}");
    assert!(client.join().unwrap().is_err());
}

#[test]
fn dead_workers_are_replaced() {
    let server = Server::start(Bin::Demo, 2);
    let workers = server.wait_workers(2, &[]);
    kill(workers[0], Signal::SIGKILL).unwrap();
    let now = server.wait_workers(2, &[workers[0]]);
    assert!(
        now.contains(&workers[1]),
        "the healthy worker was disturbed"
    );
    for _ in 0..20 {
        assert_eq!(http::get(server.addr, "/").status, 200);
    }
    // A worker that aborts (the demo's /crash) is replaced the same way.
    let crashed = http::try_get(server.addr, "/crash");
    assert!(crashed.is_err(), "{crashed:?}");
    server.wait_log("was killed by SIGABRT", PATIENCE);
    server.wait_workers(2, &[]);
    for _ in 0..20 {
        assert_eq!(http::get(server.addr, "/").status, 200);
    }
}

#[test]
fn websocket_gets_going_away_on_term() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    let mut server = Server::start(Bin::Demo, 1);
    let rt = super::support::runtime();
    let close = rt.block_on(async {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr))
            .await
            .unwrap();
        let first = tokio::time::timeout(PATIENCE, ws.next()).await.unwrap();
        assert!(matches!(first, Some(Ok(Message::Text(_)))), "{first:?}");
        server.signal(Signal::SIGTERM);
        let signalled = std::time::Instant::now();
        loop {
            match tokio::time::timeout(PATIENCE, ws.next()).await.unwrap() {
                Some(Ok(Message::Close(frame))) => return (frame, signalled.elapsed()),
                Some(Ok(_)) => {}
                other => panic!("no Close frame: {other:?}"),
            }
        }
    });
    let (frame, took) = close;
    assert_eq!(
        frame.expect("a close frame with a code").code,
        CloseCode::Away
    );
    assert!(
        took < Duration::from_millis(500),
        "Close came {took:?} after TERM"
    );
    let (status, _) = server.expect_exit(PATIENCE);
    assert!(status.success());
}

/// Each kind of bad input: exit status 2, one line naming the problem, nothing left running.
#[test]
fn bad_input_is_one_line_and_exit_2() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let bad_key = dir.path().join("bad-key.toml");
    std::fs::write(&bad_key, "wrokers = 3\n").unwrap();
    let bad_value = dir.path().join("bad-value.toml");
    std::fs::write(&bad_value, "graceful_timeout = \"soon\"\n").unwrap();
    let missing_root = dir.path().join("nope");
    let missing_root = missing_root.to_str().unwrap();

    // (arguments, environment, what the message must say)
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (vec!["serve", "--wrokers", "3"], vec![], "--wrokers"),
        (
            vec!["serve", "--graceful-timeout", "5x"],
            vec![],
            "graceful_timeout (from --graceful-timeout)",
        ),
        (
            vec!["serve", "--workers", "0"],
            vec![],
            "workers (from --workers): must be at least 1",
        ),
        (
            vec!["serve", "--bind", "localhost"],
            vec![],
            "'localhost' for bind",
        ),
        (
            vec!["serve", "--bind", "127.0.0.1:99999"],
            vec![],
            "'127.0.0.1:99999' for bind",
        ),
        (
            vec!["serve", "--bind", &busy_addr],
            vec![],
            "cannot listen on",
        ),
        (
            vec!["serve", "--root", missing_root],
            vec![],
            "root directory",
        ),
        (
            vec!["serve", "-c", bad_key.to_str().unwrap()],
            vec![],
            "unknown option 'wrokers'",
        ),
        (
            vec!["serve", "-c", bad_value.to_str().unwrap()],
            vec![],
            "in config file",
        ),
        (
            vec!["serve", "-c", "/nonexistent.toml"],
            vec![],
            "cannot read config file",
        ),
        (
            vec!["serve"],
            vec![("PREFORK_WORKERS", "many")],
            "environment variable PREFORK_WORKERS",
        ),
        (
            vec!["serve"],
            vec![("WEB_CONCURRENCY", "0")],
            "environment variable WEB_CONCURRENCY",
        ),
        (vec!["serve"], vec![("PORT", "http")], "PORT"),
        (vec!["check", "--keepalive=-1"], vec![], "keepalive"),
    ];
    for (args, env, expected) in cases {
        let (status, stderr) = run(Bin::Prefork, &args, &env);
        assert_eq!(status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        assert_eq!(
            stderr.lines().count(),
            1,
            "{args:?} {env:?}: not one line:\n{stderr}"
        );
        assert!(
            stderr.contains(expected),
            "{args:?} {env:?}: {stderr:?} lacks {expected:?}"
        );
    }
    drop(busy);
}

#[test]
fn check_accepts_a_valid_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prefork.toml");
    std::fs::write(
        &config,
        "workers = 2\nbind = [\"127.0.0.1:8123\"]\ngraceful_timeout = \"10s\"\n",
    )
    .unwrap();
    let (status, stderr) = run(
        Bin::Prefork,
        &["check", "-c", config.to_str().unwrap()],
        &[],
    );
    assert!(status.success(), "{stderr}");
    // The command line wins over the file, the environment over the file.
    let (status, stderr) = run(
        Bin::Prefork,
        &["check", "-c", config.to_str().unwrap(), "--workers", "0"],
        &[],
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    let (status, stderr) = run(
        Bin::Prefork,
        &["check", "-c", config.to_str().unwrap()],
        &[("PREFORK_GRACEFUL_TIMEOUT", "later")],
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("PREFORK_GRACEFUL_TIMEOUT"), "{stderr}");
}

#[test]
fn a_stopped_server_leaves_no_process_and_frees_the_port() {
    let mut server = Server::start(Bin::Prefork, 2);
    let workers = server.workers();
    server.signal(Signal::SIGTERM);
    let (status, took) = server.expect_exit(PATIENCE);
    assert!(status.success());
    // Nothing to drain: the stop is immediate, a few ms. The bound is loose for a loaded CI
    // machine, yet below the 1 s linger and the master's 1 s poll timer, which a stop waiting
    // for something it need not would take.
    assert!(
        took < Duration::from_millis(500),
        "an idle stop took {took:?}"
    );
    assert!(wait_dead(&workers, PATIENCE));
    assert!(!process_group_alive(server.pid()));
    assert!(!workers.iter().any(|w| alive(*w)));
    std::net::TcpListener::bind(server.addr).expect("the port is free again");
}

/// Garbage, oversized heads and bad framing get a 4xx, never a dead worker.
#[test]
fn malformed_http_gets_a_4xx_and_the_worker_lives() {
    let server = Server::start(Bin::Demo, 1);
    let workers = server.wait_workers(1, &[]);
    let long_header = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let cases: [(&[u8], &[u16]); 4] = [
        (b"GARBAGE\r\n\r\n", &[400]),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
            &[400],
        ),
        (b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n", &[400]),
        (long_header.as_bytes(), &[400, 431]),
    ];
    for (request, statuses) in cases {
        let mut conn = Conn::connect(server.addr).unwrap();
        // The server may answer and close before it has read all of a huge request.
        let _ = conn.send(request);
        let response = conn
            .read_response(false)
            .expect("an answer, not a dropped connection");
        assert!(
            statuses.contains(&response.status),
            "{:?}: {}",
            String::from_utf8_lossy(&request[..request.len().min(40)]),
            response.status
        );
    }
    assert_eq!(server.workers(), workers, "a worker died");
    assert_eq!(http::get(server.addr, "/").status, 200);
}

#[test]
fn multi_thread_workers_serve_and_drain() {
    let mut server = Server::builder(Bin::Demo, 1)
        .args(&["--threads", "2"])
        .start();
    let addr = server.addr;
    let worker = server.wait_workers(1, &[])[0];
    // Nothing has used the blocking pool yet, so every runtime thread is a scheduler thread.
    assert_eq!(runtime_threads(worker), 2, "--threads 2 did not give two");
    let slow = thread::spawn(move || Conn::connect(addr).unwrap().get("/sleep?ms=1000"));
    server.wait_log("/sleep: waiting", PATIENCE);
    // Whether another request is served while a handler *blocks* a thread is up to tokio (a
    // blocked thread may hold the I/O driver), so only a request in flight is tested here.
    assert_eq!(http::get(addr, "/").status, 200);
    server.signal(Signal::SIGTERM);
    assert_eq!(slow.join().unwrap().unwrap().status, 200);
    let (status, _) = server.expect_exit(PATIENCE);
    assert!(status.success());
}

#[test]
fn idle_keepalive_connections_time_out_and_zero_turns_keepalive_off() {
    let server = Server::builder(Bin::Demo, 1)
        .args(&["--keepalive", "300ms"])
        .start();
    let mut conn = Conn::connect(server.addr).unwrap();
    let response = conn.get("/").unwrap();
    assert!(!response.closes());
    let idle = std::time::Instant::now();
    assert!(
        conn.closed_within(PATIENCE),
        "the idle connection was never closed"
    );
    let after = idle.elapsed();
    assert!(
        after >= Duration::from_millis(250) && after < Duration::from_secs(3),
        "closed after {after:?}, not after 300ms"
    );

    let server = Server::builder(Bin::Demo, 1)
        .args(&["--keepalive", "0"])
        .start();
    let mut conn = Conn::connect(server.addr).unwrap();
    assert!(conn.get("/").unwrap().closes());
    assert!(conn.closed_within(Duration::from_secs(2)));
}

#[test]
fn a_worker_holding_more_than_its_share_still_takes_what_a_hung_sibling_leaves() {
    let server = Server::start(Bin::Demo, 2);
    let workers = server.wait_workers(2, &[]);
    // Keep-alive connections held open, and the worker that answered each.
    let mut held: Vec<(Conn, String)> = Vec::new();
    let open = |held: &mut Vec<(Conn, String)>| -> String {
        let mut conn = Conn::connect(server.addr).expect("connect");
        let pid = conn.get("/pid").expect("a response").text();
        held.push((conn, pid.clone()));
        pid
    };
    while distinct(&held.iter().map(|(_, pid)| pid.clone()).collect::<Vec<_>>()) < 2 {
        assert!(held.len() < 100, "one worker took 100 connections in a row");
        open(&mut held);
    }
    // Block one worker's thread: it accepts nothing until the handler returns.
    let (mut blocking, hung) = held.pop().expect("a held connection");
    blocking
        .send(b"GET /block?ms=6000 HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    // Until the handler sleeps, the worker could still take the next connection.
    let hung_pid = nix::unistd::Pid::from_raw(hung.parse().expect("a pid"));
    server.wait_until("the worker blocked in /block", || {
        blocked_in(hung_pid, "nanosleep").then_some(())
    });
    let started = std::time::Instant::now();
    // The other worker soon holds clearly more than its share and steps back from each new
    // connection; with no sibling to take it, it must take it itself, and quickly.
    for i in 0..30 {
        let asked = std::time::Instant::now();
        let pid = open(&mut held);
        assert_ne!(
            pid, hung,
            "connection {i} was answered by the blocked worker"
        );
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "connection {i} waited {:?}",
            asked.elapsed()
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the blocked worker may have woken: {:?}",
        started.elapsed()
    );
    let response = blocking
        .read_response(false)
        .expect("the blocked request completes");
    assert_eq!(response.status, 200);
    assert_eq!(server.workers(), workers, "no worker was replaced");
}
