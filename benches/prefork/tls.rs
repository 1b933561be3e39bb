//! Section 8: TLS, prefork (`examples/bare.rs` on an `https://` address) against nginx
//! answering `GET /` with the same `Hello, World!`, both with the same ECDSA P-256 certificate
//! and the same number of workers: HTTP/1.1 keep-alive, a new connection for every request with
//! a full handshake and with a resumed one (TLS 1.3 session tickets, counted by the client), and
//! HTTP/2 chosen by ALPN (h2load). Requests per second and per CPU-second of the server's
//! processes, each a median of per-round ratios.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::client::Resumption;
use rustls::crypto::aws_lc_rs;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio_rustls::TlsConnector;

use crate::Bench;
use crate::load::{self, H2_STREAMS, Mode, Stats};
use crate::reference_servers::{self, TlsReference};
use crate::references::rows;
use crate::report::Table;
use crate::support::certs::Authority;
use crate::support::{Bin, PATIENCE, Server};
use crate::throughput::{Pair, Side, alternate, cores};

/// HTTP/2 connections (`h2load -c`), each with [`H2_STREAMS`] requests in flight.
const H2_CONNS: usize = 16;

pub fn tls(b: &Bench) -> Vec<Table> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let authority = Authority::new("bench CA");
    let files = authority.server(1, 30).write(dir.path(), "server");
    let n = b.workers;
    let mut table = Table::new(format!(
        "8. TLS: GET / of a bare tower::service_fn (examples/bare.rs) served by prefork \
         --workers {n} on an https:// address vs nginx ({n} workers) returning the same body; \
         one ECDSA P-256 certificate for both; the baseline column is nginx"
    ));
    let nginx = match reference_servers::start_nginx_tls(n, &files.cert, &files.key) {
        Ok(nginx) => nginx,
        Err(why) => {
            println!("tls: {why}: skipped");
            table.note(format!("skipped: {why}"));
            return vec![table];
        }
    };
    let pre = Server::builder(Bin::Bare, n)
        .args(&[
            "-b",
            "127.0.0.1:0",
            "-b",
            "https://127.0.0.1:0",
            "--certfile",
            files.cert.to_str().expect("a UTF-8 path"),
            "--keyfile",
            files.key.to_str().expect("a UTF-8 path"),
        ])
        .spawn();
    pre.wait_log("worker(s) ready", PATIENCE);
    let pre_addr = pre.https_addr();

    let pem = authority.pem();
    let keep_alive = connector(&pem, true);
    let full = connector(&pem, false);
    let resumed = keep_alive.clone();
    for (name, addr) in [("nginx", nginx.addr), ("prefork", pre_addr)] {
        table.note(format!(
            "{name}: {}",
            handshake_summary(b, &keep_alive, addr)
        ));
    }
    table.note(format!("nginx: {}", nginx.version));
    table.note(
        "the client offers X25519 alone for the key exchange, which both servers then use \
         (nginx's OpenSSL 3.0 has no ML-KEM; rustls would otherwise pick the X25519MLKEM768 \
         hybrid rustls clients offer first)",
    );

    let measurements = [
        ("HTTP/1.1 keep-alive", Mode::KeepAlive, b.conns, &keep_alive),
        (
            "new connection per request, full handshake",
            Mode::ConnPerRequest,
            b.cpr_conns,
            &full,
        ),
        (
            "new connection per request, resumed",
            Mode::ConnPerRequest,
            b.cpr_conns,
            &resumed,
        ),
    ];
    for (label, mode, conns, tls) in measurements {
        let (base, pre) = sides(&nginx, (&pre, pre_addr), tls);
        let pairs = alternate(b, base, pre, "/", mode, conns);
        let label = format!("{label} ({conns} conns)");
        rows(&mut table, &label, &pairs, Some(1.0));
        table.note(format!("{label}: {}", cores(&pairs, "nginx")));
        if mode == Mode::ConnPerRequest {
            table.note(format!(
                "{label}: handshakes that resumed a session, prefork {}, nginx {}",
                resumed_share(&pairs, |p| &p.pre),
                resumed_share(&pairs, |p| &p.base)
            ));
        }
    }
    if load::h2load_available() {
        let (base, pre) = sides(&nginx, (&pre, pre_addr), &keep_alive);
        let pairs = alternate(b, base, pre, "/", Mode::H2c, H2_CONNS);
        rows(
            &mut table,
            &format!("HTTP/2 c{H2_CONNS} m{H2_STREAMS} (h2load)"),
            &pairs,
            Some(1.0),
        );
        table.note(format!("HTTP/2: {}", cores(&pairs, "nginx")));
    } else {
        table.note("HTTP/2: h2load is not installed (apt-get install nghttp2-client)");
    }
    table.note(
        "requests/CPU-s: requests per second of CPU time (user + system) of all the server's \
         processes, read from /proc over the measured window; higher is better",
    );
    vec![table]
}

/// nginx and prefork, each reached over TLS with `tls`.
fn sides<'a>(
    nginx: &'a TlsReference,
    (pre, pre_addr): (&'a Server, SocketAddr),
    tls: &'a TlsConnector,
) -> (Side<'a>, Side<'a>) {
    let side = |addr, server| Side {
        addr,
        server,
        tls: Some(tls),
    };
    (side(nginx.addr, &nginx.server), side(pre_addr, pre))
}

/// A client trusting `authority_pem`, offering HTTP/1.1 by ALPN and X25519 alone for the key
/// exchange; keeping sessions to resume them (rustls's default cache) when `resume`.
fn connector(authority_pem: &str, resume: bool) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(authority_pem.as_bytes()) {
        roots
            .add(cert.expect("the authority's PEM"))
            .expect("a usable authority");
    }
    let mut provider = aws_lc_rs::default_provider();
    provider.kx_groups = vec![aws_lc_rs::kx_group::X25519];
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .expect("TLS 1.2 and 1.3 with aws-lc-rs")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if !resume {
        config.resumption = Resumption::disabled();
    }
    TlsConnector::from(Arc::new(config))
}

/// What one connection to `addr` negotiated (checking that `GET /` is answered with 200).
fn handshake_summary(b: &Bench, tls: &TlsConnector, addr: SocketAddr) -> String {
    b.rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect to the TLS address");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("a DNS name");
        let stream = tls.connect(name, tcp).await.expect("a TLS handshake");
        let session = stream.get_ref().1;
        let summary = format!(
            "{:?}, {:?}, ALPN {}",
            session.protocol_version().expect("negotiated"),
            session
                .negotiated_cipher_suite()
                .expect("negotiated")
                .suite(),
            session
                .alpn_protocol()
                .map_or("none".into(), String::from_utf8_lossy)
        );
        drop(stream);
        let (mut tx, conn, _) = load::connect(addr, Some(tls))
            .await
            .expect("an HTTP/1.1 connection over TLS");
        tokio::spawn(conn);
        assert!(load::get_ok(&mut tx, "/").await, "GET / over TLS to {addr}");
        summary
    })
}

/// The share of the handshakes that resumed a session, over all rounds, as `97.5%`.
fn resumed_share(pairs: &[Pair], side: fn(&Pair) -> &Stats) -> String {
    let (resumed, all) = pairs
        .iter()
        .map(side)
        .fold((0, 0), |(r, a), s| (r + s.resumed, a + s.handshakes));
    format!(
        "{:.1}% of {all}",
        100.0 * resumed as f64 / all.max(1) as f64
    )
}
