//! The servers users would pick instead of prefork for static files, started by the benchmark
//! itself when they are installed: nginx and h2o (the Debian packages `nginx` and `h2o`). Each
//! gets a prefix and a config of its own in a temporary directory, serves one directory on free
//! ports of 127.0.0.1 with access logs off, and runs under the same guard as prefork (its
//! process group is killed when it drops).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::load::Mode;
use crate::server::probe as probe_once;
use crate::support::{Builder, Server};
use crate::throughput::Side;

#[derive(Clone, Copy)]
pub enum Kind {
    Nginx,
    H2o,
}

pub const ALL: [Kind; 2] = [Kind::Nginx, Kind::H2o];

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Nginx => "nginx",
            Kind::H2o => "h2o",
        }
    }

    /// How it is set up, for the table (see [`nginx_config`] and [`h2o_config`]).
    pub fn settings(self) -> &'static str {
        match self {
            Kind::Nginx => {
                "sendfile on, access_log off, keepalive_requests raised to 1000000 (prefork \
                 closes no connection after a number of requests), open_file_cache off as by \
                 default"
            }
            Kind::H2o => "file.dir, no access log, defaults otherwise",
        }
    }

    /// The Debian package that installs it.
    fn package(self) -> &'static str {
        self.name()
    }
}

/// A running reference server.
pub struct Reference {
    /// What the executable says of its version, e.g. `nginx version: nginx/1.22.1`.
    pub version: String,
    /// The master (or the single process) first; nginx's workers are its children.
    pub server: Server,
    /// Where it serves HTTP/1.1.
    http1: SocketAddr,
    /// Where it serves HTTP/2 by prior knowledge. nginx before 1.25 speaks only HTTP/2 on a
    /// listener marked `http2`, so it listens on a second port; h2o tells the two apart on one.
    h2c: SocketAddr,
    /// Its prefix and config; removed after the server is killed (fields drop in order).
    _dir: TempDir,
}

impl Reference {
    /// Where to send load of `mode`, and whose CPU to count.
    pub fn side(&self, mode: Mode) -> Side<'_> {
        Side {
            addr: if mode == Mode::H2c {
                self.h2c
            } else {
                self.http1
            },
            server: &self.server,
            tls: None,
        }
    }
}

/// Starts `kind` with `workers` worker processes (nginx) or threads (h2o) serving `root`, and
/// waits until it answers `GET probe_path` with 200; `Err` says why it is not there.
pub fn start(
    kind: Kind,
    workers: usize,
    root: &Path,
    probe_path: &str,
) -> Result<Reference, String> {
    let program = installed(kind)?;
    let dir = tempfile::tempdir().map_err(|e| format!("a temporary directory: {e}"))?;
    let http1 = free_port()?;
    let (h2c, config, args) = match kind {
        Kind::Nginx => {
            let h2c = free_port()?;
            let config = dir.path().join("nginx.conf");
            let text = nginx_config(workers, dir.path(), root, http1, h2c);
            (
                h2c,
                (config.clone(), text),
                nginx_args(dir.path(), &config)?,
            )
        }
        Kind::H2o => {
            let config = dir.path().join("h2o.conf");
            let text = h2o_config(workers, root, http1);
            let args = vec!["-c".to_string(), path_text(&config)?];
            (http1, (config, text), args)
        }
    };
    std::fs::write(&config.0, config.1).map_err(|e| format!("write {:?}: {e}", config.0))?;
    let server = launch(kind, &program, &args, http1, probe_path);
    Ok(Reference {
        version: version(&program),
        server,
        http1,
        h2c,
        _dir: dir,
    })
}

/// nginx serving `Hello, World!` to `GET /` over TLS, HTTP/1.1 and HTTP/2 chosen by ALPN on
/// one listener, as prefork's `https://` addresses do.
pub struct TlsReference {
    pub version: String,
    pub server: Server,
    pub addr: SocketAddr,
    _dir: TempDir,
}

/// Starts nginx with `workers` workers, the certificate chain `cert` and its key `key`, and
/// waits until it answers on a cleartext port of its own (the TLS one is checked by the
/// caller's client); `Err` says why it is not there.
pub fn start_nginx_tls(workers: usize, cert: &Path, key: &Path) -> Result<TlsReference, String> {
    let program = installed(Kind::Nginx)?;
    let dir = tempfile::tempdir().map_err(|e| format!("a temporary directory: {e}"))?;
    let (probe, addr) = (free_port()?, free_port()?);
    let config = dir.path().join("nginx.conf");
    let text = nginx_tls_config(workers, dir.path(), probe, addr, cert, key);
    std::fs::write(&config, text).map_err(|e| format!("write {config:?}: {e}"))?;
    let args = nginx_args(dir.path(), &config)?;
    let server = launch(Kind::Nginx, &program, &args, probe, "/");
    Ok(TlsReference {
        version: version(&program),
        server,
        addr,
        _dir: dir,
    })
}

/// Where `kind` is installed, or why it cannot run.
pub fn installed(kind: Kind) -> Result<PathBuf, String> {
    find(kind.name()).ok_or_else(|| {
        format!(
            "{} is not installed (apt-get install {})",
            kind.name(),
            kind.package()
        )
    })
}

/// nginx's arguments: its prefix, its config, and its early errors to stderr rather than to a
/// log under its compiled-in prefix.
fn nginx_args(prefix: &Path, config: &Path) -> Result<Vec<String>, String> {
    Ok(vec![
        "-p".to_string(),
        path_text(prefix)?,
        "-c".to_string(),
        path_text(config)?,
        "-e".to_string(),
        "stderr".to_string(),
    ])
}

/// Runs `program` under the guard and waits until it answers `GET probe_path` on `probe` with
/// 200.
fn launch(
    kind: Kind,
    program: &Path,
    args: &[String],
    probe: SocketAddr,
    probe_path: &str,
) -> Server {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = Builder::wrapped_path(&[], program)
        .without_bind()
        .args(&args)
        .spawn_program();
    server.addr = probe;
    server.wait_until(
        format!("{} answering GET {probe_path}", kind.name()),
        || {
            probe_once(probe, probe_path, Duration::from_secs(1))
                .ok()
                .filter(|(status, _)| *status == 200)
        },
    );
    server
}

/// `program` on the PATH, or in the sbin directories, where Debian puts nginx and which a
/// user's PATH may lack.
fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// The first line the program prints for `-v` (nginx, on stderr) or `--version` (h2o).
fn version(program: &Path) -> String {
    let flag = if program.ends_with("nginx") {
        "-v"
    } else {
        "--version"
    };
    Command::new(program)
        .arg(flag)
        .output()
        .ok()
        .and_then(|out| {
            let text = [out.stdout, out.stderr].concat();
            Some(
                String::from_utf8_lossy(&text)
                    .lines()
                    .next()?
                    .trim()
                    .to_string(),
            )
        })
        .unwrap_or_else(|| format!("{} (version unknown)", program.display()))
}

/// A port of 127.0.0.1 that nothing listens on: the kernel picks it for a socket closed at
/// once. Another program could take it before the server binds it; the server would then fail
/// to start, and the wait for its answer would say so.
pub fn free_port() -> Result<SocketAddr, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("a free port: {e}"))
}

fn path_text(path: &Path) -> Result<String, String> {
    path.to_str()
        .map(str::to_string)
        .ok_or_else(|| format!("{} is not UTF-8", path.display()))
}

/// nginx as it is usually deployed for static files: a master and `workers` workers,
/// `sendfile on`, no access log. `keepalive_requests` is raised from its default of 1000 because
/// prefork does not close a keep-alive connection after any number of requests; the open-file
/// cache is off, as it is by default.
fn nginx_config(
    workers: usize,
    prefix: &Path,
    root: &Path,
    http1: SocketAddr,
    h2c: SocketAddr,
) -> String {
    nginx_conf(
        workers,
        prefix,
        &format!(
            "    sendfile on;
    server {{
        listen {http1};
        listen {h2c} http2;
        root {root};
    }}",
            root = root.display()
        ),
    )
}

/// nginx answering `GET /` with `Hello, World!` (as `examples/bare.rs` does) on `probe` in
/// cleartext and on `tls` over TLS 1.2 or 1.3 with ALPN h2 and http/1.1; session tickets and
/// the rest as by default.
fn nginx_tls_config(
    workers: usize,
    prefix: &Path,
    probe: SocketAddr,
    tls: SocketAddr,
    cert: &Path,
    key: &Path,
) -> String {
    nginx_conf(
        workers,
        prefix,
        &format!(
            "    server {{
        listen {probe};
        listen {tls} ssl http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location = / {{
            return 200 \"Hello, World!\";
        }}
    }}",
            cert = cert.display(),
            key = key.display()
        ),
    )
}

/// An nginx config with `workers` workers under `prefix`, no access log, keep-alive
/// connections never closed for their number of requests, and `http` inside its `http` block.
fn nginx_conf(workers: usize, prefix: &Path, http: &str) -> String {
    let prefix = prefix.display();
    // A master running as root starts its workers as `nobody`, which could not read a
    // temporary directory only its owner may enter.
    let user = if nix::unistd::geteuid().is_root() {
        "user root;"
    } else {
        ""
    };
    format!(
        "daemon off;
master_process on;
{user}
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log stderr warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    keepalive_requests 1000000;
    default_type application/octet-stream;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
{http}
}}
"
    )
}

/// h2o serving `root` with `file.dir` on `workers` threads of one process, HTTP/1.1 and HTTP/2
/// (by prior knowledge or upgrade) on one cleartext listener; no access log unless one is
/// configured.
pub fn h2o_config(workers: usize, root: &Path, http1: SocketAddr) -> String {
    let user = if nix::unistd::geteuid().is_root() {
        "user: root\n"
    } else {
        ""
    };
    format!(
        "{user}listen:
  host: {host}
  port: {port}
num-threads: {workers}
hosts:
  default:
    paths:
      /:
        file.dir: {root}
",
        host = http1.ip(),
        port = http1.port(),
        root = root.display()
    )
}
