//! `prefork run -- PROGRAM`: the master supervising programs that serve on the sockets it
//! passes them (docs/programs.md). The programs are real: uvicorn with a FastAPI application,
//! and a plain Python server that speaks systemd's notification protocol, from
//! `tests/programs/`; `.ci/run` installs uvicorn and FastAPI into `target/pyenv`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::deploy::{assert_runs_as, nobody_ids};
use super::http::{Conn, get, try_get};
use super::load::Load;
use super::support::procfs::{alive, process_group_alive};
use super::support::server::{Builder, run};
use super::support::{Bin, PATIENCE, Server, wait_for};

/// What a stop may take beyond its deadline: the master's kill, the reaping, the exit.
const MARGIN: Duration = Duration::from_secs(2);

fn programs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs")
}

/// An executable of the test's Python environment.
fn pyenv(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/pyenv/bin")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: the tests of prefork run need uvicorn and FastAPI; install them with \
         `python3 -m venv target/pyenv && target/pyenv/bin/pip install -r \
         tests/programs/requirements.txt` (.ci/run does)",
        path.display()
    );
    path
}

/// The FastAPI application copied into a directory of its own, which a test may change.
fn app_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(programs_dir().join("app.py"), dir.path().join("app.py")).unwrap();
    dir
}

/// `prefork run` with `options`, then `--`, then `program`, on a free port.
fn run_builder(options: &[&str], program: &[&str]) -> Builder {
    Builder::new(Bin::Prefork)
        .arg("run")
        .args(&["-b", "127.0.0.1:0"])
        .args(options)
        .arg("--")
        .args(program)
        // Stale bytecode would hide a changed source file of the same size and second.
        .env("PYTHONDONTWRITEBYTECODE", "1")
}

/// uvicorn serving the application in `app` on the inherited socket.
fn uvicorn(options: &[&str], app: &Path) -> Builder {
    let uvicorn = pyenv("uvicorn");
    run_builder(
        options,
        &[
            uvicorn.to_str().unwrap(),
            "app:app",
            "--app-dir",
            app.to_str().unwrap(),
            "--fd",
            "{fd}",
        ],
    )
}

/// Opens the application's websocket and reads its first message.
fn websocket(server: &Server) -> TcpStream {
    let mut tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    tcp.write_all(
        b"GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("hello") {
        let n = tcp.read(&mut buf).expect("the websocket's first message");
        assert!(n > 0, "closed before the first message");
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(
        seen.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    tcp
}

/// The workers' process groups, all gone.
fn groups_gone(workers: &[Pid]) -> bool {
    workers.iter().all(|w| !process_group_alive(*w))
}

#[test]
fn run_a_websocket_loop_that_ignores_shutdown_is_cut_at_the_graceful_timeout() {
    let app = app_dir();
    let mut server = uvicorn(&["-w", "2", "--graceful-timeout", "3s"], app.path()).start();
    let workers = server.workers();
    assert_eq!(workers.len(), 2);
    let _ws = websocket(&server);
    assert_eq!(get(server.addr, "/").status, 200);
    let term = Instant::now();
    server.signal(Signal::SIGTERM);
    let (status, _) = server.expect_exit(Duration::from_secs(3) + MARGIN + PATIENCE);
    let took = term.elapsed();
    assert!(status.success(), "{status:?}\n{}", server.log());
    assert!(
        took < Duration::from_secs(3) + MARGIN,
        "stopped after {took:?}, past the graceful timeout (3s)"
    );
    assert!(
        groups_gone(&workers),
        "a worker's process group outlived the stop"
    );
    let log = server.log();
    assert!(
        log.contains("killing it"),
        "the hung program was not killed:\n{log}"
    );
}

/// The control: plain uvicorn, the same application and websocket, does not stop on TERM.
#[test]
fn run_control_plain_uvicorn_hangs_on_the_same_websocket() {
    let app = app_dir();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(pyenv("uvicorn"))
        .args(["app:app", "--app-dir", app.path().to_str().unwrap()])
        .args(["--port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let guard = KillOnDrop(Pid::from_raw(child.id() as i32));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    wait_for("plain uvicorn listening", || try_get(addr, "/").ok());
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.write_all(
        b"GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut buf = [0u8; 64];
    assert!(tcp.read(&mut buf).unwrap() > 0);
    nix::sys::signal::kill(guard.0, Signal::SIGTERM).unwrap();
    // Where prefork run is done within 3s and a margin, plain uvicorn is still waiting.
    std::thread::sleep(Duration::from_secs(3) + MARGIN);
    assert!(
        child.try_wait().unwrap().is_none(),
        "plain uvicorn stopped: the control no longer shows the hang"
    );
}

/// Kills a process that the test started outside the `Server` guard.
struct KillOnDrop(Pid);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(self.0, None);
    }
}

#[test]
fn run_requests_in_flight_finish_across_term_and_one_past_the_deadline_is_cut() {
    let app = app_dir();
    let mut server = uvicorn(&["-w", "1", "--graceful-timeout", "3s"], app.path()).start();
    let mut quick = Conn::connect(server.addr).unwrap();
    quick
        .send(b"GET /sleep?s=1 HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut slow = Conn::connect(server.addr).unwrap();
    slow.send(b"GET /sleep?s=30 HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    // Both requests are in the application before the stop.
    server.wait_log("app: sleeping 1", PATIENCE);
    server.wait_log("app: sleeping 30", PATIENCE);
    let term = Instant::now();
    server.signal(Signal::SIGTERM);
    let response = quick.read_response(false).expect("the request in flight");
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(
        slow.read_response(false).is_err(),
        "a request past the deadline was answered"
    );
    let cut = term.elapsed();
    assert!(
        cut >= Duration::from_millis(2900) && cut < Duration::from_secs(3) + MARGIN,
        "cut after {cut:?}, not at the deadline (3s)"
    );
    let (status, _) = server.expect_exit(MARGIN + PATIENCE);
    assert!(status.success(), "{status:?}");
}

#[test]
fn run_hup_deploys_the_changed_source_with_no_connection_refused() {
    let app = app_dir();
    let server = uvicorn(&["-w", "2", "--graceful-timeout", "5s"], app.path()).start();
    let old = server.workers();
    assert!(get(server.addr, "/").text().contains("\"v1\""));
    let load = Load::keepalive(server.addr, 4, "/");
    load.wait_each_served();
    let source = app.path().join("app.py");
    let text = std::fs::read_to_string(&source).unwrap();
    std::fs::write(
        &source,
        text.replace("VERSION = \"v1\"", "VERSION = \"v2\""),
    )
    .unwrap();
    server.signal(Signal::SIGHUP);
    server.wait_log("reload complete", PATIENCE);
    wait_for("the old programs gone", || {
        old.iter().all(|pid| !alive(*pid)).then_some(())
    });
    let served = load.served();
    load.wait_served(served + 100);
    let tally = load.finish();
    for _ in 0..4 {
        let response = get(server.addr, "/");
        assert!(response.text().contains("\"v2\""), "{}", response.text());
    }
    // What uvicorn's own drain loses of keep-alive requests is reported, not prefork's to
    // prevent; prefork's part is that the sockets never close, so nothing is refused.
    eprintln!(
        "tally: HUP of uvicorn under keep-alive load: {} served, {} refused, {} lost",
        tally.ok, tally.refused, tally.lost
    );
    assert_eq!(
        tally.refused, 0,
        "connections refused during the reload: {tally:?}"
    );
}

/// The plain Python server, serving the text of `version` (a file) and ready `delay` after it
/// starts, with `options`. It needs only the standard library: the system's Python runs it,
/// which a worker that dropped its privileges may execute too.
fn notify_server(options: &[&str], version: &Path, delay: &str) -> Builder {
    let script = programs_dir().join("notify_server.py");
    run_builder(options, &["/usr/bin/python3", script.to_str().unwrap()])
        .env("VERSION_FILE", version.to_str().unwrap())
        .env("READY_DELAY", delay)
}

#[test]
fn run_a_program_that_notifies_late_gates_the_reload() {
    let dir = tempfile::tempdir().unwrap();
    let version = dir.path().join("version");
    std::fs::write(&version, "one").unwrap();
    // Without the timer, only READY=1 makes a program ready.
    let server = notify_server(&["-w", "2", "--ready-after", "0"], &version, "1.5").start();
    let old = server.workers();
    assert!(get(server.addr, "/").text().starts_with("one "));
    std::fs::write(&version, "two").unwrap();
    let hup = Instant::now();
    server.signal(Signal::SIGHUP);
    server.wait_log("reload complete", PATIENCE * 2);
    let took = hup.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "the old programs were stopped {took:?} after HUP, before the new ones said READY=1"
    );
    wait_for("the old programs gone", || {
        old.iter().all(|pid| !alive(*pid)).then_some(())
    });
    assert!(get(server.addr, "/").text().starts_with("two "));
}

#[test]
fn run_a_new_generation_that_exits_at_once_leaves_the_old_one_serving() {
    let dir = tempfile::tempdir().unwrap();
    let version = dir.path().join("version");
    std::fs::write(&version, "one").unwrap();
    let server = notify_server(&["-w", "2"], &version, "0").start();
    let old = server.workers();
    std::fs::write(&version, "exit").unwrap();
    server.signal(Signal::SIGHUP);
    server.wait_log("reload failed", PATIENCE);
    assert!(server.log().contains("notify_server: told to fail"));
    assert!(
        old.iter().all(|pid| alive(*pid)),
        "an old program was stopped"
    );
    for _ in 0..10 {
        assert!(get(server.addr, "/").text().starts_with("one "));
    }
}

#[test]
fn run_a_missing_program_is_one_line_and_exit_status_3() {
    let (status, stderr) = run(
        Bin::Prefork,
        &[
            "run",
            "-b",
            "127.0.0.1:0",
            "--",
            "no-such-program-anywhere",
            "--fd",
            "{fd}",
        ],
        &[],
    );
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert_eq!(
        stderr.trim(),
        "prefork: error: cannot run 'no-such-program-anywhere': no such executable in PATH"
    );
    // An application that cannot be imported: uvicorn exits 3, and no worker ever booted. The
    // readiness timer is longer than uvicorn takes to fail on a loaded machine: a program that
    // fails after it is taken as ready is a crash, replaced with backoff, not a failed boot.
    let uvicorn = pyenv("uvicorn");
    let (status, stderr) = run(
        Bin::Prefork,
        &["run", "-w", "2", "-b", "127.0.0.1:0", "--"],
        &[],
    );
    assert_eq!(status.code(), Some(2), "no program: {stderr}");
    let program = [
        uvicorn.to_str().unwrap(),
        "nosuchmodule:app",
        "--fd",
        "{fd}",
    ];
    let mut args = vec![
        "run",
        "-w",
        "2",
        "-b",
        "127.0.0.1:0",
        "--ready-after",
        "60s",
        "--",
    ];
    args.extend(program);
    let (status, stderr) = run(Bin::Prefork, &args, &[]);
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("Could not import module"), "{stderr}");
    assert!(
        stderr.contains("prefork: error: worker 1 failed to boot (exit status 3)")
            || stderr.contains("prefork: error: worker 2 failed to boot (exit status 3)"),
        "{stderr}"
    );
    // Options about serving HTTP are refused: they would mean nothing to the program.
    let (status, stderr) = run(Bin::Prefork, &["run", "--threads", "4", "--", "true"], &[]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("'--threads'"), "{stderr}");
}

#[test]
fn run_passes_the_sockets_as_systemd_does_and_prefixes_output() {
    let dir = tempfile::tempdir().unwrap();
    let version = dir.path().join("version");
    std::fs::write(&version, "one").unwrap();
    let server = notify_server(&["-w", "2", "--prefix-output"], &version, "0").start();
    // The script checks LISTEN_PID and LISTEN_FDS itself, and serves on descriptor 3.
    let workers: std::collections::HashSet<String> = (0..20)
        .map(|_| {
            get(server.addr, "/")
                .text()
                .split(' ')
                .nth(1)
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(workers.iter().all(|w| w == "1" || w == "2"), "{workers:?}");
    // Its standard error, each line prefixed with the slot (the test reads the master's).
    server.wait_log("[worker 1] notify_server: worker 1 serving one", PATIENCE);
    server.wait_log("[worker 2] notify_server: worker 2 serving one", PATIENCE);
}

#[test]
fn run_a_program_that_stops_beating_is_killed_and_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let version = dir.path().join("version");
    std::fs::write(&version, "one").unwrap();
    let server = notify_server(&["-w", "1", "--timeout", "2s"], &version, "0")
        .env("BEAT_ONCE", "1")
        .start();
    let hung = server.workers();
    server.wait_log("beat once, now hanging", PATIENCE);
    server.wait_log("sent no heartbeat", PATIENCE);
    let replaced = server.wait_workers(1, &hung);
    assert_ne!(replaced, hung);
    assert!(
        hung.iter().all(|w| !process_group_alive(*w)),
        "the hung program's group survived"
    );
}

#[test]
fn run_a_quick_stop_kills_a_program_that_ignores_it_after_one_second() {
    let app = app_dir();
    let mut server = uvicorn(&["-w", "1"], app.path()).start();
    let workers = server.workers();
    let _ws = websocket(&server);
    let int = Instant::now();
    server.signal(Signal::SIGINT);
    let (status, _) = server.expect_exit(Duration::from_secs(1) + MARGIN + PATIENCE);
    assert!(status.success(), "{status:?}");
    let took = int.elapsed();
    assert!(
        took < Duration::from_secs(1) + MARGIN,
        "stopped after {took:?}"
    );
    assert!(groups_gone(&workers));
}

#[test]
fn run_programs_drop_privileges_and_the_master_keeps_them() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "dropping privileges needs root: run the suite as root (CI does)"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let version = dir.path().join("version");
    std::fs::write(&version, "one").unwrap();
    let options = ["-w", "2", "--user", "nobody", "--group", "nogroup"];
    let server = notify_server(&options, &version, "0").start();
    let (nobody, nogroup) = nobody_ids();
    assert_runs_as(server.pid(), 0, 0, false);
    for program in server.workers() {
        assert_runs_as(program, nobody, nogroup, true);
    }
    assert!(get(server.addr, "/").text().starts_with("one "));
}

#[test]
fn run_a_node_server_serves_on_descriptor_3_and_drains_on_term() {
    let script = programs_dir().join("server.js");
    let mut server = run_builder(&["-w", "2"], &["node", script.to_str().unwrap()]).start();
    server.wait_log("worker 1 listening on fd 3", PATIENCE);
    server.wait_log("worker 2 listening on fd 3", PATIENCE);
    assert!(get(server.addr, "/").text().starts_with("node "));
    let mut slow = Conn::connect(server.addr).unwrap();
    slow.send(b"GET /?ms=1000 HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    server.signal(Signal::SIGTERM);
    let response = slow
        .read_response(false)
        .expect("the request in flight at TERM");
    assert_eq!(response.status, 200);
    let (status, _) = server.expect_exit(PATIENCE);
    assert!(status.success(), "{status:?}\n{}", server.log());
}
