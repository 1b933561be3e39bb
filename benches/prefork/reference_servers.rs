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
use crate::server::probe;
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
    let program = find(kind.name()).ok_or_else(|| {
        format!(
            "{} is not installed (apt-get install {})",
            kind.name(),
            kind.package()
        )
    })?;
    let version = version(&program);
    let dir = tempfile::tempdir().map_err(|e| format!("a temporary directory: {e}"))?;
    let http1 = free_port()?;
    let (h2c, config, args) = match kind {
        Kind::Nginx => {
            let h2c = free_port()?;
            let config = dir.path().join("nginx.conf");
            let text = nginx_config(workers, dir.path(), root, http1, h2c);
            let args = vec![
                "-p".to_string(),
                path_text(dir.path())?,
                "-c".to_string(),
                path_text(&config)?,
                // Its early errors too go to stderr, not to a log under its compiled-in prefix.
                "-e".to_string(),
                "stderr".to_string(),
            ];
            (h2c, (config, text), args)
        }
        Kind::H2o => {
            let config = dir.path().join("h2o.conf");
            let text = h2o_config(workers, root, http1);
            let args = vec!["-c".to_string(), path_text(&config)?];
            (http1, (config, text), args)
        }
    };
    std::fs::write(&config.0, config.1).map_err(|e| format!("write {:?}: {e}", config.0))?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = Builder::wrapped_path(&[], &program)
        .without_bind()
        .args(&args)
        .spawn_program();
    server.addr = http1;
    server.wait_until(
        format!("{} answering GET {probe_path}", kind.name()),
        || {
            probe(http1, probe_path, Duration::from_secs(1))
                .ok()
                .filter(|(status, _)| *status == 200)
        },
    );
    Ok(Reference {
        version,
        server,
        http1,
        h2c,
        _dir: dir,
    })
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
fn free_port() -> Result<SocketAddr, String> {
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
    sendfile on;
    keepalive_requests 1000000;
    default_type application/octet-stream;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen {http1};
        listen {h2c} http2;
        root {root};
    }}
}}
",
        root = root.display()
    )
}

/// h2o serving `root` with `file.dir` on `workers` threads of one process, HTTP/1.1 and HTTP/2
/// (by prior knowledge or upgrade) on one cleartext listener; no access log unless one is
/// configured.
fn h2o_config(workers: usize, root: &Path, http1: SocketAddr) -> String {
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
