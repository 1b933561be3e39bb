//! Section 10: what a request costs in instructions, counted by callgrind, which neither the
//! machine's load nor the scheduler moves. The app path's ratios to the one-process server
//! move by ±0.2 between runs of unchanged code on a shared 2-core machine; this count moves by
//! a few instructions. It counts user space only: the system calls (the same ones for both
//! servers, one `recvfrom` and one `writev` per request) are the kernel's work.
//!
//! Each server is started under `valgrind --tool=callgrind --trace-children=yes` with one
//! worker (one runtime thread for the baseline) and sent `GET /` over one keep-alive
//! connection, [`FEW`] requests in one run and [`MANY`] in another. The busiest process's
//! total (prefork's worker, the baseline's only process) of the second run less that of the
//! first, over the requests between, is the cost of one request, start and stop left out.
//!
//! The static rows count prefork's built-in app and h2o (one thread) serving the same 1 KiB
//! file the same way. The app resolves every path with `openat2`, which valgrind 3.19 (Debian
//! 12) does not know, so both run with [`SHIM`] preloaded; without a C compiler or h2o, the
//! rows are left out with a line that says why.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use prefork::app::SETTLED_AFTER;

use crate::reference_servers::{self, Kind};
use crate::report::{Row, Table};
use crate::support::Bin;

/// Requests of the shorter run.
const FEW: u64 = 500;
/// Requests of the longer run.
const MANY: u64 = 2_500;
/// How long a server under valgrind may take to start, or to stop.
const PATIENCE: Duration = Duration::from_secs(120);

pub fn instructions() -> Vec<Table> {
    if !Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        println!("instructions: valgrind is not installed (apt-get install valgrind): skipped");
        return Vec::new();
    }
    let mut table = Table::new(
        "10. Instructions per request (callgrind, user space): GET / over one keep-alive \
         connection, prefork --workers 1 vs the same service in one process, --threads 1; lower \
         is better",
    );
    // Made first, so that it has settled by the time the static rows ask for it.
    let site = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(site.path().join("1k.bin"), [b'x'; 1024]).expect("write the 1 KiB file");
    let serve = ["serve", "--workers", "1", "--bind", "127.0.0.1:0"];
    let baseline = ["--threads", "1", "--bind", "127.0.0.1:0"];
    let mut one_process = Vec::new();
    for (label, bin, app) in [
        ("bare", Bin::Bare, &["--bare"][..]),
        ("demo (axum)", Bin::Demo, &[][..]),
    ] {
        let pre = per_request(&Subject::announced(bin.path(), &serve));
        let base = per_request(&Subject::announced(
            Bin::Baseline.path(),
            &[app, &baseline[..]].concat(),
        ));
        table.row(counted(
            format!("{label}: instructions per request"),
            pre,
            base,
        ));
        one_process.push(base);
    }
    // What section 7b's demo row holds against prefork: axum's own work, in one process.
    table.row(counted(
        "axum in one process (demo vs bare baseline)".to_string(),
        one_process[1],
        one_process[0],
    ));
    match static_files(site.path()) {
        Ok(row) => table.row(row),
        Err(why) => println!("instructions: static rows skipped: {why}"),
    }
    table.note(format!(
        "the busiest process's instructions after {MANY} requests less after {FEW}, over the \
         {} between; the baseline is examples/baseline.rs (--bare for the bare row), and h2o \
         (one thread, file.dir) for the static row",
        MANY - FEW
    ));
    vec![table]
}

/// prefork's static app (`--root`) against h2o, both serving `GET /1k.bin` from `root`.
fn static_files(root: &Path) -> Result<Row, String> {
    let h2o = reference_servers::installed(Kind::H2o)?;
    let build = tempfile::tempdir().map_err(|e| format!("a temporary directory: {e}"))?;
    let shim = build_shim(build.path())?;
    wait_settled(&root.join("1k.bin"));
    let root_text = root.to_str().ok_or("the root is not UTF-8")?;
    let serve = [
        "serve",
        "--workers",
        "1",
        "--root",
        root_text,
        "--bind",
        "127.0.0.1:0",
    ];
    let prefork = Subject {
        preload: Some(shim.clone()),
        path: "/1k.bin",
        ..Subject::announced(Bin::Prefork.path(), &serve)
    };
    let addr = reference_servers::free_port()?;
    let config = build.path().join("h2o.conf");
    std::fs::write(&config, reference_servers::h2o_config(1, root, addr))
        .map_err(|e| format!("write {}: {e}", config.display()))?;
    let h2o = Subject {
        program: h2o,
        args: vec!["-c".into(), config.display().to_string()],
        preload: Some(shim),
        at: Some(addr),
        path: "/1k.bin",
    };
    Ok(counted(
        "static 1 KiB: instructions per request (baseline: h2o)".to_string(),
        per_request(&prefork),
        per_request(&h2o),
    ))
}

/// Preloaded into the servers of the static rows: glibc's `syscall()` with `SYS_openat2` (437)
/// becomes `openat` with the same flags and mode, the path resolved as it comes. Only what
/// valgrind 3.19 lacks is replaced, and only for counting: the kernel's work is not counted.
const SHIM: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
struct open_how { uint64_t flags, mode, resolve; };
long syscall(long number, ...) {
    va_list list;
    long a[6];
    va_start(list, number);
    for (int i = 0; i < 6; i++) a[i] = va_arg(list, long);
    va_end(list);
    if (number == 437) {
        const struct open_how *how = (const struct open_how *)a[2];
        return openat((int)a[0], (const char *)a[1], (int)how->flags, (int)how->mode);
    }
    static long (*next)(long, ...);
    if (!next) next = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
    return next(number, a[0], a[1], a[2], a[3], a[4], a[5]);
}
"#;

/// Builds [`SHIM`] in `dir` with the system's C compiler (the one Rust links with).
fn build_shim(dir: &Path) -> Result<PathBuf, String> {
    let source = dir.join("openat2_shim.c");
    let library = dir.join("openat2_shim.so");
    std::fs::write(&source, SHIM).map_err(|e| format!("write {}: {e}", source.display()))?;
    let built = Command::new("cc")
        .args(["-O2", "-shared", "-fPIC", "-o"])
        .arg(&library)
        .arg(&source)
        .arg("-ldl")
        .output()
        .map_err(|e| format!("no C compiler to build the openat2 shim (cc: {e})"))?;
    if !built.status.success() {
        return Err(format!(
            "cc could not build the openat2 shim: {}",
            String::from_utf8_lossy(&built.stderr).trim()
        ));
    }
    Ok(library)
}

/// Waits until `path` changed [`SETTLED_AFTER`] ago, after which prefork keeps its answer in
/// memory: the counts are of answers from memory, as under load.
fn wait_settled(path: &Path) {
    let meta = std::fs::metadata(path).expect("the 1 KiB file");
    let changed = SystemTime::UNIX_EPOCH
        + Duration::new(
            meta.ctime().try_into().expect("a change time after 1970"),
            meta.ctime_nsec()
                .try_into()
                .expect("nanoseconds below 10^9"),
        );
    let settled = changed + SETTLED_AFTER + Duration::from_millis(100);
    if let Ok(left) = settled.duration_since(SystemTime::now()) {
        std::thread::sleep(left);
    }
}

fn counted(name: String, value: f64, baseline: f64) -> Row {
    Row::new(name)
        .value(format!("{value:.0}"))
        .baseline(format!("{baseline:.0}"))
        .ratio(value / baseline)
}

/// A server to count: how to start it, where it listens, and what to ask it.
struct Subject {
    program: PathBuf,
    args: Vec<String>,
    /// A library preloaded into it (see [`SHIM`]).
    preload: Option<PathBuf>,
    /// Where it listens; `None` when it says so on stderr ("listening on http://ADDR"), as
    /// prefork and the baseline do.
    at: Option<SocketAddr>,
    path: &'static str,
}

impl Subject {
    /// `program args`, asked for `/`, saying where it listens.
    fn announced(program: PathBuf, args: &[&str]) -> Subject {
        Subject {
            program,
            args: args.iter().map(|a| a.to_string()).collect(),
            preload: None,
            at: None,
            path: "/",
        }
    }
}

/// Instructions one request costs `subject`.
fn per_request(subject: &Subject) -> f64 {
    let few = busiest_total(subject, FEW);
    let many = busiest_total(subject, MANY);
    (many.saturating_sub(few)) as f64 / (MANY - FEW) as f64
}

/// Serves `requests` under callgrind and returns the largest process total.
fn busiest_total(subject: &Subject, requests: u64) -> u64 {
    let program = &subject.program;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let out = dir.path().join("callgrind.%p");
    let mut command = Command::new("valgrind");
    command
        .args(["-q", "--tool=callgrind", "--trace-children=yes"])
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(program)
        .args(&subject.args)
        .stdout(Stdio::null())
        .stderr(if subject.at.is_some() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .process_group(0);
    if let Some(library) = &subject.preload {
        command.env("LD_PRELOAD", library);
    }
    let mut server = Group(command.spawn().expect("start valgrind"));
    let mut conn = match subject.at {
        Some(addr) => connect_when_listening(addr),
        None => TcpStream::connect(listening_address(&mut server.0))
            .expect("connect to the server under callgrind"),
    };
    conn.set_read_timeout(Some(PATIENCE))
        .expect("a read timeout");
    let mut reader = BufReader::new(conn.try_clone().expect("a second handle"));
    let request = format!("GET {} HTTP/1.1\r\nHost: bench\r\n\r\n", subject.path);
    for _ in 0..requests {
        conn.write_all(request.as_bytes()).expect("send a request");
        read_response(&mut reader);
    }
    drop((conn, reader));
    server.stop();
    let mut busiest = 0;
    for entry in std::fs::read_dir(dir.path()).expect("list callgrind's files") {
        let text = std::fs::read_to_string(entry.expect("a file").path()).expect("read a file");
        let total = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("summary:")
                    .or_else(|| l.strip_prefix("totals:"))
            })
            .and_then(|n| n.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        busiest = busiest.max(total);
    }
    assert!(
        busiest > 0,
        "callgrind wrote no totals for {}",
        program.display()
    );
    busiest
}

/// Reads the server's stderr until it says where it listens; a thread drains the rest.
fn listening_address(child: &mut Child) -> String {
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some((_, rest)) = line.split_once("listening on http://") {
                let addr = rest.split_whitespace().next().unwrap_or_default();
                let _ = tx.send(addr.to_string());
            }
        }
    });
    rx.recv_timeout(PATIENCE)
        .expect("the server under callgrind never said where it listens")
}

/// Connects to `addr` once the server under callgrind listens there, within [`PATIENCE`].
fn connect_when_listening(addr: SocketAddr) -> TcpStream {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        match TcpStream::connect(addr) {
            Ok(conn) => return conn,
            Err(e) if std::time::Instant::now() >= deadline => {
                panic!("the server under callgrind never listened on {addr}: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Reads one response with a `Content-Length`, whole.
fn read_response(reader: &mut BufReader<TcpStream>) {
    let mut length = None;
    loop {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).expect("read a response") > 0,
            "the server closed the connection"
        );
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse::<usize>().ok();
        }
    }
    let mut body = vec![0; length.expect("a Content-Length")];
    reader.read_exact(&mut body).expect("read a body");
}

/// The server's process group, stopped by TERM, and killed if the bench fails first.
struct Group(Child);

impl Group {
    fn stop(&mut self) {
        let _ = killpg(Pid::from_raw(self.0.id() as i32), Signal::SIGTERM);
        let deadline = std::time::Instant::now() + PATIENCE;
        while self.0.try_wait().expect("wait for valgrind").is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "the server under callgrind did not stop on TERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.0.id() as i32), Signal::SIGKILL);
        let _ = self.0.wait();
    }
}
