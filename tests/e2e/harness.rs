//! Running the real binaries: a server process in its own process group, killed with the whole
//! group when the guard drops (also when the test fails), with its log collected as it goes.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// The longest any single wait in these tests lasts; only reached when something is broken.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Which executable to run.
#[derive(Clone, Copy)]
pub enum Bin {
    /// The `prefork` binary: the static file server.
    Prefork,
    /// The `demo` example: the axum app with slow, streaming and websocket routes.
    Demo,
}

impl Bin {
    pub fn path(self) -> PathBuf {
        let prefork = PathBuf::from(env!("CARGO_BIN_EXE_prefork"));
        match self {
            Bin::Prefork => prefork,
            Bin::Demo => {
                // cargo builds examples next to the binaries for `cargo test` and nextest.
                let demo = prefork.parent().unwrap().join("examples").join("demo");
                assert!(
                    demo.exists(),
                    "{} is missing: build it with `cargo build --examples` (cargo test does)",
                    demo.display()
                );
                demo
            }
        }
    }
}

/// Lines the process wrote to stderr, shared with the thread that reads them.
#[derive(Default)]
struct Log {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
    /// Every process has closed the stderr the log is read from: no line will come.
    ended: AtomicBool,
}

pub struct Server {
    child: Child,
    log: Arc<Log>,
    stop_following: Arc<AtomicBool>,
    /// The first TCP address it listens on, from its log.
    pub addr: SocketAddr,
}

pub struct Builder {
    cmd: Command,
    bind_given: bool,
    workers: usize,
    /// Where the server logs, when not on stderr.
    log_file: Option<PathBuf>,
}

impl Builder {
    pub fn arg(mut self, arg: &str) -> Self {
        if arg == "-b" || arg == "--bind" {
            self.bind_given = true;
        }
        self.cmd.arg(arg);
        self
    }

    pub fn args(mut self, args: &[&str]) -> Self {
        for a in args {
            self = self.arg(a);
        }
        self
    }

    /// Sends the error log to `path` (`--error-logfile`) and follows it there, across renames,
    /// as `tail -F` does.
    pub fn log_file(mut self, path: &Path) -> Self {
        self.cmd.args(["--error-logfile", path.to_str().unwrap()]);
        self.log_file = Some(path.to_path_buf());
        self
    }

    /// The command, for what the other methods do not cover.
    pub fn command(&mut self) -> &mut Command {
        &mut self.cmd
    }

    /// The addresses come from elsewhere (a config file, systemd): add no `--bind`.
    pub fn without_bind(mut self) -> Self {
        self.bind_given = true;
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.cmd.env(key, value);
        self
    }

    /// Starts the server and waits until every worker is ready.
    pub fn start(mut self) -> Server {
        if !self.bind_given {
            self.cmd.args(["--bind", "127.0.0.1:0"]);
        }
        self.cmd.args(["--workers", &self.workers.to_string()]);
        let server = self.spawn();
        server.wait_log("worker(s) ready", PATIENCE);
        server
    }

    /// Starts the server and waits only until it reports its address.
    pub fn spawn(mut self) -> Server {
        use std::os::unix::process::CommandExt;
        self.cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = self.cmd.spawn().expect("cannot start the server");
        let log = Arc::new(Log::default());
        let stderr = child.stderr.take().unwrap();
        let reader_log = Arc::clone(&log);
        let stop = Arc::new(AtomicBool::new(false));
        match self.log_file {
            None => {
                std::thread::spawn(move || {
                    for line in BufReader::new(stderr).lines() {
                        let Ok(line) = line else { break };
                        reader_log.push(line);
                    }
                    reader_log.end();
                });
            }
            Some(path) => {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || follow(&path, &reader_log, &stop));
            }
        }
        let mut server = Server {
            child,
            log,
            stop_following: stop,
            addr: "0.0.0.0:0".parse().unwrap(),
        };
        let line = server.wait_log("listening on http://", PATIENCE);
        let addr: String = line
            .rsplit("http://")
            .next()
            .unwrap()
            .chars()
            .take_while(|c| c.is_ascii_hexdigit() || ".:[]".contains(*c))
            .collect();
        server.addr = addr.parse().expect("a socket address in the log");
        server
    }
}

impl Log {
    fn push(&self, line: String) {
        self.lines.lock().unwrap().push(line);
        self.grew.notify_all();
    }

    fn end(&self) {
        // Under the lock, so that a waiter between its check and its wait still wakes.
        let _lines = self.lines.lock().unwrap();
        self.ended.store(true, Ordering::Relaxed);
        self.grew.notify_all();
    }
}

/// Reads the lines appended to `path`, reopening it when it is replaced (a rename by the test,
/// as logrotate does), until `stop`.
fn follow(path: &Path, log: &Log, stop: &AtomicBool) {
    use std::os::unix::fs::MetadataExt;
    let mut reader: Option<(BufReader<std::fs::File>, u64)> = None;
    let mut partial = String::new();
    while !stop.load(Ordering::Relaxed) {
        if reader.is_none()
            && let Ok(file) = std::fs::File::open(path)
        {
            let inode = file.metadata().unwrap().ino();
            reader = Some((BufReader::new(file), inode));
        }
        let mut progressed = false;
        if let Some((file, inode)) = reader.as_mut() {
            while let Ok(n) = file.read_line(&mut partial) {
                if n == 0 || !partial.ends_with('\n') {
                    break;
                }
                progressed = true;
                log.push(partial.trim_end().to_string());
                partial.clear();
            }
            let replaced = std::fs::metadata(path).map_or(true, |m| m.ino() != *inode);
            if replaced && !progressed {
                reader = None;
            }
        }
        if !progressed {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Server {
    /// A `serve` command for `bin` with `workers` workers on a free port of 127.0.0.1.
    pub fn builder(bin: Bin, workers: usize) -> Builder {
        Self::wrapped(&[], bin, workers)
    }

    /// Like [`Server::builder`], run through another program: `wrapper` comes first, then
    /// the binary and its arguments (`unshare --pid --fork`, `systemd-socket-activate -l ...`).
    pub fn wrapped(wrapper: &[&str], bin: Bin, workers: usize) -> Builder {
        let path = bin.path();
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut cmd = Command::new(program);
                cmd.args(rest).arg(&path);
                cmd
            }
            None => Command::new(&path),
        };
        cmd.arg("serve")
            .env_remove("PORT")
            .env_remove("WEB_CONCURRENCY");
        Builder {
            cmd,
            bind_given: false,
            workers,
            log_file: None,
        }
    }

    pub fn start(bin: Bin, workers: usize) -> Server {
        Self::builder(bin, workers).start()
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).expect("signal the master");
    }

    /// Signals every process of the server at once, as systemd's `KillMode=control-group` and a
    /// terminal's Ctrl+C do.
    pub fn signal_group(&self, sig: Signal) {
        killpg(self.pid(), sig).expect("signal the process group");
    }

    /// The master's live children.
    pub fn workers(&self) -> Vec<Pid> {
        children_of(self.pid())
    }

    /// Waits until the master has exactly `n` children, all different from `not`.
    pub fn wait_workers(&self, n: usize, not: &[Pid]) -> Vec<Pid> {
        let until = Instant::now() + PATIENCE;
        loop {
            let now = self.workers();
            if now.len() == n && now.iter().all(|p| !not.contains(p)) {
                return now;
            }
            assert!(
                Instant::now() < until,
                "expected {n} workers, have {now:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the master to exit, at most `timeout`; `None` if it did not.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the master") {
                return Some(status);
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits for the master to exit and returns its status and how long that took, failing
    /// the test after `timeout`.
    pub fn expect_exit(&mut self, timeout: Duration) -> (ExitStatus, Duration) {
        let start = Instant::now();
        match self.wait_exit(timeout) {
            Some(status) => (status, start.elapsed()),
            None => panic!("the master did not exit within {timeout:?}\n{}", self.log()),
        }
    }

    /// Waits for a log line containing `needle` and returns it.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        self.wait_lines(&format!("a log line with {needle:?}"), timeout, |lines| {
            lines.iter().find(|l| l.contains(needle)).cloned()
        })
    }

    /// Waits until `found` finds something in the log lines, at most `timeout`.
    fn wait_lines<T>(
        &self,
        what: &str,
        timeout: Duration,
        found: impl Fn(&[String]) -> Option<T>,
    ) -> T {
        let until = Instant::now() + timeout;
        let mut lines = self.log.lines.lock().unwrap();
        loop {
            if let Some(value) = found(&lines) {
                return value;
            }
            assert!(
                !self.log.ended.load(Ordering::Relaxed),
                "no {what}: the server closed its stderr; log:\n{}",
                lines.join("\n")
            );
            let left = until.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {what} within {timeout:?}; log:\n{}",
                lines.join("\n")
            );
            lines = self.log.grew.wait_timeout(lines, left).unwrap().0;
        }
    }

    /// How many log lines contain `needle`.
    pub fn count_log(&self, needle: &str) -> usize {
        self.log
            .lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until `n` log lines contain `needle`.
    pub fn wait_log_count(&self, needle: &str, n: usize, timeout: Duration) {
        self.wait_lines(
            &format!("{n} log lines with {needle:?}"),
            timeout,
            |lines| (lines.iter().filter(|l| l.contains(needle)).count() >= n).then_some(()),
        )
    }

    pub fn log(&self) -> String {
        self.log.lines.lock().unwrap().join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_following.store(true, Ordering::Relaxed);
        // The group holds the master and every worker, even ones whose master is gone.
        let _ = killpg(self.pid(), Signal::SIGKILL);
        let _ = self.child.wait();
        let until = Instant::now() + PATIENCE;
        while process_group_alive(self.pid()) && Instant::now() < until {
            let _ = killpg(self.pid(), Signal::SIGKILL);
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Runs a command to completion (with a bound) and returns its status and stderr.
pub fn run(bin: Bin, args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String) {
    let mut cmd = Command::new(bin.path());
    cmd.args(args)
        .env_remove("PORT")
        .env_remove("WEB_CONCURRENCY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut server = Server {
        child: {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0).spawn().expect("run the binary")
        },
        log: Arc::default(),
        stop_following: Arc::default(),
        addr: "0.0.0.0:0".parse().unwrap(),
    };
    let (status, _) = server.expect_exit(PATIENCE);
    let mut stderr = String::new();
    use std::io::Read;
    server
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status, stderr)
}

/// Processes whose parent is `parent`, from /proc.
pub fn children_of(parent: Pid) -> Vec<Pid> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Some((ppid, state)) = stat(pid) {
            // A zombie is dead, only not yet reaped.
            if ppid == parent.as_raw() && state != 'Z' {
                out.push(Pid::from_raw(pid));
            }
        }
    }
    out.sort();
    out
}

/// Whether any live (not zombie) process is in process group `pgid`.
pub fn process_group_alive(pgid: Pid) -> bool {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .any(|pid| pgrp(pid) == Some(pgid.as_raw()) && stat(pid).is_some_and(|(_, s)| s != 'Z'))
}

/// Whether `pid` is alive (a zombie counts as dead).
pub fn alive(pid: Pid) -> bool {
    stat(pid.as_raw()).is_some_and(|(_, state)| state != 'Z')
}

/// Waits until none of `pids` is alive; false if some still are after `timeout`.
pub fn wait_dead(pids: &[Pid], timeout: Duration) -> bool {
    let until = Instant::now() + timeout;
    while Instant::now() < until {
        if pids.iter().all(|p| !alive(*p)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; the fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

fn stat(pid: i32) -> Option<(i32, char)> {
    let fields = stat_fields(pid)?;
    Some((fields[1].parse().ok()?, fields[0].chars().next()?))
}

fn pgrp(pid: i32) -> Option<i32> {
    stat_fields(pid)?[2].parse().ok()
}

/// Distinct values, for counting which workers served.
pub fn distinct<T: std::hash::Hash + Eq + Clone>(items: &[T]) -> usize {
    items.iter().cloned().collect::<HashSet<_>>().len()
}

/// A tokio runtime for a test's async clients (HTTP/2, websockets). The harness itself never
/// forks; the servers it starts do.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
