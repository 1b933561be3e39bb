//! Files larger than the small-file cache go from the page cache to the socket with
//! `sendfile(2)` over plain HTTP/1: the bytes on the wire are the file's (never the zeros that
//! stand in for them inside the worker), whole, ranged and pipelined; HTTP/2 still gets them
//! through hyper; and a file truncated while it is sent ends its response short and closed.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;

use http_body_util::BodyExt;

use super::h2;
use super::http::Conn;
use super::support::procfs::read_calls;
use super::support::{Bin, PATIENCE, Server, runtime};

/// The file's bytes: never zero, and differing from one 4 KiB page to the next, so that a
/// zero, a byte from the wrong place or a page sent twice shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 7 + i / 4096) % 251 + 1) as u8)
        .collect()
}

fn serve(root: &Path) -> Server {
    Server::builder(Bin::Prefork, 1)
        .args(&["--root", root.to_str().unwrap()])
        .start()
}

/// A connection on which `GET path` has begun: the response's head and first bytes, 64 KiB
/// in all, have come, and the client then stops reading (most is still to send).
fn download_begun(server: &Server, path: &str) -> (TcpStream, Vec<u8>) {
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .unwrap();
    let mut got = vec![0; 64 << 10];
    stream.read_exact(&mut got).unwrap();
    (stream, got)
}

#[test]
fn large_files_are_sent_whole_ranged_and_pipelined_with_their_own_bytes() {
    let root = tempfile::tempdir().unwrap();
    let big = pattern(32 << 20);
    let mid = pattern(40 << 10);
    fs::write(root.path().join("big"), &big).unwrap();
    fs::write(root.path().join("mid"), &mid).unwrap();
    let server = serve(root.path());
    let [worker] = server.wait_workers(1, &[])[..] else {
        unreachable!()
    };
    let mut conn = Conn::connect(server.addr).unwrap();

    let before = read_calls(worker).expect("the worker's /proc/PID/io");
    let whole = conn.get("/big").unwrap();
    let reads = read_calls(worker).expect("the worker's /proc/PID/io") - before;
    assert_eq!(whole.status, 200);
    assert!(whole.body == big, "the whole file differs");
    // Read through user space, 32 MiB take at least 256 reads of the 128 KiB the static
    // backend reads at a time; `sendfile(2)` counts one per call, and a call sends what the
    // socket takes (a few MiB on loopback).
    assert!(
        reads < 256,
        "{reads} read calls for 32 MiB: the file went through the worker's memory"
    );

    let ranged = conn
        .request("GET", "/big", &[("Range", "bytes=1000-3000999")])
        .unwrap();
    assert_eq!(ranged.status, 206);
    assert!(ranged.body == big[1000..3_001_000], "the range differs");

    // Three requests in one write: each body must follow its own head.
    let ask = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    conn.send((ask("/mid") + &ask("/big") + &ask("/mid")).as_bytes())
        .unwrap();
    for expected in [&mid, &big, &mid] {
        let response = conn.read_response(false).unwrap();
        assert_eq!(response.status, 200);
        assert!(&response.body == expected, "a pipelined body differs");
    }

    // HTTP/2 frames the body itself: the same bytes come through hyper.
    let body = runtime().block_on(async {
        let (mut send, _conn) = h2::connect(server.addr).await;
        let response = h2::get(&mut send, &server.url("/big")).await.unwrap();
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap().to_bytes()
    });
    assert!(body == big, "the file differs over HTTP/2");
}

/// The length the file is cut to while it is sent.
const TRUNCATED_TO: usize = 1 << 20;

#[test]
fn a_file_truncated_while_sent_ends_its_response_short_and_the_worker_serves_on() {
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("big");
    // More than the socket buffers of both ends hold, so that most is still to send when the
    // file shrinks.
    let big = pattern(48 << 20);
    fs::write(&path, &big).unwrap();
    fs::write(root.path().join("small"), "still here").unwrap();
    let server = serve(root.path());
    let worker = server.wait_workers(1, &[]);

    let (mut stream, mut got) = download_begun(&server, "/big");
    let head_end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head")
        + 4;
    let head = String::from_utf8_lossy(&got[..head_end]).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains(&format!("content-length: {}", big.len())),
        "{head}"
    );

    fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(TRUNCATED_TO as u64)
        .unwrap();
    // The rest, until the worker closes the connection.
    stream.read_to_end(&mut got).unwrap();
    let body = &got[head_end..];
    assert!(
        body.len() < big.len(),
        "all {} bytes came for a file truncated while they were sent",
        big.len()
    );
    // What the file still holds came as it is. Past its new end, bytes already handed to the
    // socket may come as the kernel left them when it dropped the pages (zeros): the response
    // is short, and its length tells the client so.
    let kept = body.len().min(TRUNCATED_TO);
    assert!(
        body[..kept] == big[..kept],
        "of the {} bytes that came, those the file still holds are not the file's",
        body.len()
    );

    let mut conn = Conn::connect(server.addr).unwrap();
    assert_eq!(conn.get("/small").unwrap().text(), "still here");
    let truncated = conn.get("/big").unwrap();
    assert!(
        truncated.body == big[..TRUNCATED_TO],
        "the truncated file differs"
    );
    assert_eq!(
        server.wait_workers(1, &[]),
        worker,
        "the worker was replaced"
    );
    assert!(
        !server.log().contains("panicked"),
        "a worker panicked:\n{}",
        server.log()
    );
}

#[test]
fn a_large_download_in_flight_at_term_completes_and_is_logged() {
    let root = tempfile::tempdir().unwrap();
    let big = pattern(32 << 20);
    fs::write(root.path().join("big"), &big).unwrap();
    let logs = tempfile::tempdir().unwrap();
    let access = logs.path().join("access.log");
    let mut server = Server::builder(Bin::Prefork, 1)
        .args(&["--root", root.path().to_str().unwrap()])
        .args(&["--access-logfile", access.to_str().unwrap()])
        .start();

    let (mut stream, mut got) = download_begun(&server, "/big");
    server.signal(nix::sys::signal::Signal::SIGTERM);
    stream.read_to_end(&mut got).unwrap();
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&got[..head_end]).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    // The connection closed (the read reached its end) after the whole body, not before.
    assert!(
        got[head_end..] == big[..],
        "the download differs or was cut"
    );

    let (status, _) = server.expect_exit(PATIENCE);
    assert!(status.success(), "{status:?}");
    let line = fs::read_to_string(&access).unwrap();
    assert!(
        line.contains(&format!("\"GET /big HTTP/1.1\" 200 {}", big.len())),
        "{line}"
    );
}
