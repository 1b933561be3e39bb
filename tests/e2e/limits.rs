//! Request limits and malformed requests (docs/security.md, "Request limits"): each limit is
//! exact at its edge, refusals are 4xx, an HTTP/1 connection is closed after one, and the
//! worker that refused keeps serving. Requests are written byte for byte on raw sockets.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;

use super::h2;
use super::h2_frames as frames;
use super::http::{Conn, Response};
use super::support::{Bin, Server};

/// How long a refused connection may stay open before the test calls it not closed.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

/// The request line the tests vary: `GET /?aaa… HTTP/1.1`, `len` bytes long (a query, which
/// the static app ignores, so that no file name is too long for the file system).
fn request_line(len: usize) -> String {
    let fixed = "GET /? HTTP/1.1".len();
    format!("GET /?{} HTTP/1.1", "a".repeat(len - fixed))
}

/// A static file server with `args`, on a root that has an index page; keep the directory.
fn start(args: &[&str]) -> (Server, tempfile::TempDir) {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("index.html"), "index").unwrap();
    let server = Server::builder(Bin::Prefork, 1)
        .args(&["--root", root.path().to_str().unwrap()])
        .args(args)
        .start();
    (server, root)
}

/// Sends `head` (lines without their CRLF; the blank line is added) on a new connection and
/// reads the response, and whether the server then closed the connection.
fn send_head(addr: SocketAddr, head: &[String]) -> (Response, bool) {
    let mut raw = head.join("\r\n");
    raw.push_str("\r\n\r\n");
    send_raw(addr, raw.as_bytes())
}

fn send_raw(addr: SocketAddr, raw: &[u8]) -> (Response, bool) {
    let mut conn = Conn::connect(addr).unwrap();
    conn.send(raw).unwrap();
    let response = conn.read_response(false).unwrap();
    let closed = conn.closed_within(CLOSE_WITHIN);
    (response, closed)
}

/// A GET of `/` with `line` as its request line, `Host` and then `fields`.
fn head(line: String, fields: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut head = vec![line, "Host: test".to_string()];
    head.extend(fields);
    head
}

/// `n` fields `X-N: v`.
fn fields(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("X-{i}: v")).collect()
}

/// Asserts the request was refused with `status` and its connection closed.
fn refused(addr: SocketAddr, head: &[String], status: u16) {
    let (response, closed) = send_head(addr, head);
    assert_eq!(response.status, status, "{}", response.text());
    assert!(response.closes(), "no Connection: close: {response:?}");
    assert!(closed, "the connection stayed open after {status}");
}

/// Asserts the request reached the application: the index page of [`start`].
fn accepted(addr: SocketAddr, head: &[String]) {
    let (response, _) = send_head(addr, head);
    assert_eq!(response.status, 200, "{}", response.text());
}

/// Asserts every worker of `server` is still the one it started with and still serves.
fn still_serving(server: &Server, workers: &[nix::unistd::Pid]) {
    assert_eq!(server.workers(), workers, "a worker was replaced");
    assert_eq!(super::http::get(server.addr, "/").status, 200);
}

#[test]
fn request_line_is_limited_at_its_edge() {
    let (server, _root) = start(&[]);
    accepted(server.addr, &head(request_line(4094), []));
    refused(server.addr, &head(request_line(4095), []), 414);

    let (server, _root) = start(&["--limit-request-line", "100"]);
    accepted(server.addr, &head(request_line(100), []));
    refused(server.addr, &head(request_line(101), []), 414);
}

#[test]
fn header_fields_are_counted_at_the_edge() {
    // Host is one of the fields. The default is also hyper's own parser's count; 10 is below
    // it (checked by prefork), 150 above it (hyper told to take more).
    for (limit, args) in [
        (100, vec![]),
        (10, vec!["--limit-request-fields", "10"]),
        (150, vec!["--limit-request-fields", "150"]),
    ] {
        let (server, _root) = start(&args);
        let workers = server.workers();
        accepted(server.addr, &head(request_line(20), fields(limit - 1)));
        refused(server.addr, &head(request_line(20), fields(limit)), 431);
        still_serving(&server, &workers);
    }
}

#[test]
fn header_field_size_is_limited_at_its_edge() {
    // Name plus value, as gunicorn counts: "X-Big" is 5 bytes.
    let field = |size: usize| format!("X-Big: {}", "v".repeat(size - "X-Big".len()));
    let (server, _root) = start(&[]);
    accepted(server.addr, &head(request_line(20), [field(8190)]));
    refused(server.addr, &head(request_line(20), [field(8191)]), 431);

    let (server, _root) = start(&["--limit-request-field-size", "64"]);
    accepted(server.addr, &head(request_line(20), [field(64)]));
    refused(server.addr, &head(request_line(20), [field(65)]), 431);
}

#[test]
fn a_head_larger_than_64_kib_is_refused_and_the_worker_serves_on() {
    let (server, _root) = start(&[]);
    let workers = server.workers();
    // Fields within the field limits, 9 × 8000 bytes together past 64 KiB.
    let big = |n: usize| (0..n).map(|i| format!("X-{i}: {}", "v".repeat(7990)));
    accepted(server.addr, &head(request_line(20), big(7)));
    let (response, closed) = send_head(server.addr, &head(request_line(20), big(9)));
    assert_eq!(response.status, 431, "{response:?}");
    assert!(closed, "the connection stayed open after 431");
    still_serving(&server, &workers);
}

#[test]
fn missing_or_repeated_host_and_repeated_transfer_encoding_are_refused() {
    let (server, _root) = start(&[]);
    let workers = server.workers();
    let line = || "GET / HTTP/1.1".to_string();
    refused(server.addr, &[line()], 400);
    refused(
        server.addr,
        &[line(), "Host: a".into(), "Host: b".into()],
        400,
    );
    refused(
        server.addr,
        &[line(), "Host: a".into(), "Host: a".into()],
        400,
    );
    let chunked_twice = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\
                         Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let (response, closed) = send_raw(server.addr, chunked_twice.as_bytes());
    assert_eq!(response.status, 400, "{response:?}");
    assert!(response.closes() && closed);
    // HTTP/1.0 has no Host requirement.
    accepted(server.addr, &["GET / HTTP/1.0".to_string()]);
    still_serving(&server, &workers);
}

#[test]
fn malformed_framing_is_refused_by_hyper() {
    let (server, _root) = start(&[]);
    let workers = server.workers();
    for raw in [
        // Two different lengths.
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        // A coding hyper does not know, and chunked not last.
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        // A field folded onto a second line (obs-fold).
        "GET / HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n",
        // Whitespace between the name and the colon.
        "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
    ] {
        let (response, closed) = send_raw(server.addr, raw.as_bytes());
        assert_eq!(response.status, 400, "{raw:?}: {response:?}");
        assert!(closed, "{raw:?}: the connection stayed open");
    }
    still_serving(&server, &workers);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("a"), "first").unwrap();
    std::fs::write(root.path().join("b"), "second").unwrap();
    let server = Server::builder(Bin::Prefork, 1)
        .args(&["--root", root.path().to_str().unwrap()])
        .start();
    let mut conn = Conn::connect(server.addr).unwrap();
    conn.send(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /missing HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let statuses_and_bodies: Vec<_> = (0..3)
        .map(|_| {
            let r = conn.read_response(false).unwrap();
            (r.status, r.text())
        })
        .collect();
    assert_eq!(statuses_and_bodies[0], (200, "first".to_string()));
    assert_eq!(statuses_and_bodies[1].0, 404);
    assert_eq!(statuses_and_bodies[2], (200, "second".to_string()));
}

#[test]
fn http2_header_list_too_large_is_refused_and_the_connection_serves_on() {
    let (server, _root) = start(&[]);
    let workers = server.workers();
    let rt = super::support::runtime();
    rt.block_on(async {
        let (mut send, conn) = h2::connect(server.addr).await;
        // Each field within the field limits, together past the 64 KiB header list.
        let mut req = http::Request::get(server.url("/"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        for i in 0..9 {
            req.headers_mut().insert(
                http::HeaderName::try_from(format!("x-{i}")).unwrap(),
                http::HeaderValue::try_from("v".repeat(7990)).unwrap(),
            );
        }
        send.ready().await.unwrap();
        match send.send_request(req).await {
            Ok(response) => assert_eq!(response.status(), 431),
            // A stream reset is a refusal too.
            Err(e) => assert!(!e.is_closed(), "the connection closed: {e}"),
        }
        // A field over the field size limit is refused by prefork's own check.
        let mut req = http::Request::get(server.url("/"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        req.headers_mut().insert(
            "x-big",
            http::HeaderValue::try_from("v".repeat(8191 - "x-big".len())).unwrap(),
        );
        send.ready().await.unwrap();
        assert_eq!(send.send_request(req).await.unwrap().status(), 431);
        // The same connection still serves.
        send.ready().await.unwrap();
        let response = h2::get(&mut send, &server.url("/")).await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(!conn.is_finished());
    });
    still_serving(&server, &workers);
}

/// HTTP/2 frames written by hand, for what a well-behaved client library will not send.
#[test]
fn http2_continuation_flood_is_refused_and_the_worker_serves_on() {
    let (server, _root) = start(&[]);
    let workers = server.workers();
    let mut tcp = frames::connect(server.addr);
    frames::write(&mut tcp, frames::HEADERS, 0, 1, &frames::get("/"));
    // Never END_HEADERS: a header block that does not end, in small frames.
    let mut goaway = None;
    for i in 0..1000 {
        let field = frames::field(&format!("x-{i}"), "v");
        if frames::try_write(&mut tcp, frames::CONTINUATION, 0, 1, &field).is_err() {
            break;
        }
    }
    while let Some(frame) = frames::read(&mut tcp) {
        assert_ne!(
            (frame.kind, frame.stream),
            (frames::HEADERS, 1),
            "the flood was answered"
        );
        if frame.kind == frames::GOAWAY {
            let code = u32::from_be_bytes(frame.payload[4..8].try_into().unwrap());
            goaway = Some(code);
        }
    }
    // The flood protection's answer, not an error in how the frames were written.
    assert_eq!(
        goaway,
        Some(frames::ENHANCE_YOUR_CALM),
        "GOAWAY's error code"
    );
    still_serving(&server, &workers);
}

#[test]
fn http2_streams_past_the_concurrency_limit_are_refused() {
    let server = Server::start(Bin::Demo, 1);
    let mut tcp = frames::connect(server.addr);
    // The server's SETTINGS says the limit; acknowledge it so that it surely applies.
    let settings = frames::read(&mut tcp).unwrap();
    assert_eq!(settings.kind, frames::SETTINGS);
    let advertised = settings
        .payload
        .chunks(6)
        .find(|s| u16::from_be_bytes([s[0], s[1]]) == frames::MAX_CONCURRENT_STREAMS)
        .map(|s| u32::from_be_bytes([s[2], s[3], s[4], s[5]]));
    assert_eq!(advertised, Some(100));
    frames::write(&mut tcp, frames::SETTINGS, frames::ACK, 0, &[]);
    // 101 slow streams at once: the last is one too many.
    for i in 0..101u32 {
        frames::write(
            &mut tcp,
            frames::HEADERS,
            frames::END_HEADERS | frames::END_STREAM,
            2 * i + 1,
            &frames::get("/sleep?ms=3000"),
        );
    }
    let last = 2 * 100 + 1;
    loop {
        let frame = frames::read(&mut tcp).expect("the connection closed");
        if frame.kind == frames::RST_STREAM {
            let code = u32::from_be_bytes(frame.payload[..4].try_into().unwrap());
            assert_eq!((frame.stream, code), (last, frames::REFUSED_STREAM));
            break;
        }
        assert_ne!(frame.kind, frames::GOAWAY, "the connection was ended");
    }
}
