//! Supervision: reload, scaling, recycling, crash and hang recovery, each without losing a
//! request.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::http::{self, Conn};
use super::load::Load;
use super::support::{Bin, PATIENCE, Server, run};

fn write_config(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn twenty_reloads_under_load_lose_nothing() {
    let mut server = Server::start(Bin::Demo, 2);
    let first = server.workers();
    let load = Load::keepalive(server.addr, 16, "/");
    for n in 1..=20 {
        server.signal(Signal::SIGHUP);
        server.wait_log_count("reload complete", n, PATIENCE);
    }
    // Every old generation drains while the load goes on, the last one too: two workers each.
    server.wait_log_count("drained in", 2 * 20, PATIENCE);
    let last = server.wait_workers(2, &first);
    server.signal(Signal::SIGTERM);
    load.signalled();
    let (status, _) = server.expect_exit(PATIENCE);
    assert!(status.success());
    load.finish().assert_nothing_lost("20 reloads");
    assert_eq!(server.count_log("reload failed"), 0);
    assert!(last.iter().all(|w| !first.contains(w)));
}

#[test]
fn reload_with_a_broken_config_keeps_serving_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prefork.toml");
    write_config(&config, "workers = 2\n");
    let server = Server::builder(Bin::Demo, 2)
        .args(&["-c", config.to_str().unwrap()])
        .start();
    let before = server.wait_workers(2, &[]);
    write_config(&config, "workers = \"two\"\n");
    server.signal(Signal::SIGHUP);
    let line = server.wait_log("reload failed", PATIENCE);
    assert!(
        line.contains("workers") && line.contains("config file"),
        "{line}"
    );
    assert_eq!(server.workers(), before);
    assert_eq!(http::get(server.addr, "/").status, 200);
    // Fixed, the next reload goes through: a new generation replaces the old one. (The
    // worker count stays 2: the command line's --workers outranks the file.)
    write_config(&config, "workers = 3\ngraceful_timeout = \"5s\"\n");
    server.signal(Signal::SIGHUP);
    server.wait_log("reload complete", PATIENCE);
    server.wait_workers(2, &before);
}

#[test]
fn reload_whose_new_workers_cannot_start_keeps_the_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("fail");
    let server = Server::builder(Bin::Demo, 2)
        .env("DEMO_FAIL_IF_EXISTS", marker.to_str().unwrap())
        .start();
    let before = server.wait_workers(2, &[]);
    std::fs::write(&marker, "").unwrap();
    let load = Load::keepalive(server.addr, 8, "/");
    server.signal(Signal::SIGHUP);
    server.wait_log("reload failed", PATIENCE);
    // The old workers go on serving after the failure.
    load.wait_served(load.served() + 100);
    assert_eq!(
        server.wait_workers(2, &[]),
        before,
        "the old workers were disturbed"
    );
    assert_eq!(server.count_log(": draining"), 0, "{}", server.log());
    server.signal(Signal::SIGTERM);
    load.signalled();
    load.finish().assert_nothing_lost("failed reload");
}

#[test]
fn reload_binds_new_addresses_and_closes_dropped_ones() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prefork.toml");
    let a = dir.path().join("a.sock");
    let b = dir.path().join("b.sock");
    let binds = |paths: &[&Path]| {
        let mut list = vec!["\"127.0.0.1:0\"".to_string()];
        list.extend(paths.iter().map(|p| format!("\"unix:{}\"", p.display())));
        format!("bind = [{}]\n", list.join(", "))
    };
    write_config(&config, &binds(&[&a]));
    let server = Server::builder(Bin::Demo, 2)
        .args(&["-c", config.to_str().unwrap()])
        .without_bind()
        .start();
    assert!(unix_get(&a).starts_with("HTTP/1.1 200"));
    write_config(&config, &binds(&[&b]));
    server.signal(Signal::SIGHUP);
    server.wait_log("reload complete", PATIENCE);
    assert!(unix_get(&b).starts_with("HTTP/1.1 200"));
    assert!(!a.exists(), "the dropped socket file is still there");
    // The TCP address was kept: same port, same accept queue.
    assert_eq!(http::get(server.addr, "/").status, 200);
}

fn unix_get(path: &Path) -> String {
    let mut stream = UnixStream::connect(path).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn ttin_and_ttou_scale_but_never_below_one() {
    let server = Server::start(Bin::Demo, 2);
    let two = server.wait_workers(2, &[]);
    server.signal(Signal::SIGTTIN);
    let three = server.wait_workers(3, &[]);
    assert!(two.iter().all(|w| three.contains(w)));
    for n in 1..=4 {
        server.signal(Signal::SIGTTOU);
        // Two TTOUs pending at once count as one. WINCH, which the master only logs, is a
        // barrier: once its line is there, the TTOU sent before it has been taken too.
        server.signal(Signal::SIGWINCH);
        server.wait_log_count("ignoring SIGWINCH", n, PATIENCE);
    }
    let wanted: Vec<String> = server
        .log()
        .lines()
        .filter_map(|l| l.split_once("SIGTTOU: ").map(|(_, w)| w.to_string()))
        .collect();
    assert_eq!(wanted, ["2 worker(s) wanted", "1 worker(s) wanted"]);
    let one = server.wait_workers(1, &[]);
    assert!(three.contains(&one[0]), "the last worker was replaced");
    assert_eq!(http::get(server.addr, "/").status, 200);
    assert_eq!(server.workers(), one);
}

/// Killing one worker loses exactly the requests in flight on it; the other workers' requests
/// complete and new requests are served.
#[test]
fn a_killed_worker_loses_only_its_own_requests() {
    let server = Server::start(Bin::Demo, 2);
    let addr = server.addr;
    // Keep-alive connections, each knowing which worker serves it.
    let mut conns: Vec<(Conn, i32)> = Vec::new();
    while conns.len() < 12
        || conns
            .iter()
            .map(|c| c.1)
            .collect::<Vec<_>>()
            .windows(2)
            .all(|w| w[0] == w[1])
    {
        let mut conn = Conn::connect(addr).unwrap();
        let pid: i32 = conn.get("/pid").unwrap().text().parse().unwrap();
        conns.push((conn, pid));
        assert!(conns.len() < 200, "all connections went to one worker");
    }
    let victim = conns[0].1;
    let requests: Vec<_> = conns
        .into_iter()
        .map(|(mut conn, pid)| {
            thread::spawn(move || (pid, conn.get("/sleep?ms=1000").map(|r| r.status)))
        })
        .collect();
    server.wait_log_count("/sleep: waiting", requests.len(), PATIENCE);
    kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
    for request in requests {
        let (pid, result) = request.join().unwrap();
        if pid == victim {
            assert!(
                result.is_err(),
                "a request on the killed worker survived: {result:?}"
            );
        } else {
            assert_eq!(result, Ok(200), "a request on a healthy worker was lost");
        }
    }
    server.wait_workers(2, &[Pid::from_raw(victim)]);
    for _ in 0..20 {
        assert_eq!(http::get(addr, "/").status, 200);
    }
}

/// Workers that keep crashing right after start are restarted after growing delays, and the
/// server keeps answering meanwhile.
#[test]
fn a_crash_loop_backs_off_while_the_server_keeps_serving() {
    let server = Server::start(Bin::Demo, 2);
    for n in 1..=6 {
        let _ = http::try_get(server.addr, "/crash");
        server.wait_log_count("restarting it in", n, PATIENCE);
        // Whatever is down, a request waits in the queue and is served.
        assert_eq!(http::get(server.addr, "/").status, 200);
        server.wait_workers(2, &[]);
    }
    let mut delays: HashMap<String, Vec<Duration>> = HashMap::new();
    for line in server
        .log()
        .lines()
        .filter(|l| l.contains("restarting it in"))
    {
        let slot = line
            .split("worker ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap();
        let delay = line.rsplit("restarting it in ").next().unwrap().trim();
        let delay = if let Some(ms) = delay.strip_suffix("ms") {
            Duration::from_millis(ms.parse().unwrap())
        } else {
            Duration::from_secs_f64(delay.strip_suffix('s').unwrap().parse().unwrap())
        };
        delays.entry(slot.to_string()).or_default().push(delay);
    }
    let longest = delays.values().map(Vec::len).max().unwrap();
    assert!(longest >= 3, "six crashes over two slots: {delays:?}");
    for series in delays.values() {
        for pair in series.windows(2) {
            assert_eq!(pair[1], pair[0] * 2, "delays do not double: {delays:?}");
        }
    }
}

#[test]
fn a_worker_that_fails_to_boot_stops_the_master_with_status_3() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("fail");
    std::fs::write(&marker, "").unwrap();
    let (status, stderr) = run(
        Bin::Demo,
        &["serve", "--bind", "127.0.0.1:0", "--workers", "2"],
        &[("DEMO_FAIL_IF_EXISTS", marker.to_str().unwrap())],
    );
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("failed to boot"), "{stderr}");
}

#[test]
fn a_blocked_worker_is_replaced_but_a_slow_async_one_is_not() {
    let server = Server::builder(Bin::Demo, 1)
        .args(&["--timeout", "1s"])
        .start();
    let worker = server.wait_workers(1, &[])[0];
    // Three timeouts of waiting that leave the runtime free.
    assert_eq!(http::get(server.addr, "/sleep?ms=3000").status, 200);
    assert_eq!(server.workers(), vec![worker]);
    assert_eq!(server.count_log("no heartbeat"), 0);
    // Blocking the runtime's thread beyond the timeout is a hang.
    let started = Instant::now();
    assert!(http::try_get(server.addr, "/block?ms=10000").is_err());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "killed late: {:?}",
        started.elapsed()
    );
    server.wait_log("no heartbeat", PATIENCE);
    server.wait_workers(1, &[worker]);
    assert_eq!(http::get(server.addr, "/").status, 200);
}

#[test]
fn a_suspended_master_does_not_kill_healthy_workers_when_it_resumes() {
    let server = Server::builder(Bin::Demo, 2)
        .args(&["--timeout", "1s"])
        .start();
    let workers = server.wait_workers(2, &[]);
    server.signal(Signal::SIGSTOP);
    // Suspended for more than twice the timeout while the workers beat on: the subject.
    thread::sleep(Duration::from_millis(2500));
    server.signal(Signal::SIGCONT);
    // The subject again: a master that misread the pause as missing heartbeats would kill the
    // workers within one timeout (1 s) of resuming; watch for longer than that.
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(server.workers(), workers);
    assert_eq!(server.count_log("no heartbeat"), 0, "{}", server.log());
    assert_eq!(http::get(server.addr, "/").status, 200);
}

#[test]
fn workers_recycled_after_max_requests_lose_nothing() {
    let mut server = Server::builder(Bin::Demo, 2)
        .args(&["--max-requests", "10", "--max-requests-jitter", "5"])
        .start();
    server.wait_workers(2, &[]);
    let load = Load::keepalive(server.addr, 8, "/");
    server.wait_log_count("its replacement is ready", 5, PATIENCE);
    server.signal(Signal::SIGTERM);
    load.signalled();
    let (status, _) = server.expect_exit(PATIENCE);
    assert!(status.success());
    let tally = load.finish();
    tally.assert_nothing_lost("max requests 10");
    let recycled = server.count_log("its replacement is ready");
    assert!(
        recycled >= 5,
        "only {recycled} workers were recycled:\n{}",
        server.log()
    );
    assert!(tally.ok >= 10 * recycled as u64);
}

#[test]
fn unused_signals_are_logged_and_ignored() {
    let server = Server::start(Bin::Demo, 1);
    for sig in [Signal::SIGWINCH, Signal::SIGALRM] {
        server.signal(sig);
        server.wait_log(&format!("ignoring {sig}"), PATIENCE);
    }
    assert_eq!(http::get(server.addr, "/").status, 200);
}
