//! The servers under test, started through the test-support module shared with the end-to-end
//! tests (`tests/support`), and a one-request probe.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use crate::support::{Bin, Builder, Server};

/// Builds the examples in the profile this benchmark was built in (`cargo bench` builds
/// binaries and benches, not examples). Set `PREFORK_BENCH_NO_BUILD=1` to skip the build and
/// use what is there.
pub fn build_examples() {
    if std::env::var_os("PREFORK_BENCH_NO_BUILD").is_some() {
        return;
    }
    // target/release holds the `release` and the `bench` profiles alike; build with the one
    // whose directory this is so that nothing is compiled twice.
    let prefork = Bin::Prefork.path();
    let profile = match prefork
        .parent()
        .and_then(|dir| dir.file_name())
        .and_then(|n| n.to_str())
    {
        Some("release") | None => "bench",
        Some("debug") => "dev",
        Some(other) => other,
    };
    eprintln!("building the examples (cargo build --profile {profile} --examples) ...");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--profile", profile, "--examples"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo to build the examples");
    assert!(status.success(), "building the examples failed: {status}");
}

/// The demo app served by prefork with `workers` workers, once it has logged its address.
pub fn demo(workers: usize, args: &[&str]) -> Server {
    Server::builder(Bin::Demo, workers).args(args).spawn()
}

/// The baseline serving the demo app with `threads` runtime threads.
pub fn baseline(threads: usize) -> Server {
    baseline_with(threads, &[])
}

/// [`baseline`], with `args`.
pub fn baseline_with(threads: usize, args: &[&str]) -> Server {
    Builder::new(Bin::Baseline)
        .args(&["--threads", &threads.to_string()])
        .args(args)
        .spawn()
}

/// `examples/bare.rs` (a bare `service_fn`) served by prefork with `workers` workers, once it
/// has logged its address.
pub fn bare(workers: usize) -> Server {
    bare_with(workers, &[])
}

/// [`bare`], with `args`.
pub fn bare_with(workers: usize, args: &[&str]) -> Server {
    Server::builder(Bin::Bare, workers).args(args).spawn()
}

/// The baseline serving the same bare `service_fn` with `threads` runtime threads.
pub fn bare_baseline(threads: usize) -> Server {
    bare_baseline_with(threads, &[])
}

/// [`bare_baseline`], with `args`.
pub fn bare_baseline_with(threads: usize, args: &[&str]) -> Server {
    Builder::new(Bin::Baseline)
        .args(&["--threads", &threads.to_string(), "--bare"])
        .args(args)
        .spawn()
}

/// The prefork binary serving the files under `root` with `workers` workers.
pub fn static_prefork(workers: usize, root: &str) -> Server {
    Server::builder(Bin::Prefork, workers)
        .args(&["--root", root])
        .spawn()
}

/// The baseline serving the same files with `threads` runtime threads.
pub fn static_baseline(threads: usize, root: &str) -> Server {
    Builder::new(Bin::Baseline)
        .args(&["--threads", &threads.to_string(), "--root", root])
        .spawn()
}

/// One request on a fresh connection, with plain blocking sockets: the status and the body.
/// The connection is made as soon as the socket listens; the answer comes once a worker has
/// accepted it, so this also tells when a server starts serving.
pub fn probe(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response");
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok((status, body.to_string()))
}
