//! Starting the servers under test: each in its own process group, killed with the whole group
//! when its guard drops (also when the benchmark panics), with its stderr log collected as it
//! comes, each line stamped with the moment it was read. Every wait is bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// The longest any single wait lasts; only reached when something is broken.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The executables under test.
pub struct Bins {
    /// The `prefork` binary: the built-in static file app.
    pub prefork: PathBuf,
    /// `examples/demo.rs`: the axum app served through prefork.
    pub demo: PathBuf,
    /// `examples/baseline.rs`: the same apps in one process on a multi-thread runtime.
    pub baseline: PathBuf,
}

impl Bins {
    /// The prefork binary serving the files under `root` with `workers` workers.
    pub fn static_prefork(&self, workers: &str, root: &str) -> Server {
        let args = [
            "serve",
            "--workers",
            workers,
            "--bind",
            "127.0.0.1:0",
            "--root",
            root,
        ];
        Server::spawn(&self.prefork, &args)
    }

    /// The baseline serving the same files with `threads` runtime threads.
    pub fn static_baseline(&self, threads: &str, root: &str) -> Server {
        let args = [
            "--threads",
            threads,
            "--bind",
            "127.0.0.1:0",
            "--root",
            root,
        ];
        Server::spawn(&self.baseline, &args)
    }

    /// Finds the binaries, first building the examples in the profile this benchmark was
    /// built in (`cargo bench` builds binaries and benches, not examples). Set
    /// `PREFORK_BENCH_NO_BUILD=1` to skip the build and use what is there.
    pub fn locate() -> Bins {
        let prefork = PathBuf::from(env!("CARGO_BIN_EXE_prefork"));
        let dir = prefork
            .parent()
            .expect("the binary's directory")
            .to_path_buf();
        let examples = dir.join("examples");
        if std::env::var_os("PREFORK_BENCH_NO_BUILD").is_none() {
            build_examples(&dir);
        }
        let bins = Bins {
            demo: examples.join("demo"),
            baseline: examples.join("baseline"),
            prefork,
        };
        for path in [&bins.prefork, &bins.demo, &bins.baseline] {
            assert!(
                path.exists(),
                "{} is missing: build it with `cargo build --release --examples`",
                path.display()
            );
        }
        bins
    }
}

fn build_examples(out_dir: &Path) {
    // target/release holds the `release` and the `bench` profiles alike; build with the one
    // whose directory this is so that nothing is compiled twice.
    let profile = match out_dir.file_name().and_then(|n| n.to_str()) {
        Some("release") => "bench",
        Some("debug") => "dev",
        Some(other) => other,
        None => "bench",
    };
    eprintln!("building the examples (cargo build --profile {profile} --examples) ...");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--profile", profile, "--examples"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo to build the examples");
    assert!(status.success(), "building the examples failed: {status}");
}

/// Lines the process wrote to stderr, with when each was read.
#[derive(Default)]
struct Log {
    lines: Mutex<Vec<(Instant, String)>>,
    grew: Condvar,
}

pub struct Server {
    child: Child,
    log: Arc<Log>,
    /// Just before the process was started.
    pub exec_at: Instant,
    /// The TCP address it listens on, from its log.
    pub addr: SocketAddr,
    /// When the "listening on" line was read.
    pub listening_at: Instant,
}

impl Server {
    /// Starts `bin` with `args` and waits until it logs its address.
    pub fn spawn(bin: &Path, args: &[&str]) -> Server {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .env_remove("PORT")
            .env_remove("WEB_CONCURRENCY")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PREFORK_") {
                cmd.env_remove(key);
            }
        }
        let exec_at = Instant::now();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let log = Arc::new(Log::default());
        let stderr = child.stderr.take().expect("piped stderr");
        let reader_log = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let now = Instant::now();
                reader_log.lines.lock().unwrap().push((now, line));
                reader_log.grew.notify_all();
            }
        });
        let mut server = Server {
            child,
            log,
            exec_at,
            addr: "0.0.0.0:0".parse().unwrap(),
            listening_at: exec_at,
        };
        let (at, line) = server.wait_log("listening on http://", 0, PATIENCE);
        let addr = line.rsplit("http://").next().unwrap();
        let addr = addr.split_whitespace().next().unwrap_or(addr);
        server.addr = addr.parse().expect("a socket address in the log");
        server.listening_at = at;
        server
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// The master's live children (for the baseline: none).
    pub fn workers(&self) -> Vec<Pid> {
        children_of(self.pid())
    }

    /// The server's processes: the master (or the single process) first.
    pub fn processes(&self) -> Vec<Pid> {
        let mut all = vec![self.pid()];
        all.extend(self.workers());
        all
    }

    pub fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).expect("signal the server");
    }

    /// Waits for a log line containing `needle` among the lines after the first `skip`, and
    /// returns when it was read and the line.
    pub fn wait_log(&self, needle: &str, skip: usize, timeout: Duration) -> (Instant, String) {
        let until = Instant::now() + timeout;
        let mut lines = self.log.lines.lock().unwrap();
        loop {
            if let Some((at, line)) = lines.iter().skip(skip).find(|(_, l)| l.contains(needle)) {
                return (*at, line.clone());
            }
            let left = until.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no log line with {needle:?} within {timeout:?}; log:\n{}",
                render(&lines)
            );
            lines = self.log.grew.wait_timeout(lines, left).unwrap().0;
        }
    }

    pub fn log_len(&self) -> usize {
        self.log.lines.lock().unwrap().len()
    }

    pub fn log(&self) -> String {
        render(&self.log.lines.lock().unwrap())
    }

    /// Waits for the process to exit, polling every millisecond; `None` after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<(ExitStatus, Instant)> {
        let until = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the server") {
                return Some((status, Instant::now()));
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn render(lines: &[(Instant, String)]) -> String {
    lines
        .iter()
        .map(|(_, l)| l.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

impl Drop for Server {
    fn drop(&mut self) {
        // The group holds the master and every worker, even ones whose master is gone.
        let _ = killpg(self.pid(), Signal::SIGKILL);
        let _ = self.child.wait();
        let until = Instant::now() + PATIENCE;
        while group_alive(self.pid()) && Instant::now() < until {
            let _ = killpg(self.pid(), Signal::SIGKILL);
            std::thread::sleep(Duration::from_millis(10));
        }
    }
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

/// Processes whose parent is `parent` and that are not zombies, from /proc.
pub fn children_of(parent: Pid) -> Vec<Pid> {
    let mut out: Vec<Pid> = pids()
        .filter(|&pid| stat(pid).is_some_and(|s| s.ppid == parent.as_raw() && s.state != 'Z'))
        .map(Pid::from_raw)
        .collect();
    out.sort();
    out
}

fn group_alive(pgid: Pid) -> bool {
    pids().any(|pid| stat(pid).is_some_and(|s| s.pgrp == pgid.as_raw() && s.state != 'Z'))
}

fn pids() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
}

struct Stat {
    state: char,
    ppid: i32,
    pgrp: i32,
    /// utime + stime, in clock ticks.
    cpu_ticks: u64,
}

fn stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; the fields start after the last ')'.
    let fields: Vec<&str> = text[text.rfind(')')? + 2..].split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        cpu_ticks: fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?,
    })
}

/// CPU time (user + system) `pid` has used so far, every thread included. Linux reports it in
/// USER_HZ ticks, which are 1/100 s on every architecture it runs on.
pub fn cpu_time(pid: Pid) -> Duration {
    stat(pid.as_raw()).map_or(Duration::ZERO, |s| Duration::from_millis(s.cpu_ticks * 10))
}

/// CPU time this process (the load generator) has used so far.
pub fn own_cpu_time() -> Duration {
    cpu_time(nix::unistd::getpid())
}

/// How many sockets `pid` has open (listeners and control channels included).
pub fn sockets(pid: Pid) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| {
        dir.flatten()
            .filter(|e| {
                std::fs::read_link(e.path())
                    .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
            })
            .count()
    })
}

/// Memory of one process, in bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mem {
    /// Resident set size: every page mapped and in memory, shared ones counted in full.
    pub rss: u64,
    /// The anonymous part of the RSS (heap, stacks).
    pub rss_anon: u64,
    /// The file-backed part of the RSS (the executable's and the libraries' pages).
    pub rss_file: u64,
    /// Proportional set size: shared pages divided among the processes that share them.
    pub pss: u64,
    /// Unique set size: pages only this process has (private clean + private dirty).
    pub uss: u64,
}

impl Mem {
    pub fn max(self, other: Mem) -> Mem {
        Mem {
            rss: self.rss.max(other.rss),
            rss_anon: self.rss_anon.max(other.rss_anon),
            rss_file: self.rss_file.max(other.rss_file),
            pss: self.pss.max(other.pss),
            uss: self.uss.max(other.uss),
        }
    }
}

/// RSS from /proc/PID/status, PSS and USS from /proc/PID/smaps_rollup.
pub fn mem(pid: Pid) -> Option<Mem> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |text: &str, name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |kib| kib * 1024)
    };
    Some(Mem {
        rss: field(&status, "VmRSS:"),
        rss_anon: field(&status, "RssAnon:"),
        rss_file: field(&status, "RssFile:"),
        pss: field(&rollup, "Pss:"),
        uss: field(&rollup, "Private_Clean:") + field(&rollup, "Private_Dirty:"),
    })
}
