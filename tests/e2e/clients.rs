//! The client's address as the application and the access log see it: the peer directly,
//! what a trusted proxy forwards (`--forwarded-allow-ips`), never what an untrusted one claims,
//! and what a PROXY protocol header carries (`--proxy-protocol`). The demo's `/client` route
//! echoes prefork's `ClientAddr` and axum's `ConnectInfo`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::http::Conn;
use super::support::{Bin, PATIENCE, Server};

/// `/client` on a new connection, after `prefix` (a PROXY header) and with `headers`.
fn ask(addr: SocketAddr, prefix: &[u8], headers: &str) -> String {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut request = prefix.to_vec();
    request.extend(
        format!("GET /client HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{headers}\r\n")
            .as_bytes(),
    );
    tcp.write_all(&request).unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The value of `key=` in what `/client` answered.
fn field<'a>(answer: &'a str, key: &str) -> &'a str {
    answer
        .split_whitespace()
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key} in {answer}"))
}

/// A PROXY protocol version 2 header for a TCP/IPv4 client at `source`.
fn proxy_v2(source: SocketAddr) -> Vec<u8> {
    let SocketAddr::V4(source) = source else {
        panic!("an IPv4 source");
    };
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend([0x21, 0x11, 0, 12]);
    header.extend(source.ip().octets());
    header.extend([127, 0, 0, 1]);
    header.extend(source.port().to_be_bytes());
    header.extend(8000u16.to_be_bytes());
    header
}

#[test]
fn the_peer_reaches_the_application_and_a_trusted_proxy_forwards_the_client() {
    let log = tempfile::NamedTempFile::new().unwrap();
    let server = Server::builder(Bin::Demo, 1)
        .args(&["--access-logfile", log.path().to_str().unwrap()])
        .start();
    let direct = ask(server.addr, b"", "");
    assert!(
        field(&direct, "client").starts_with("127.0.0.1:"),
        "{direct}"
    );
    assert_eq!(field(&direct, "client"), field(&direct, "peer"));
    assert_eq!(field(&direct, "forwarded"), "false");
    assert_eq!(field(&direct, "connect-info"), field(&direct, "client"));

    // 127.0.0.1 is trusted by default, as in gunicorn.
    let forwarded = ask(
        server.addr,
        b"",
        "X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\n",
    );
    assert_eq!(field(&forwarded, "client"), "203.0.113.9:0");
    assert!(field(&forwarded, "peer").starts_with("127.0.0.1:"));
    assert_eq!(field(&forwarded, "forwarded"), "true");
    assert_eq!(field(&forwarded, "scheme"), "https");
    assert_eq!(field(&forwarded, "connect-info"), "203.0.113.9:0");

    // A client that writes the header itself cannot pass for another: the nearest untrusted
    // address is the client.
    let spoofed = ask(
        server.addr,
        b"",
        "X-Forwarded-For: 192.0.2.1, 203.0.113.9\r\n",
    );
    assert_eq!(field(&spoofed, "client"), "203.0.113.9:0");
    let rfc = ask(
        server.addr,
        b"",
        "Forwarded: for=\"[2001:db8::7]:4711\";proto=http\r\n",
    );
    assert_eq!(field(&rfc, "client"), "[2001:db8::7]:4711");
    assert_eq!(field(&rfc, "scheme"), "http");

    // The access log names the client, not the proxy.
    server.wait_until("the forwarded client in the access log", || {
        let text = std::fs::read_to_string(log.path()).ok()?;
        text.lines()
            .any(|l| l.starts_with("203.0.113.9 "))
            .then_some(())
    });
}

#[test]
fn an_untrusted_peer_is_not_believed() {
    let server = Server::builder(Bin::Demo, 1)
        .args(&["--forwarded-allow-ips", "10.0.0.0/8"])
        .start();
    let answer = ask(server.addr, b"", "X-Forwarded-For: 203.0.113.9\r\n");
    assert!(
        field(&answer, "client").starts_with("127.0.0.1:"),
        "{answer}"
    );
    assert_eq!(field(&answer, "forwarded"), "false");
    assert_eq!(field(&answer, "scheme"), "-");
}

#[test]
fn proxy_protocol_headers_give_the_client_and_connections_without_one_are_closed() {
    let server = Server::builder(Bin::Demo, 1)
        .args(&["--proxy-protocol"])
        .start();
    let workers = server.workers();
    let v1 = ask(
        server.addr,
        b"PROXY TCP4 198.51.100.7 127.0.0.1 4711 8000\r\n",
        "",
    );
    assert_eq!(field(&v1, "client"), "198.51.100.7:4711");
    assert!(field(&v1, "peer").starts_with("127.0.0.1:"));
    assert_eq!(field(&v1, "forwarded"), "true");
    let v2 = ask(
        server.addr,
        &proxy_v2("198.51.100.8:5000".parse().unwrap()),
        "",
    );
    assert_eq!(field(&v2, "client"), "198.51.100.8:5000");
    // A balancer's own health check (UNKNOWN) is served as from the peer.
    let local = ask(server.addr, b"PROXY UNKNOWN\r\n", "");
    assert!(field(&local, "client").starts_with("127.0.0.1:"), "{local}");

    // Without a header, or with a malformed one: closed, no response, the worker unharmed.
    for start in [
        &b"GET /client HTTP/1.1\r\nHost: test\r\n\r\n"[..],
        &b"PROXY TCP4 not an address 1 2\r\nGET / HTTP/1.1\r\n\r\n"[..],
        &b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff"[..],
    ] {
        let mut conn = Conn::connect(server.addr).unwrap();
        conn.send(start).unwrap();
        assert!(
            conn.closed_within(Duration::from_secs(10)),
            "a connection starting {:?} stayed open",
            String::from_utf8_lossy(&start[..12])
        );
    }
    assert_eq!(server.workers(), workers, "a worker died");
    let again = ask(
        server.addr,
        b"PROXY TCP4 198.51.100.9 127.0.0.1 1 8000\r\n",
        "",
    );
    assert_eq!(field(&again, "client"), "198.51.100.9:1");
}
