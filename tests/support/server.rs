//! A server under test: the real binary in its own process group, killed with the whole group
//! when its guard drops (also when the test or the benchmark panics), with its log collected
//! as it comes, each line stamped with the moment it was read.

use std::fmt::Display;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use super::procfs::{children_of, process_group_alive};
use super::{PATIENCE, poll};

/// Which executable to run.
#[derive(Clone, Copy)]
pub enum Bin {
    /// The `prefork` binary: the static file server.
    Prefork,
    /// `examples/demo.rs`: the axum app with slow, streaming and websocket routes.
    Demo,
    /// `examples/baseline.rs`: the same apps in one process on a multi-thread runtime.
    Baseline,
    /// `examples/bare.rs`: a bare `tower::service_fn` returning a fixed body.
    Bare,
}

impl Bin {
    pub fn path(self) -> PathBuf {
        let prefork = PathBuf::from(env!("CARGO_BIN_EXE_prefork"));
        let example = match self {
            Bin::Prefork => return prefork,
            Bin::Demo => "demo",
            Bin::Baseline => "baseline",
            Bin::Bare => "bare",
        };
        // cargo builds examples next to the binaries, in `examples/`.
        let path = prefork.parent().unwrap().join("examples").join(example);
        assert!(
            path.exists(),
            "{} is missing: build it with `cargo build --examples` in the same profile \
             (`cargo test` does, and so does the benchmark)",
            path.display()
        );
        path
    }
}

/// Lines the process wrote to its log, with when each was read, shared with the thread that
/// reads them.
#[derive(Default)]
struct Log {
    lines: Mutex<Vec<(Instant, String)>>,
    grew: Condvar,
    /// Every process has closed the stderr the log is read from: no line will come.
    ended: AtomicBool,
}

impl Log {
    fn push(&self, line: String) {
        self.lines.lock().unwrap().push((Instant::now(), line));
        self.grew.notify_all();
    }

    fn end(&self) {
        // Under the lock, so that a waiter between its check and its wait still wakes.
        let _lines = self.lines.lock().unwrap();
        self.ended.store(true, Ordering::Relaxed);
        self.grew.notify_all();
    }
}

fn render(lines: &[(Instant, String)]) -> String {
    lines
        .iter()
        .map(|(_, l)| l.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

pub struct Server {
    child: Child,
    log: Arc<Log>,
    stop_following: Arc<AtomicBool>,
    /// Just before the process was started.
    pub exec_at: Instant,
    /// The first TCP address it listens on, from its log.
    pub addr: SocketAddr,
    /// When the line with that address was read.
    pub listening_at: Instant,
}

pub struct Builder {
    cmd: Command,
    bind_given: bool,
    /// `--workers`, for the `serve` command.
    workers: Option<usize>,
    /// Where the server logs, when not on stderr.
    log_file: Option<PathBuf>,
}

impl Builder {
    /// `bin` without arguments yet, run through `wrapper` if that is not empty: the wrapper's
    /// program and arguments come first, then the binary and its arguments (`unshare --pid
    /// --fork`, `systemd-socket-activate -l ...`).
    pub fn wrapped(wrapper: &[&str], bin: Bin) -> Builder {
        Self::wrapped_path(wrapper, &bin.path())
    }

    /// Like [`Builder::wrapped`], for the executable at `path` (a copy a test can replace).
    pub fn wrapped_path(wrapper: &[&str], path: &Path) -> Builder {
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut cmd = Command::new(program);
                cmd.args(rest).arg(path);
                cmd
            }
            None => Command::new(path),
        };
        // The server's settings are the test's, not whatever the caller's environment says.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PREFORK_") {
                cmd.env_remove(key);
            }
        }
        cmd.env_remove("PORT")
            .env_remove("WEB_CONCURRENCY")
            .env_remove("RUST_LOG");
        Builder {
            cmd,
            bind_given: false,
            workers: None,
            log_file: None,
        }
    }

    pub fn new(bin: Bin) -> Builder {
        Self::wrapped(&[], bin)
    }

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
    pub fn start(self) -> Server {
        let server = self.spawn();
        server.wait_log("worker(s) ready", PATIENCE);
        server
    }

    /// Starts the server and waits only until it reports its address; without a `--bind`, on
    /// a free port of 127.0.0.1.
    pub fn spawn(mut self) -> Server {
        if !self.bind_given {
            self.cmd.args(["--bind", "127.0.0.1:0"]);
        }
        if let Some(n) = self.workers {
            self.cmd.args(["--workers", &n.to_string()]);
        }
        let mut server = self.spawn_program();
        let (at, line) = server.wait_log_after("listening on http://", 0, PATIENCE);
        let addr: String = line
            .rsplit("http://")
            .next()
            .unwrap()
            .chars()
            .take_while(|c| c.is_ascii_hexdigit() || ".:[]".contains(*c))
            .collect();
        server.addr = addr.parse().expect("a socket address in the log");
        server.listening_at = at;
        server
    }

    /// Starts the command as it stands (no `--bind` or `--workers` added) and follows its log,
    /// without waiting for anything: for a program other than prefork under the same guard
    /// (HAProxy in front of prefork servers). Its `addr` is left unspecified.
    pub fn spawn_program(mut self) -> Server {
        let mut server = Server::launch(&mut self.cmd);
        let stderr = server.child.stderr.take().unwrap();
        let log = Arc::clone(&server.log);
        match self.log_file {
            None => {
                std::thread::spawn(move || {
                    for line in BufReader::new(stderr).lines() {
                        let Ok(line) = line else { break };
                        log.push(line);
                    }
                    log.end();
                });
            }
            Some(path) => {
                let stop = Arc::clone(&server.stop_following);
                std::thread::spawn(move || follow(&path, &log, &stop));
            }
        }
        server
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
            // A file gives no event when it grows: this is the polling interval of `tail -F`.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Server {
    /// Starts `cmd` in a process group of its own, with its stderr piped, under the guard.
    fn launch(cmd: &mut Command) -> Server {
        use std::os::unix::process::CommandExt;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        let exec_at = Instant::now();
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()));
        Server {
            child,
            log: Arc::default(),
            stop_following: Arc::default(),
            exec_at,
            addr: "0.0.0.0:0".parse().unwrap(),
            listening_at: exec_at,
        }
    }

    /// A `serve` command for `bin` with `workers` workers on a free port of 127.0.0.1.
    pub fn builder(bin: Bin, workers: usize) -> Builder {
        Self::wrapped(&[], bin, workers)
    }

    /// Like [`Server::builder`], run through `wrapper` (see [`Builder::wrapped`]).
    pub fn wrapped(wrapper: &[&str], bin: Bin, workers: usize) -> Builder {
        Self::wrapped_path(wrapper, &bin.path(), workers)
    }

    /// Like [`Server::wrapped`], for the executable at `path`.
    pub fn wrapped_path(wrapper: &[&str], path: &Path, workers: usize) -> Builder {
        let mut builder = Builder::wrapped_path(wrapper, path).arg("serve");
        builder.workers = Some(workers);
        builder
    }

    pub fn start(bin: Bin, workers: usize) -> Server {
        Self::builder(bin, workers).start()
    }

    /// The first `https://` address it listens on, from the master's log.
    pub fn https_addr(&self) -> SocketAddr {
        let line = self.wait_log("listening on https://", PATIENCE);
        // The address ends where the line or the message (in a JSON log) does.
        let addr: String = line
            .rsplit("https://")
            .next()
            .expect("an address in the https line")
            .chars()
            .take_while(|c| c.is_ascii_hexdigit() || ".:[]".contains(*c))
            .collect();
        addr.parse().expect("a socket address")
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

    /// The master's live children (for a single-process server: none).
    pub fn workers(&self) -> Vec<Pid> {
        children_of(self.pid())
    }

    /// The server's processes: the master (or the single process) first.
    pub fn processes(&self) -> Vec<Pid> {
        let mut all = vec![self.pid()];
        all.extend(self.workers());
        all
    }

    /// Waits until `check` gives a value, failing with `what` and the log after [`PATIENCE`].
    pub fn wait_until<T>(&self, what: impl Display, check: impl FnMut() -> Option<T>) -> T {
        poll(PATIENCE, Duration::from_millis(5), check)
            .unwrap_or_else(|| panic!("{what}: not within {PATIENCE:?}; log:\n{}", self.log()))
    }

    /// Waits until the master has exactly `n` children, all different from `not`.
    pub fn wait_workers(&self, n: usize, not: &[Pid]) -> Vec<Pid> {
        self.wait_until(format!("{n} workers, none of {not:?}"), || {
            let now = self.workers();
            (now.len() == n && now.iter().all(|p| !not.contains(p))).then_some(now)
        })
    }

    /// Waits for the master to exit, at most `timeout`: its status and when its exit was
    /// seen; `None` if it did not exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<(ExitStatus, Instant)> {
        // Every millisecond: the benchmark times stops with this.
        poll(timeout, Duration::from_millis(1), || {
            let status = self.child.try_wait().expect("wait for the master")?;
            Some((status, Instant::now()))
        })
    }

    /// Waits for the master to exit and returns its status and how long that took, failing
    /// after `timeout`.
    pub fn expect_exit(&mut self, timeout: Duration) -> (ExitStatus, Duration) {
        let start = Instant::now();
        match self.wait_exit(timeout) {
            Some((status, at)) => (status, at - start),
            None => panic!("the master did not exit within {timeout:?}\n{}", self.log()),
        }
    }

    /// Waits for a log line containing `needle` and returns it.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        self.wait_log_after(needle, 0, timeout).1
    }

    /// Waits for a log line containing `needle` among the lines after the first `skip`, and
    /// returns when it was read and the line.
    pub fn wait_log_after(
        &self,
        needle: &str,
        skip: usize,
        timeout: Duration,
    ) -> (Instant, String) {
        self.wait_lines(&format!("a log line with {needle:?}"), timeout, |lines| {
            lines
                .iter()
                .skip(skip)
                .find(|(_, l)| l.contains(needle))
                .cloned()
        })
    }

    /// Waits until `n` log lines contain `needle`.
    pub fn wait_log_count(&self, needle: &str, n: usize, timeout: Duration) {
        self.wait_lines(
            &format!("{n} log lines with {needle:?}"),
            timeout,
            |lines| (lines.iter().filter(|(_, l)| l.contains(needle)).count() >= n).then_some(()),
        )
    }

    /// Waits until `found` finds something in the log lines, at most `timeout`.
    fn wait_lines<T>(
        &self,
        what: &str,
        timeout: Duration,
        found: impl Fn(&[(Instant, String)]) -> Option<T>,
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
                render(&lines)
            );
            let left = until.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {what} within {timeout:?}; log:\n{}",
                render(&lines)
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
            .filter(|(_, l)| l.contains(needle))
            .count()
    }

    /// How many lines the log has so far, to wait for a line after them.
    pub fn log_len(&self) -> usize {
        self.log.lines.lock().unwrap().len()
    }

    pub fn log(&self) -> String {
        render(&self.log.lines.lock().unwrap())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_following.store(true, Ordering::Relaxed);
        // The group holds the master and every worker, even ones whose master is gone.
        let _ = killpg(self.pid(), Signal::SIGKILL);
        let _ = self.child.wait();
        let gone = || {
            let _ = killpg(self.pid(), Signal::SIGKILL);
            (!process_group_alive(self.pid())).then_some(())
        };
        let _ = poll(PATIENCE, Duration::from_millis(10), gone);
    }
}

/// Runs a command to completion (with a bound, and under the same guard as a server) and
/// returns its status and stderr.
pub fn run(bin: Bin, args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String) {
    run_wrapped(&[], bin, args, env)
}

/// Like [`run`], through `wrapper` (see [`Builder::wrapped`]).
pub fn run_wrapped(
    wrapper: &[&str],
    bin: Bin,
    args: &[&str],
    env: &[(&str, &str)],
) -> (ExitStatus, String) {
    let mut builder = Builder::wrapped(wrapper, bin).without_bind().args(args);
    for (k, v) in env {
        builder = builder.env(k, v);
    }
    let mut server = Server::launch(&mut builder.cmd);
    let (status, _) = server.expect_exit(PATIENCE);
    let mut stderr = String::new();
    server
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status, stderr)
}
