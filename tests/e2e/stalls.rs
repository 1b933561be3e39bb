//! Stalled clients and the io timeout (`--io-timeout`, docs/security.md, "Connections and
//! descriptors"): a client that reads nothing of its response, a request body that stops
//! arriving, an HTTP/2 stream held by a zero flow-control window (GOAWAY or not) are closed
//! at the timeout, set to 1 s here; slow but steady clients, slow applications, websockets
//! and event streams that tick are not.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::frames;
use super::h2;
use super::http::Conn;
use super::support::procfs::sockets;
use super::support::{Bin, PATIENCE, Server};

/// The longest a stalled connection may stay open: the 1 s timeout is met between one and
/// two timeouts after the last progress, plus room for a loaded machine.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

/// Not cut before the timeout (less a little, for clocks read on both sides).
const NOT_BEFORE: Duration = Duration::from_millis(900);

/// A static file server with a 1 s io timeout on a root holding a sparse file `big`, 32 MiB
/// of zeros: far more than socket buffers and flow-control windows hold.
fn static_server(args: &[&str]) -> (Server, tempfile::TempDir) {
    let root = tempfile::tempdir().unwrap();
    let big = std::fs::File::create(root.path().join("big")).unwrap();
    big.set_len(BIG).unwrap();
    let mut all = vec![
        "--root",
        root.path().to_str().unwrap(),
        "--io-timeout",
        "1s",
    ];
    all.extend(args);
    (Server::builder(Bin::Prefork, 1).args(&all).start(), root)
}

const BIG: u64 = 32 << 20;

#[test]
fn a_client_that_reads_nothing_is_closed_at_the_io_timeout_and_a_slow_reader_is_not() {
    const SIZE: u64 = BIG;
    let (server, _root) = static_server(&[]);
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
    assert!(after >= NOT_BEFORE, "closed after {after:?}");
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

#[test]
fn a_request_body_that_stops_arriving_fails_at_the_io_timeout_and_a_slow_steady_one_does_not() {
    let server = Server::builder(Bin::Demo, 1)
        .args(&["--io-timeout", "1s"])
        .start();
    let workers = server.workers();

    // Ten bytes of a thousand, then nothing, to a handler that reads the whole body.
    let mut stalled = Conn::connect(server.addr).unwrap();
    stalled
        .send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n0123456789")
        .unwrap();
    let sent = Instant::now();
    let response = stalled
        .read_response(false)
        .expect("the application answers");
    let after = sent.elapsed();
    // The application saw the read fail, and answered with its error.
    assert_eq!(response.status, 400, "{}", response.text());
    assert!(
        response.text().contains("stopped arriving"),
        "{}",
        response.text()
    );
    assert!(
        (NOT_BEFORE..CLOSE_WITHIN).contains(&after),
        "answered after {after:?}"
    );
    assert!(
        stalled.closed_within(CLOSE_WITHIN),
        "the connection was kept after its body stalled"
    );

    // A byte every 200 ms: slower than any timer tick, never idle for the timeout.
    let body = b"slow, steady";
    let mut slow = Conn::connect(server.addr).unwrap();
    slow.send(
        format!(
            "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    let started = Instant::now();
    for byte in body {
        std::thread::sleep(Duration::from_millis(200));
        slow.send(&[*byte]).unwrap();
    }
    let response = slow
        .read_response(false)
        .expect("the slow body is answered");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.text().as_bytes(), body);
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "not slower than the timeout"
    );
    assert_eq!(server.workers(), workers, "the worker was replaced");
}

#[test]
fn an_http2_request_body_that_stops_arriving_fails_and_the_connection_closes() {
    let server = Server::builder(Bin::Demo, 1)
        .args(&["--io-timeout", "1s"])
        .start();
    let mut tcp = frames::connect(server.addr);
    frames::write(
        &mut tcp,
        frames::HEADERS,
        frames::END_HEADERS,
        1,
        &frames::post("/echo"),
    );
    // Part of a body that never ends.
    frames::write(&mut tcp, frames::DATA, 0, 1, b"0123456789");
    let sent = Instant::now();
    let (mut answered, mut goaway) = (false, false);
    while let Some(frame) = frames::read(&mut tcp) {
        match frame.kind {
            frames::HEADERS if frame.stream == 1 => answered = true,
            frames::GOAWAY => goaway = true,
            // The graceful close waits for the client's answer to its PING.
            frames::PING if frame.flags & frames::ACK == 0 => {
                let _ = frames::try_write(&mut tcp, frames::PING, frames::ACK, 0, &frame.payload);
            }
            _ => {}
        }
    }
    let after = sent.elapsed();
    assert!(answered, "the application's answer never came");
    assert!(goaway, "closed without GOAWAY");
    assert!(
        (NOT_BEFORE..CLOSE_WITHIN).contains(&after),
        "closed after {after:?}"
    );
}

/// Opens an HTTP/2 connection whose streams' flow-control windows are shut (SETTINGS
/// INITIAL_WINDOW_SIZE 0, never a WINDOW_UPDATE), asks for `big`, and reads until the
/// response head has come.
fn zero_window_get(server: &Server) -> TcpStream {
    let mut tcp = frames::connect_with(server.addr, &[(frames::INITIAL_WINDOW_SIZE, 0)]);
    frames::write(
        &mut tcp,
        frames::HEADERS,
        frames::END_HEADERS | frames::END_STREAM,
        1,
        &frames::get("/big"),
    );
    loop {
        let frame = frames::read(&mut tcp).expect("closed before the response head");
        if (frame.kind, frame.stream) == (frames::HEADERS, 1) {
            return tcp;
        }
    }
}

/// Reads every frame until the server closes the connection, and says whether a GOAWAY and
/// any response data came.
fn read_to_close(tcp: &mut TcpStream) -> (bool, bool) {
    let (mut goaway, mut data) = (false, false);
    while let Some(frame) = frames::read(tcp) {
        goaway |= frame.kind == frames::GOAWAY;
        data |= frame.kind == frames::DATA && !frame.payload.is_empty();
    }
    (goaway, data)
}

#[test]
fn an_http2_stream_held_by_a_zero_window_is_closed_at_the_io_timeout() {
    let (server, _root) = static_server(&[]);
    let mut tcp = zero_window_get(&server);
    let asked = Instant::now();
    // The client reads the socket all along: only the window stalls the stream.
    let (_, data) = read_to_close(&mut tcp);
    let after = asked.elapsed();
    assert!(!data, "data was sent past a zero window");
    assert!(
        (NOT_BEFORE..CLOSE_WITHIN).contains(&after),
        "closed after {after:?}"
    );
    // The worker serves on.
    assert_eq!(super::http::get(server.addr, "/big").status, 200);
}

#[test]
fn an_http2_stream_held_by_a_zero_window_does_not_hold_the_drain_past_the_io_timeout() {
    let (mut server, _root) = static_server(&["--graceful-timeout", "60s"]);
    let mut tcp = zero_window_get(&server);
    server.signal(Signal::SIGTERM);
    let signalled = Instant::now();
    let (goaway, data) = read_to_close(&mut tcp);
    let after = signalled.elapsed();
    assert!(goaway, "the drain sent no GOAWAY");
    assert!(!data, "data was sent past a zero window");
    assert!(after < CLOSE_WITHIN, "closed {after:?} after TERM");
    // Well before the graceful timeout: nothing else held the worker.
    let (status, _) = server.expect_exit(PATIENCE);
    assert!(status.success());
}

#[test]
fn websockets_event_streams_and_slow_applications_that_make_progress_are_not_cut() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;

    let server = Server::builder(Bin::Demo, 1)
        .args(&["--io-timeout", "1s"])
        .start();
    let addr = server.addr;
    let rt = super::support::runtime();
    rt.block_on(async {
        // A slow application over HTTP/2: nothing is handed to the client while it works.
        let (mut send, _conn) = h2::connect(addr).await;
        let slow = tokio::spawn(h2::get(&mut send, &format!("http://{addr}/sleep?ms=2500")));
        // An event stream over HTTP/2, read as it comes: the application pauses between events.
        let events = h2::get(&mut send, &format!("http://{addr}/sse"))
            .await
            .unwrap();
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .unwrap();
        let mut events = events.into_body();
        let started = Instant::now();
        let (mut ticks, mut event_frames) = (0, 0);
        while started.elapsed() < Duration::from_secs(3) {
            tokio::select! {
                message = ws.next() => match message {
                    Some(Ok(Message::Text(_))) => ticks += 1,
                    other => panic!("the websocket ended: {other:?}"),
                },
                frame = http_body_util::BodyExt::frame(&mut events) => match frame {
                    Some(Ok(_)) => event_frames += 1,
                    other => panic!("the event stream ended: {other:?}"),
                },
            }
        }
        // A tick every 100 ms on each, over three io timeouts.
        assert!(ticks >= 20, "{ticks} websocket ticks");
        assert!(event_frames >= 20, "{event_frames} events");
        let slow = tokio::time::timeout(PATIENCE, slow)
            .await
            .unwrap()
            .unwrap()
            .expect("the slow application's answer");
        assert_eq!(slow.status(), 200);
    });
}
