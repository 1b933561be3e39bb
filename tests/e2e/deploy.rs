//! Deployment: systemd's notification protocol and socket activation, PID 1 in a container,
//! privileges, the pid file, unix socket files.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::http::{self, Conn};
use super::load::Load;
use super::support::procfs::{accept_queue, children_of, status_line, zombies_of};
use super::support::server::run_wrapped;
use super::support::{Bin, PATIENCE, Server, run};

/// A fake `NOTIFY_SOCKET`: every datagram the server sends, with the time it arrived.
pub(super) struct Notifications {
    rx: mpsc::Receiver<(Instant, String)>,
    _dir: tempfile::TempDir,
    pub(super) path: std::path::PathBuf,
}

impl Notifications {
    pub(super) fn new() -> Notifications {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                if tx.send((Instant::now(), text)).is_err() {
                    break;
                }
            }
        });
        Notifications {
            rx,
            _dir: dir,
            path,
        }
    }

    /// The next message that contains `needle`; the ones before it are returned too.
    pub(super) fn until(&self, needle: &str) -> (Instant, String, Vec<String>) {
        let deadline = Instant::now() + PATIENCE;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok((at, text)) if text.contains(needle) => return (at, text, skipped),
                Ok((_, text)) => skipped.push(text),
                Err(_) => panic!("no notification with {needle:?}; got {skipped:#?}"),
            }
        }
    }
}

#[test]
fn systemd_hears_ready_reloading_and_stopping_in_order() {
    let notes = Notifications::new();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prefork.toml");
    std::fs::write(&config, "keepalive = \"5s\"\n").unwrap();
    let mut server = Server::builder(Bin::Demo, 2)
        .args(&["-c", config.to_str().unwrap()])
        .env("NOTIFY_SOCKET", notes.path.to_str().unwrap())
        .start();

    // READY=1 comes once every worker is ready, never before.
    let (_, ready, before) = notes.until("READY=1");
    assert!(ready.contains("STATUS=2/2 workers ready"), "{ready}");
    assert!(before.iter().all(|m| !m.contains("READY")), "{before:#?}");

    // A reload: RELOADING=1 with the monotonic time, then READY=1 once it is done.
    server.signal(Signal::SIGHUP);
    let (_, reloading, _) = notes.until("RELOADING=1");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    let (_, done, _) = notes.until("READY=1");
    assert!(done.contains("STATUS=2/2 workers ready"), "{done}");
    server.wait_log("reload complete", PATIENCE);

    // A failed reload ends with READY=1 too, and a status that says so.
    std::fs::write(&config, "keepalive = \"forever\"\n").unwrap();
    server.signal(Signal::SIGHUP);
    notes.until("RELOADING=1");
    let (_, failed, _) = notes.until("READY=1");
    assert!(failed.contains("STATUS=reload failed: "), "{failed}");
    assert!(failed.contains("keepalive"), "{failed}");

    // STOPPING=1 is the first thing a stop does: it comes while a request is still in flight,
    // not once the drain is over.
    let addr = server.addr;
    let slow = thread::spawn(move || {
        let response = Conn::connect(addr).unwrap().get("/sleep?ms=1000");
        (response, Instant::now())
    });
    server.wait_log("/sleep: waiting", PATIENCE);
    server.signal(Signal::SIGTERM);
    let (stopping_at, stopping, _) = notes.until("STOPPING=1");
    let (response, answered_at) = slow.join().unwrap();
    assert_eq!(
        response.expect("the request in flight completes").status,
        200
    );
    assert!(
        stopping_at < answered_at,
        "STOPPING=1 came only after the drain: {stopping}"
    );
    // The drain may outlast a short TimeoutStopSec: systemd is asked to wait for it.
    let (_, extend, _) = notes.until("EXTEND_TIMEOUT_USEC=");
    let usec: u64 = extend.trim().rsplit('=').next().unwrap().parse().unwrap();
    assert!(usec > 30_000_000, "extended by only {usec} µs: {extend}");
    let (status, _) = server.expect_exit(PATIENCE);
    assert!(status.success());
}

#[test]
fn systemd_watchdog_is_pinged_at_half_its_interval() {
    let notes = Notifications::new();
    let server = Server::builder(Bin::Demo, 1)
        .env("NOTIFY_SOCKET", notes.path.to_str().unwrap())
        .env("WATCHDOG_USEC", "400000")
        .start();
    notes.until("READY=1");
    let (first, _, _) = notes.until("WATCHDOG=1");
    let (mut last, _, _) = notes.until("WATCHDOG=1");
    for _ in 0..3 {
        last = notes.until("WATCHDOG=1").0;
    }
    let each = (last - first) / 4;
    assert!(
        each >= Duration::from_millis(150) && each <= Duration::from_millis(300),
        "pinged every {each:?}, not every 200ms"
    );
    drop(server);
}

pub(super) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(super) fn systemd_socket_activate() -> &'static str {
    let path = "/usr/bin/systemd-socket-activate";
    assert!(
        std::path::Path::new(path).exists(),
        "{path} is missing: install Debian's systemd package (.ci/run does)"
    );
    path
}

/// `systemd-socket-activate` starts the server when the first client connects, as systemd
/// does for a socket unit: that first client waits in the queue and is served.
#[test]
fn socket_activation_by_systemd_socket_activate_serves() {
    let listen = format!("127.0.0.1:{}", free_port());
    let addr: std::net::SocketAddr = listen.parse().unwrap();
    let first_client = thread::spawn(move || {
        let until = Instant::now() + PATIENCE;
        loop {
            match http::try_get(addr, "/") {
                Err(http::Failure::Refused) if Instant::now() < until => {
                    // The polling interval: nothing listens yet, and a refusal is no event.
                    thread::sleep(Duration::from_millis(10));
                }
                other => return other,
            }
        }
    });
    let mut server = Server::wrapped(&[systemd_socket_activate(), "-l", &listen], Bin::Demo, 2)
        .without_bind()
        .start();
    let first = first_client
        .join()
        .unwrap()
        .expect("the client that started it is served");
    assert_eq!(first.status, 200);
    let line = server.wait_log("listening on", PATIENCE);
    assert!(
        line.contains(&format!("http://{listen} (from systemd)")),
        "{line}"
    );
    assert_eq!(
        server.count_log("listening on"),
        1,
        "the default address was bound too"
    );
    for _ in 0..10 {
        assert_eq!(http::get(server.addr, "/").status, 200);
    }
    server.signal(Signal::SIGTERM);
    let (status, _) = server.expect_exit(PATIENCE);
    assert!(status.success());
}

/// systemd holds the listening socket across a restart: clients that connect while no
/// server runs wait in its queue and are served by the next one. Nothing is refused or lost.
#[test]
fn a_restart_under_socket_activation_refuses_nothing() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;

    let _pad = std::fs::File::open("/dev/null").unwrap();
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap();
    let fd = holder.as_raw_fd();
    let start = || {
        // LISTEN_PID must be the server's own pid, known only once it runs: the shell sets it
        // to its own and execs, keeping the pid. The socket goes to fd 3, as systemd puts it.
        let script = "LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=http exec \"$0\" \"$@\"";
        let mut builder = Server::wrapped(&["sh", "-c", script], Bin::Demo, 2).without_bind();
        // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
        unsafe {
            builder.command().pre_exec(move || {
                if fd == 3 {
                    nix::fcntl::fcntl(
                        std::os::fd::BorrowedFd::borrow_raw(3),
                        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
                    )?;
                } else {
                    // nix hands back fd 3 as an OwnedFd; it must outlive the exec, not close.
                    let socket = nix::unistd::dup2_raw(std::os::fd::BorrowedFd::borrow_raw(fd), 3)?;
                    std::mem::forget(socket);
                }
                Ok(())
            });
        }
        builder.start()
    };
    let mut first = start();
    assert_eq!(first.addr, addr);
    const CLIENTS: usize = 16;
    let load = Load::keepalive(addr, CLIENTS, "/");
    load.wait_each_served();
    first.signal(Signal::SIGTERM);
    let (status, _) = first.expect_exit(PATIENCE);
    assert!(status.success());
    // Nobody accepts now; every client queues in the socket the holder keeps open.
    first.wait_until(format!("{CLIENTS} clients in the accept queue"), || {
        (accept_queue(addr) == Some(CLIENTS)).then_some(())
    });
    let served_by_first = load.served();
    let mut second = start();
    // The second server answers every queued client, and the load goes on.
    load.wait_served(served_by_first + 2 * CLIENTS as u64);
    second.signal(Signal::SIGTERM);
    load.signalled();
    let (status, _) = second.expect_exit(PATIENCE);
    assert!(status.success());
    drop(holder);
    let tally = load.finish();
    tally.assert_nothing_lost("restart under socket activation");
    // Until the second stop, no connection was refused: the socket never closed.
    assert!(second.count_log("draining") > 0);
}

/// In a new PID namespace the master is PID 1: it reaps every orphan the application leaves,
/// and it stops on TERM like anywhere else.
#[test]
fn as_pid_1_the_master_reaps_orphans_and_handles_term() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "a new PID namespace needs root (CI runs as root)"
    );
    let mut server = Server::wrapped(
        &["unshare", "--pid", "--fork", "--kill-child"],
        Bin::Demo,
        2,
    )
    .args(&["--log-level", "debug"])
    .start();
    let master = children_of(server.pid())[0];
    for _ in 0..10 {
        let body = http::get(server.addr, "/orphan").text();
        assert!(body.starts_with("orphan "), "{body}");
    }
    // The orphans sleep 200 ms, then exit; the master itself reaps them, re-parented to it,
    // PID 1, and none stays a zombie.
    server.wait_log_count("not a worker", 10, PATIENCE);
    let zombies = zombies_of(master);
    assert!(zombies.is_empty(), "zombies left under PID 1: {zombies:?}");
    nix::sys::signal::kill(master, Signal::SIGTERM).unwrap();
    let (status, _) = server.expect_exit(PATIENCE);
    assert!(status.success(), "{status:?}");
}

/// A process's ids from a line of `/proc/PID/status` (`Uid:`, `Gid:`, `Groups:`).
fn ids(pid: Pid, key: &str) -> Vec<u32> {
    let line = status_line(pid, key).unwrap_or_else(|| panic!("{pid}: no {key}"));
    line.split_whitespace()
        .skip(1)
        .map(|id| id.parse().unwrap())
        .collect()
}

/// Asserts that `pid` runs as `uid`/`gid` (real, effective, saved and filesystem ids), with no
/// supplementary group but `gid`, and whether it has no-new-privs.
/// The uid of `nobody` and the gid of `nogroup`, the user and group the tests drop to.
pub(super) fn nobody_ids() -> (u32, u32) {
    let user = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let group = nix::unistd::Group::from_name("nogroup").unwrap().unwrap();
    (user.uid.as_raw(), group.gid.as_raw())
}

pub(super) fn assert_runs_as(pid: Pid, uid: u32, gid: u32, no_new_privs: bool) {
    assert_eq!(ids(pid, "Uid:"), [uid; 4], "{pid}: uids");
    assert_eq!(ids(pid, "Gid:"), [gid; 4], "{pid}: gids");
    if uid != 0 {
        let groups = ids(pid, "Groups:");
        assert!(groups.iter().all(|g| *g == gid), "{pid}: groups {groups:?}");
    }
    let flag = if no_new_privs { "1" } else { "0" };
    assert_eq!(
        status_line(pid, "NoNewPrivs:").as_deref(),
        Some(format!("NoNewPrivs:\t{flag}").as_str()),
        "{pid}"
    );
}

/// A port below 1024 that nothing listens on now, on 127.0.0.1.
fn free_privileged_port() -> u16 {
    (600..1024)
        .find(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .expect("no free port below 1024 on 127.0.0.1")
}

/// Runs `command` with a worker's credentials (its uid, gid, groups, no-new-privs), bounded by
/// timeout(1); returns whether it succeeded, and its stderr.
fn as_worker(worker: Pid, command: &[&str]) -> (bool, String) {
    let uid = ids(worker, "Uid:")[0].to_string();
    let gid = ids(worker, "Gid:")[0].to_string();
    let groups: Vec<String> = ids(worker, "Groups:")
        .iter()
        .map(ToString::to_string)
        .collect();
    let output = std::process::Command::new("timeout")
        .args(["10", "setpriv", "--reuid", &uid, "--regid", &gid])
        .args(["--groups", &groups.join(","), "--no-new-privs", "--"])
        .args(command)
        .output()
        .expect("setpriv (util-linux) runs");
    assert_ne!(output.status.code(), Some(124), "{command:?} timed out");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// With `--user` and `--group` the master keeps root and each worker drops to them after the
/// fork: so the master can still bind a port below 1024 on a reload (which executes the binary
/// on disk in its pid), and remove its pid file at exit, while a worker can neither signal
/// nor inspect it.
#[test]
fn workers_drop_privileges_and_the_master_keeps_them() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "dropping privileges needs root: run the suite as root (CI does)"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.path().join("index.html"), "hi").unwrap();
    let socket = dir.path().join("p.sock");
    let pidfile = dir.path().join("prefork.pid");
    let config = dir.path().join("prefork.toml");
    let binds = |extra: &str| {
        format!(
            "bind = [\"127.0.0.1:0\", \"unix:{}\"{extra}]\n",
            socket.display()
        )
    };
    std::fs::write(&config, binds("")).unwrap();
    let mut server = Server::builder(Bin::Prefork, 2)
        .args(&["-c", config.to_str().unwrap()])
        .args(&[
            "--user",
            "nobody",
            "--group",
            "nogroup",
            "--bind-mode",
            "660",
        ])
        .args(&["--pid", pidfile.to_str().unwrap()])
        .args(&["--root", dir.path().to_str().unwrap()])
        .without_bind()
        .start();
    let (nobody, nogroup) = nobody_ids();
    let master = server.pid();
    assert_runs_as(master, 0, 0, false);
    let workers = server.workers();
    assert_eq!(workers.len(), 2);
    for worker in &workers {
        assert_runs_as(*worker, nobody, nogroup, true);
    }
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660);
    assert_eq!((meta.uid(), meta.gid()), (nobody, nogroup));
    assert_eq!(http::get(server.addr, "/").text(), "hi");

    // With a worker's credentials, the master can be neither signalled nor inspected (its
    // environment is behind the kernel's ptrace access check). As a control, the same
    // credentials may signal the worker itself.
    let target = master.to_string();
    let (killed, stderr) = as_worker(workers[0], &["kill", "-0", &target]);
    assert!(!killed, "a worker's user could signal the master");
    assert!(stderr.contains("not permitted"), "{stderr}");
    let environ = format!("/proc/{master}/environ");
    let (read, stderr) = as_worker(workers[0], &["cat", &environ]);
    assert!(!read, "a worker's user could read the master's environment");
    assert!(stderr.contains("denied"), "{stderr}");
    let (own, stderr) = as_worker(workers[0], &["kill", "-0", &workers[0].to_string()]);
    assert!(own, "{stderr}");

    // A reload binds a port only root may bind; the new image is root like the old one.
    let port = free_privileged_port();
    std::fs::write(&config, binds(&format!(", \"127.0.0.1:{port}\""))).unwrap();
    server.signal(Signal::SIGHUP);
    server.wait_log("reload complete", PATIENCE);
    let privileged = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(http::get(privileged, "/").text(), "hi");
    assert_eq!(server.pid(), master);
    assert_runs_as(master, 0, 0, false);
    for worker in server.wait_workers(2, &workers) {
        assert_runs_as(worker, nobody, nogroup, true);
    }

    // The master removes what it made as root.
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap().trim(),
        master.to_string()
    );
    server.signal(Signal::SIGTERM);
    let (status, _) = server.expect_exit(PATIENCE);
    assert!(status.success(), "{status:?}");
    assert!(!pidfile.exists(), "the pid file was left behind");
    assert!(!socket.exists(), "the socket file was left behind");
}

/// A master that is not root cannot start workers as another user or group: bad input, found
/// before anything is bound, by `check` too.
#[test]
fn a_master_that_is_not_root_refuses_another_user_or_group() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "starting as another user needs root: run the suite as root (CI does)"
    );
    let as_nobody = [
        "setpriv",
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
    ];
    let refused = |args: &[&str], env: &[(&str, &str)], expected: &str| {
        let (status, stderr) = run_wrapped(&as_nobody, Bin::Prefork, args, env);
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    };
    let another_user = "user 'root' (from --user): only root can run workers as another user";
    refused(
        &["serve", "--bind", "127.0.0.1:0", "--user", "root"],
        &[],
        another_user,
    );
    refused(&["check", "--user", "root"], &[], another_user);
    refused(
        &["serve", "--bind", "127.0.0.1:0"],
        &[("PREFORK_GROUP", "root")],
        "group 0 (from environment variable PREFORK_GROUP): only root can run workers as \
         another group",
    );
    refused(
        &["check", "--user", "nobody", "--group", "root"],
        &[],
        "group 0 (from --group)",
    );
    // Its own user and group are no switch at all.
    let (status, stderr) = run_wrapped(
        &as_nobody,
        Bin::Prefork,
        &["check", "--user", "nobody", "--group", "nogroup"],
        &[],
    );
    assert!(status.success(), "{stderr}");
}

#[test]
fn unknown_users_and_groups_are_bad_input() {
    let (status, stderr) = run(Bin::Prefork, &["check", "--user", "no-such-user-here"], &[]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("'no-such-user-here' for user (from --user): no such user"),
        "{stderr}"
    );
    let (status, stderr) = run(Bin::Prefork, &["check", "--group", "no-such-group"], &[]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no such group"), "{stderr}");
}

#[test]
fn the_pid_file_is_written_refused_when_taken_and_removed_at_exit() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("prefork.pid");
    // A stale file, naming no live process, is replaced.
    std::fs::write(&pidfile, "2147483000\n").unwrap();
    let mut server = Server::builder(Bin::Demo, 1)
        .args(&["--pid", pidfile.to_str().unwrap()])
        .start();
    let written = std::fs::read_to_string(&pidfile).unwrap();
    assert_eq!(written, format!("{}\n", server.pid()));
    // A second server with the same pid file stops at once, binding nothing.
    let (status, stderr) = run(
        Bin::Demo,
        &[
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--pid",
            pidfile.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("names running process {}", server.pid())),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&pidfile).unwrap(), written);
    server.signal(Signal::SIGTERM);
    let (status, _) = server.expect_exit(PATIENCE);
    assert!(status.success());
    assert!(!pidfile.exists(), "the pid file outlived the server");
}

#[test]
fn unix_sockets_get_the_umask_replace_stale_files_and_are_removed_at_exit() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("app.sock");
    // A socket file left behind by a server that died: nothing listens on it.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let bind = format!("unix:{}", socket.display());
    let mut server = Server::builder(Bin::Demo, 1)
        .args(&["--bind", "127.0.0.1:0", "--bind", &bind, "--umask", "077"])
        .start();
    let mode = std::fs::metadata(&socket).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o700, "mode {mode:o}");
    let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    use std::io::{Read, Write};
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    assert!(reply.ends_with("Hello, World!"), "{reply}");
    // A live server's socket is never taken over.
    let (status, stderr) = run(Bin::Demo, &["serve", "--bind", &bind], &[]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("another server is listening"), "{stderr}");
    server.signal(Signal::SIGTERM);
    let (status, _) = server.expect_exit(PATIENCE);
    assert!(status.success());
    assert!(!socket.exists(), "the socket file outlived the server");
}
