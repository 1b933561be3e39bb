//! HTTP/2 responses that are ready together are written together: h2 alone writes each
//! response with a body of more than 256 bytes on its own (`src/worker/h2_batch.rs`).

use std::fs;
use std::io::Write;

use super::frames;
use super::support::procfs::write_calls;
use super::support::{Bin, Server};

/// Requests sent at once, in one TCP write.
const STREAMS: u32 = 20;

/// The body of the file served: over h2's 256 bytes, under the batch's copy limit.
const BODY: usize = 2048;

/// Reads frames until every one of `STREAMS` streams has ended, and returns the body bytes.
fn read_responses(tcp: &mut std::net::TcpStream) -> usize {
    let mut ended = 0;
    let mut body = 0;
    while ended < STREAMS {
        let frame = frames::read(tcp).expect("the server closed the connection");
        if frame.kind == frames::DATA {
            body += frame.payload.len();
        }
        if matches!(frame.kind, frames::DATA | frames::HEADERS)
            && frame.flags & frames::END_STREAM != 0
        {
            ended += 1;
        }
    }
    body
}

#[test]
fn responses_ready_together_leave_in_a_few_writes() {
    let root = tempfile::tempdir().unwrap();
    fs::write(root.path().join("f"), vec![b'x'; BODY]).unwrap();
    let server = Server::builder(Bin::Prefork, 1)
        .args(&["--root", root.path().to_str().unwrap()])
        .start();
    let worker = server.workers()[0];
    let mut tcp = frames::connect(server.addr);
    // One request first, so that the handshake's frames (SETTINGS and its acknowledgement)
    // are written before the count starts.
    let flags = frames::END_HEADERS | frames::END_STREAM;
    frames::write(&mut tcp, frames::HEADERS, flags, 1, &frames::get("/f"));
    loop {
        let frame = frames::read(&mut tcp).expect("the server closed the connection");
        if frame.kind == frames::SETTINGS && frame.flags & frames::ACK == 0 {
            frames::write(&mut tcp, frames::SETTINGS, frames::ACK, 0, &[]);
        }
        if frame.stream == 1 && frame.flags & frames::END_STREAM != 0 {
            break;
        }
    }

    let before = write_calls(worker).expect("the worker's /proc/PID/io");
    let batch: Vec<u8> = (0..STREAMS)
        .flat_map(|i| frames::encode(frames::HEADERS, flags, 3 + 2 * i, &frames::get("/f")))
        .collect();
    tcp.write_all(&batch).unwrap();
    assert_eq!(read_responses(&mut tcp), STREAMS as usize * BODY);
    let writes = write_calls(worker).expect("the worker's /proc/PID/io") - before;

    // One write for the batch, a few more if the worker read the requests in pieces, or for
    // its heartbeat to the master; one per response (h2 alone) is STREAMS.
    assert!(
        writes <= 5,
        "{writes} write calls for {STREAMS} responses ready together"
    );
}
