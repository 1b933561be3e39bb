//! TLS (`--certfile`, `--keyfile`, `--ca-certs`, `https://` addresses) with certificates made
//! here and a real TLS client (tokio-rustls with hyper, and curl where installed): ALPN, a
//! cleartext listener beside a TLS one, mutual TLS, rotation by a reload, files refused at
//! start and on reload, and clients that stall in or skip the handshake.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use nix::sys::signal::Signal;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::http::get;
use super::support::certs::{Authority, Files, Issued};
use super::support::{Bin, PATIENCE, Server, run};

/// A directory with an authority and a server certificate of serial 1 in it.
struct Setup {
    dir: tempfile::TempDir,
    authority: Authority,
    server: Files,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let authority = Authority::new("test CA");
        let server = authority.server(1, 30).write(dir.path(), "server");
        Setup {
            dir,
            authority,
            server,
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// `--certfile C --keyfile K`, and a cleartext and a TLS address.
    fn args(&self) -> Vec<String> {
        [
            "-b",
            "127.0.0.1:0",
            "-b",
            "https://127.0.0.1:0",
            "--certfile",
            self.server.cert.to_str().unwrap(),
            "--keyfile",
            self.server.key.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    }

    fn start(&self, bin: Bin, workers: usize, more: &[&str]) -> (Server, SocketAddr) {
        let args = self.args();
        let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
        all.extend(more);
        let server = Server::builder(bin, workers).args(&all).start();
        let https = server.https_addr();
        (server, https)
    }

    /// A client that trusts this setup's authority, offering `alpn`, with `identity` as its
    /// certificate if any.
    fn client(&self, alpn: &[&[u8]], identity: Option<&Issued>) -> TlsConnector {
        client(&self.authority.pem(), alpn, identity)
    }
}

fn client(authority_pem: &str, alpn: &[&[u8]], identity: Option<&Issued>) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(authority_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(issued) => {
            let chain = CertificateDer::pem_slice_iter(issued.cert.as_bytes())
                .map(Result::unwrap)
                .collect();
            let key = PrivateKeyDer::from_pem_slice(issued.key.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

/// Threads of its own: a test blocks its thread on the server's log while requests it spawned
/// go on.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn connect(
    connector: &TlsConnector,
    addr: SocketAddr,
) -> std::io::Result<TlsStream<TcpStream>> {
    connect_as(connector, addr, "localhost").await
}

/// A handshake asking for `name` (sent by SNI when it is a DNS name; an IP address is not).
async fn connect_as(
    connector: &TlsConnector,
    addr: SocketAddr,
    name: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_string()).unwrap();
    tokio::time::timeout(PATIENCE, connector.connect(name, tcp))
        .await
        .expect("the handshake ends")
}

/// The serial number of the certificate the server presented, as rcgen wrote it.
fn serial(stream: &TlsStream<TcpStream>) -> u64 {
    let (_, session) = stream.get_ref();
    let cert = &session.peer_certificates().expect("a server certificate")[0];
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).unwrap();
    parsed
        .raw_serial()
        .iter()
        .fold(0, |n, byte| n << 8 | u64::from(*byte))
}

/// `GET path` over HTTP/1.1 on `stream`, whose sender is returned for more requests.
async fn http1(
    stream: TlsStream<TcpStream>,
) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

async fn request1(
    send: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    path: &str,
) -> hyper::Result<(u16, String)> {
    let req = http::Request::get(path)
        .header("host", "localhost")
        .body(Empty::new())
        .unwrap();
    // The previous response's end reaches the connection's task a moment after its body is
    // read: a request sent before is refused by the client ("connection was not ready").
    send.ready().await?;
    let response = send.send_request(req).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// `GET path` over HTTP/2 on `stream`, the connection's only request.
async fn h2_get(stream: TlsStream<TcpStream>, path: &str) -> http::Response<Incoming> {
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("https://localhost{path}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    send.send_request(req).await.unwrap()
}

/// Once a reload is complete, an old worker still serves what was queued when it began to
/// drain: waits until new connections get `serial`, then checks that the next ones all do.
async fn wait_for_serial(connector: &TlsConnector, addr: SocketAddr, serial: u64) {
    let until = Instant::now() + PATIENCE;
    while fetch(connector, addr, "/").await.0 != serial {
        assert!(
            Instant::now() < until,
            "no new connection got serial {serial}"
        );
    }
    for _ in 0..10 {
        assert_eq!(fetch(connector, addr, "/").await, (serial, 200));
    }
}

/// One request on a new TLS connection: the certificate's serial and the status.
async fn fetch(connector: &TlsConnector, addr: SocketAddr, path: &str) -> (u64, u16) {
    let stream = connect(connector, addr).await.expect("a TLS connection");
    let serial = serial(&stream);
    let mut send = http1(stream).await;
    let (status, _) = request1(&mut send, path).await.expect("a response");
    (serial, status)
}

#[test]
fn tls_serves_h2_and_http1_by_alpn_beside_a_cleartext_address() {
    let setup = Setup::new();
    let (server, https) = setup.start(Bin::Demo, 2, &[]);
    let rt = runtime();
    rt.block_on(async {
        // h2 offered first: chosen, and spoken.
        let connector = setup.client(&[b"h2", b"http/1.1"], None);
        let stream = connect(&connector, https).await.unwrap();
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        assert_eq!(serial(&stream), 1);
        let response = h2_get(stream, "/").await;
        assert_eq!(response.version(), http::Version::HTTP_2);
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"Hello, World!");

        // HTTP/1.1 alone: chosen, and kept alive over several requests.
        let connector = setup.client(&[b"http/1.1"], None);
        let stream = connect(&connector, https).await.unwrap();
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        let mut send = http1(stream).await;
        for _ in 0..3 {
            let (status, body) = request1(&mut send, "/").await.unwrap();
            assert_eq!((status, body.as_str()), (200, "Hello, World!"));
        }
    });
    // The cleartext address serves cleartext at the same time.
    let response = get(server.addr, "/");
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "Hello, World!");

    // And curl, where installed, with each protocol.
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_ok()
    {
        let ca = setup.path("ca.pem");
        std::fs::write(&ca, setup.authority.pem()).unwrap();
        for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
            let out = std::process::Command::new("curl")
                .args(["-sS", flag, "--cacert", &ca, "--max-time", "20"])
                .args(["-o", "/dev/null", "-w", "%{http_version} %{http_code}"])
                .args([
                    "--resolve",
                    &format!("localhost:{}:127.0.0.1", https.port()),
                ])
                .arg(format!("https://localhost:{}/", https.port()))
                .output()
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                format!("{version} 200"),
                "curl {flag}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Over TLS the worker encrypts every byte, so a large file is read, not sent by the kernel
/// from its stand-ins: the client gets the file's bytes over HTTP/1.1 and HTTP/2.
#[test]
fn tls_a_parked_http1_connection_is_served_on() {
    let setup = Setup::new();
    let (server, https) = setup.start(
        Bin::Demo,
        1,
        &["--log-level", "debug", "--keepalive", "60s"],
    );
    let rt = runtime();
    rt.block_on(async {
        let connector = setup.client(&[b"http/1.1"], None);
        let mut send = http1(connect(&connector, https).await.unwrap()).await;
        let (status, body) = request1(&mut send, "/").await.unwrap();
        assert_eq!((status, body.as_str()), (200, "Hello, World!"));
        let server = &server;
        tokio::task::block_in_place(|| super::parking::wait_asked(server, 1));
        for path in ["/", "/pid"] {
            let (status, _) = request1(&mut send, path).await.unwrap();
            assert_eq!(status, 200, "{path} after parking");
        }
    });
}

#[test]
fn tls_large_files_come_whole_over_http1_and_h2() {
    let setup = Setup::new();
    let root = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..3 << 20).map(|i: usize| (i % 251 + 1) as u8).collect();
    std::fs::write(root.path().join("big"), &big).unwrap();
    let (_server, https) = setup.start(Bin::Prefork, 1, &["--root", root.path().to_str().unwrap()]);
    runtime().block_on(async {
        let connector = setup.client(&[b"http/1.1"], None);
        let mut send = http1(connect(&connector, https).await.unwrap()).await;
        let req = http::Request::get("/big")
            .header("host", "localhost")
            .body(Empty::new())
            .unwrap();
        let response = send.send_request(req).await.unwrap();
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(body == big, "the file differs over TLS and HTTP/1.1");

        let connector = setup.client(&[b"h2"], None);
        let stream = connect(&connector, https).await.unwrap();
        let response = h2_get(stream, "/big").await;
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(body == big, "the file differs over TLS and HTTP/2");
    });
}

#[test]
fn several_certificates_are_chosen_by_the_name_the_client_asks_for() {
    let setup = Setup::new();
    let dir = setup.dir.path();
    let a = setup.authority.named(&["a.example"], 2).write(dir, "a");
    let b = setup.authority.named(&["*.b.example"], 3).write(dir, "b");
    let (_server, https) = setup.start(
        Bin::Demo,
        1,
        &[
            "--certfile",
            a.cert.to_str().unwrap(),
            "--keyfile",
            a.key.to_str().unwrap(),
            "--certfile",
            b.cert.to_str().unwrap(),
            "--keyfile",
            b.key.to_str().unwrap(),
        ],
    );
    let rt = runtime();
    rt.block_on(async {
        let connector = setup.client(&[b"http/1.1"], None);
        // The first pair (`localhost`, serial 1) serves its own name, and a client that sends
        // no name (one connecting to an IP address).
        for (name, expected) in [
            ("a.example", 2),
            ("www.b.example", 3),
            ("localhost", 1),
            ("127.0.0.1", 1),
        ] {
            let stream = connect_as(&connector, https, name)
                .await
                .unwrap_or_else(|e| panic!("a handshake for {name}: {e}"));
            assert_eq!(serial(&stream), expected, "the certificate for {name}");
            let mut send = http1(stream).await;
            assert_eq!(request1(&mut send, "/").await.unwrap().0, 200);
        }
        // The wildcard covers one label, not the parent: the default one is presented, which
        // the client refuses for that name.
        assert!(connect_as(&connector, https, "b.example").await.is_err());
    });
}

#[test]
fn mutual_tls_takes_a_good_client_certificate_and_refuses_a_missing_or_foreign_one() {
    let setup = Setup::new();
    let ca = setup.path("clients-ca.pem");
    std::fs::write(&ca, setup.authority.pem()).unwrap();
    let (_server, https) = setup.start(Bin::Demo, 1, &["--ca-certs", &ca]);
    let good = setup.authority.client("good client");
    let foreign = Authority::new("someone else").client("stranger");
    let rt = runtime();
    rt.block_on(async {
        let connector = setup.client(&[b"http/1.1"], Some(&good));
        assert_eq!(fetch(&connector, https, "/").await.1, 200);

        // TLS 1.3 clients learn of the refusal at their first read, after the handshake.
        for (what, identity) in [("no certificate", None), ("a foreign one", Some(&foreign))] {
            let connector = setup.client(&[b"http/1.1"], identity);
            let refused = match connect(&connector, https).await {
                Err(_) => true,
                Ok(stream) => {
                    let mut send = http1(stream).await;
                    request1(&mut send, "/").await.is_err()
                }
            };
            assert!(refused, "a client with {what} was served");
        }
        // The worker serves on.
        let connector = setup.client(&[b"http/1.1"], Some(&good));
        assert_eq!(fetch(&connector, https, "/").await.1, 200);
    });
}

#[test]
fn tls_files_that_do_not_load_stop_the_start_with_status_2_and_name_the_file() {
    let setup = Setup::new();
    let dir = setup.dir.path();
    let other = setup.authority.server(2, 30).write(dir, "other");
    let expired = setup.authority.server(3, -1).write(dir, "expired");
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let missing = dir.join("missing.pem");
    let cert = setup.server.cert.as_path();
    let key = setup.server.key.as_path();
    let cases: [(&Path, &Path, &str); 5] = [
        (&missing, key, "cannot read"),
        (&garbage, key, "no PEM certificate"),
        (cert, &garbage, "no usable private key"),
        (cert, &other.key, "does not match the certificate"),
        (&expired.cert, &expired.key, "expired on"),
    ];
    for (certfile, keyfile, problem) in cases {
        for command in ["check", "serve"] {
            let (status, stderr) = on_https(command, &[(certfile, keyfile)], &[]);
            assert_eq!(status.code(), Some(2), "{command} {problem}: {stderr}");
            let line = stderr.trim();
            assert!(!line.contains('\n'), "more than one line: {stderr}");
            let named = if problem == "no usable private key" || problem.contains("match") {
                keyfile
            } else {
                certfile
            };
            assert!(
                line.contains(problem) && line.contains(named.to_str().unwrap()),
                "{command}: expected {problem} about {}: {line}",
                named.display()
            );
        }
    }
    // A certfile without its keyfile, among several.
    let unpaired = ["--certfile", other.cert.to_str().unwrap()];
    let (status, stderr) = on_https("check", &[(cert, key)], &unpaired);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("is given without a keyfile")
            && stderr.contains(other.cert.to_str().unwrap()),
        "{stderr}"
    );

    // An https:// address without a certificate.
    let (status, stderr) = run(Bin::Prefork, &["check", "-b", "https://127.0.0.1:0"], &[]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("need --certfile"), "{stderr}");

    // A certificate about to expire is served, with a warning.
    let soon = setup.authority.server(4, 5).write(dir, "soon");
    let (status, stderr) = on_https("check", &[(&soon.cert, &soon.key)], &[]);
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("expires in 4 day(s)"), "{stderr}");
}

/// Runs `prefork COMMAND` on an `https://` address with the certificate and key `pairs`, then
/// `more`; its exit status and standard error.
fn on_https(
    command: &str,
    pairs: &[(&Path, &Path)],
    more: &[&str],
) -> (std::process::ExitStatus, String) {
    let mut args = vec![command, "-b", "https://127.0.0.1:0"];
    for (cert, key) in pairs {
        args.extend(["--certfile", cert.to_str().unwrap()]);
        args.extend(["--keyfile", key.to_str().unwrap()]);
    }
    args.extend(more);
    run(Bin::Prefork, &args, &[])
}

/// Sends HUP and waits until the reload is over, one way or the other; returns the line.
fn reload(server: &Server, outcome: &str) -> String {
    let skip = server.log_len();
    server.signal(Signal::SIGHUP);
    server.wait_log_after(outcome, skip, PATIENCE).1
}

#[test]
fn a_reload_takes_up_a_rotated_certificate_and_refuses_a_bad_one() {
    let setup = Setup::new();
    let (server, https) = setup.start(Bin::Demo, 2, &[]);
    let rt = runtime();
    let connector = setup.client(&[b"http/1.1"], None);
    rt.block_on(async {
        assert_eq!(fetch(&connector, https, "/").await, (1, 200));
        // A request in flight on a connection made with the old certificate across the reload.
        let stream = connect(&connector, https).await.unwrap();
        let mut send = http1(stream).await;
        let slow = tokio::spawn(async move { request1(&mut send, "/sleep?ms=1500").await });
        server.wait_log("/sleep: waiting", PATIENCE);

        // The certificate tool writes the renewed files, then its deploy hook sends HUP.
        let renewed = setup.authority.server(2, 60);
        std::fs::write(&setup.server.cert, &renewed.cert).unwrap();
        std::fs::write(&setup.server.key, &renewed.key).unwrap();
        reload(&server, "reload complete");
        wait_for_serial(&connector, https, 2).await;
        let (status, body) = slow
            .await
            .unwrap()
            .expect("the request in flight is answered");
        assert_eq!((status, body.as_str()), (200, "slept 1500 ms\n"));

        // A certificate that does not load fails the reload, and the one in use stays.
        std::fs::write(&setup.server.cert, "-----BEGIN CERTIFICATE-----\nAAAA\n").unwrap();
        let line = reload(&server, "reload failed");
        assert!(
            line.contains(setup.server.cert.to_str().unwrap()),
            "the reason names the file: {line}"
        );
        for _ in 0..10 {
            assert_eq!(fetch(&connector, https, "/").await, (2, 200));
        }
    });
}

#[test]
fn a_client_that_stalls_in_or_skips_the_handshake_is_closed_and_the_worker_serves_on() {
    let setup = Setup::new();
    let (_server, https) = setup.start(Bin::Demo, 1, &["--keepalive", "1s"]);
    let rt = runtime();
    rt.block_on(async {
        // Connected, and silent: closed at the timeout (1 s), not held.
        let started = Instant::now();
        let mut silent = TcpStream::connect(https).await.unwrap();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(PATIENCE, silent.read(&mut buf))
            .await
            .expect("the server closes a silent client");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(900) && waited < Duration::from_secs(10),
            "closed after {waited:?}, the timeout being 1 s"
        );

        // Plain HTTP sent to the TLS port: the connection ends, with no HTTP answer.
        let mut plain = TcpStream::connect(https).await.unwrap();
        plain
            .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        // Ok at the end of the stream, or a reset: either way it ended, within the wait.
        let _ = tokio::time::timeout(PATIENCE, plain.read_to_end(&mut answer))
            .await
            .expect("the server closes a plaintext client");
        assert!(
            !answer.starts_with(b"HTTP/1.1 200"),
            "served in plaintext on the TLS port"
        );

        // The worker serves on.
        let connector = setup.client(&[b"h2", b"http/1.1"], None);
        assert_eq!(fetch(&connector, https, "/").await, (1, 200));
    });
}

/// What the TLS load clients counted.
#[derive(Default)]
struct Tally {
    served: std::sync::atomic::AtomicU64,
    /// Requests sent on a connection that then ended without answering them.
    lost: std::sync::atomic::AtomicU64,
    /// Connections or handshakes that failed.
    refused: std::sync::atomic::AtomicU64,
}

/// Keeps one keep-alive HTTP/1.1 connection busy until `stop`, opening a new one whenever the
/// server closes it (after `Connection: close`, as a draining worker answers).
async fn keep_busy(
    connector: TlsConnector,
    addr: SocketAddr,
    tally: Arc<Tally>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    while !stop.load(Relaxed) {
        let Ok(stream) = connect(&connector, addr).await else {
            tally.refused.fetch_add(1, Relaxed);
            continue;
        };
        let mut send = http1(stream).await;
        // `ready` fails once the connection is closed: nothing was sent on it then.
        while !stop.load(Relaxed) && send.ready().await.is_ok() {
            match request1(&mut send, "/").await {
                Ok((200, _)) => tally.served.fetch_add(1, Relaxed),
                Ok(_) | Err(_) => tally.lost.fetch_add(1, Relaxed),
            };
        }
    }
}

#[test]
fn keep_alive_tls_load_loses_nothing_across_a_reload_with_a_rotated_certificate() {
    use std::sync::atomic::Ordering::Relaxed;
    let setup = Setup::new();
    let (server, https) = setup.start(Bin::Demo, 2, &[]);
    let rt = runtime();
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let connector = setup.client(&[b"http/1.1"], None);
            rt.spawn(keep_busy(
                connector,
                https,
                Arc::clone(&tally),
                Arc::clone(&stop),
            ))
        })
        .collect();
    let served_past = |n: u64| {
        server.wait_until(format!("{n} requests served"), || {
            (tally.served.load(Relaxed) >= n).then_some(())
        })
    };
    served_past(200);
    for serial in [2, 3] {
        let renewed = setup.authority.server(serial, 60);
        std::fs::write(&setup.server.cert, &renewed.cert).unwrap();
        std::fs::write(&setup.server.key, &renewed.key).unwrap();
        reload(&server, "reload complete");
        let connector = setup.client(&[b"http/1.1"], None);
        rt.block_on(wait_for_serial(&connector, https, serial));
        served_past(tally.served.load(Relaxed) + 200);
    }
    stop.store(true, Relaxed);
    rt.block_on(async {
        for client in clients {
            tokio::time::timeout(PATIENCE, client)
                .await
                .expect("the clients stop")
                .unwrap();
        }
    });
    let (served, lost, refused) = (
        tally.served.load(Relaxed),
        tally.lost.load(Relaxed),
        tally.refused.load(Relaxed),
    );
    assert!(served >= 600, "{served} served");
    assert_eq!((lost, refused), (0, 0), "lost, refused of {served} served");
}

/// The drain over TLS as in cleartext: a `wss` websocket gets Close 1001 at once, an event
/// stream ends cleanly, and the server exits 0.
#[test]
fn tls_websockets_get_going_away_and_event_streams_end_on_term() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    let setup = Setup::new();
    let (mut server, https) = setup.start(Bin::Demo, 1, &[]);
    let rt = runtime();
    rt.block_on(async {
        let connector = setup.client(&[b"http/1.1"], None);
        let stream = connect(&connector, https).await.unwrap();
        let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/ws", stream)
            .await
            .unwrap();
        let first = tokio::time::timeout(PATIENCE, ws.next()).await.unwrap();
        assert!(matches!(first, Some(Ok(Message::Text(_)))), "{first:?}");

        let mut sse = http1(connect(&connector, https).await.unwrap()).await;
        let req = http::Request::get("/sse")
            .header("host", "localhost")
            .header("accept", "text/event-stream")
            .body(Empty::new())
            .unwrap();
        let mut body = sse.send_request(req).await.unwrap().into_body();
        let tick = tokio::time::timeout(PATIENCE, body.frame()).await.unwrap();
        assert!(tick.is_some_and(|f| f.is_ok()), "a first event");

        server.signal(Signal::SIGTERM);
        let signalled = Instant::now();
        let close = loop {
            match tokio::time::timeout(PATIENCE, ws.next()).await.unwrap() {
                Some(Ok(Message::Close(frame))) => break frame,
                Some(Ok(_)) => {}
                other => panic!("no Close frame: {other:?}"),
            }
        };
        assert_eq!(close.map(|f| f.code), Some(CloseCode::Away));
        assert!(
            signalled.elapsed() < Duration::from_millis(500),
            "Close came {:?} after TERM",
            signalled.elapsed()
        );
        // The event stream ends: its body completes without an error.
        loop {
            match tokio::time::timeout(PATIENCE, body.frame()).await.unwrap() {
                None => break,
                Some(frame) => assert!(frame.is_ok(), "the event stream broke: {frame:?}"),
            }
        }
    });
    let (status, _) = server.expect_exit(PATIENCE);
    assert!(status.success());
}

/// A flood of handshakes, finished and stalled, does not keep a worker from an established
/// connection's requests, and a worker recycled by `--max-requests` is replaced under TLS as in
/// cleartext.
#[test]
fn tls_a_handshake_flood_leaves_established_connections_served() {
    let setup = Setup::new();
    let (server, https) = setup.start(Bin::Bare, 1, &["--max-requests", "200"]);
    let workers = server.workers();
    let rt = runtime();
    let slowest = rt.block_on(async {
        let connector = setup.client(&[b"http/1.1"], None);
        let mut established = http1(connect(&connector, https).await.unwrap()).await;
        let flooding = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let mut flood = Vec::new();
        // Stalled: a TCP connection that never sends a ClientHello, or only part of one.
        for i in 0..100 {
            flood.push(tokio::spawn(async move {
                let mut tcp = TcpStream::connect(https).await.ok()?;
                if i % 2 == 0 {
                    tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
                        .await
                        .ok()?;
                }
                let mut byte = [0u8; 1];
                let _ = tokio::time::timeout(PATIENCE, tcp.read(&mut byte)).await;
                Some(())
            }));
        }
        // Finished: full handshakes as fast as 8 clients can make them, each then closed.
        for _ in 0..8 {
            let (connector, flooding) = (connector.clone(), Arc::clone(&flooding));
            flood.push(tokio::spawn(async move {
                while flooding.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = connect(&connector, https).await;
                }
                Some(())
            }));
        }
        let mut slowest = Duration::ZERO;
        for _ in 0..50 {
            let asked = Instant::now();
            let (status, _) = request1(&mut established, "/").await.unwrap();
            assert_eq!(status, 200);
            slowest = slowest.max(asked.elapsed());
        }
        flooding.store(false, std::sync::atomic::Ordering::Relaxed);
        for task in flood {
            let _ = task.await;
        }
        slowest
    });
    assert!(
        slowest < Duration::from_secs(2),
        "an established connection waited {slowest:?} for an answer during the flood"
    );
    assert_eq!(server.workers(), workers, "the worker died under the flood");

    // Recycling over TLS: 250 requests on new connections pass the limit of 200.
    rt.block_on(async {
        let connector = setup.client(&[b"http/1.1"], None);
        for _ in 0..250 {
            let mut send = http1(connect(&connector, https).await.unwrap()).await;
            let (status, _) = request1(&mut send, "/").await.unwrap();
            assert_eq!(status, 200);
        }
    });
    server.wait_log("reached its request limit", PATIENCE);
    server.wait_workers(1, &workers);
}

/// The JSON access log names the TLS version, cipher and SNI name of a request over TLS.
#[test]
fn tls_the_json_access_log_names_the_session() {
    let setup = Setup::new();
    let log = setup.path("access.log");
    let more = ["--access-logfile", &log, "--log-format", "json"];
    let (server, https) = setup.start(Bin::Bare, 1, &more);
    runtime().block_on(async {
        let connector = setup.client(&[b"http/1.1"], None);
        let mut send = http1(connect(&connector, https).await.unwrap()).await;
        assert_eq!(request1(&mut send, "/").await.unwrap().0, 200);
    });
    assert_eq!(get(server.addr, "/").status, 200);
    let lines: Vec<serde_json::Value> = server.wait_until("two access log lines", || {
        let text = std::fs::read_to_string(&log).ok()?;
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (lines.len() == 2).then_some(lines)
    });
    let tls = lines
        .iter()
        .find(|l| !l["tls"].is_null())
        .unwrap_or_else(|| panic!("no line over TLS: {lines:?}"));
    assert!(
        tls["tls"]["version"]
            .as_str()
            .unwrap()
            .starts_with("TLSv1_"),
        "{tls}"
    );
    assert!(
        tls["tls"]["cipher"].as_str().unwrap().starts_with("TLS"),
        "{tls}"
    );
    assert_eq!(tls["tls"]["sni"], "localhost");
    assert!(
        lines.iter().any(|l| l["tls"].is_null()),
        "the cleartext request"
    );
}
