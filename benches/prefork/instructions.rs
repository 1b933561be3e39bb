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

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

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
    let serve = ["serve", "--workers", "1", "--bind", "127.0.0.1:0"];
    let baseline = ["--threads", "1", "--bind", "127.0.0.1:0"];
    let mut one_process = Vec::new();
    for (label, bin, app) in [
        ("bare", Bin::Bare, &["--bare"][..]),
        ("demo (axum)", Bin::Demo, &[][..]),
    ] {
        let pre = per_request(&bin.path(), &serve);
        let base = per_request(&Bin::Baseline.path(), &[app, &baseline[..]].concat());
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
    table.note(format!(
        "the busiest process's instructions after {MANY} requests less after {FEW}, over the \
         {} between; the baseline is examples/baseline.rs (--bare for the bare row)",
        MANY - FEW
    ));
    vec![table]
}

fn counted(name: String, value: f64, baseline: f64) -> Row {
    Row::new(name)
        .value(format!("{value:.0}"))
        .baseline(format!("{baseline:.0}"))
        .ratio(value / baseline)
}

/// Instructions one request costs `program args`.
fn per_request(program: &Path, args: &[&str]) -> f64 {
    let few = busiest_total(program, args, FEW);
    let many = busiest_total(program, args, MANY);
    (many.saturating_sub(few)) as f64 / (MANY - FEW) as f64
}

/// Serves `requests` under callgrind and returns the largest process total.
fn busiest_total(program: &Path, args: &[&str], requests: u64) -> u64 {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let out = dir.path().join("callgrind.%p");
    let child = Command::new("valgrind")
        .args(["-q", "--tool=callgrind", "--trace-children=yes"])
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("start valgrind");
    let mut server = Group(child);
    let addr = listening_address(&mut server.0);
    let mut conn = TcpStream::connect(&addr).expect("connect to the server under callgrind");
    conn.set_read_timeout(Some(PATIENCE))
        .expect("a read timeout");
    let mut reader = BufReader::new(conn.try_clone().expect("a second handle"));
    for _ in 0..requests {
        conn.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
            .expect("send a request");
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
