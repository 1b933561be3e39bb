//! A rolling deploy through a real load balancer: HAProxy in front of three prefork instances,
//! each in a network namespace of its own with an address of its own (as pods have), under
//! keep-alive load that talks to HAProxy only. The instances are restarted one after another:
//! TERM, wait for the exit, start a new one on the same address, wait until HAProxy's health
//! checks take it back, next instance.
//!
//! Every request the clients make counts: the load is never told of a signal, so anything but
//! a 200 (a 502 or 503 from HAProxy, a reset, a refused connection) is an error.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::load::{Load, Tally};
use super::support::procfs::accept_queue;
use super::support::server::Builder;
use super::support::{Bin, PATIENCE, Server, poll};

const INSTANCES: usize = 3;
/// Every instance listens on this port of its own address, as every pod of a Deployment does.
const PORT: u16 = 8000;
const HEALTH_PATH: &str = "/healthz";
/// Longer than HAProxy's `inter` × `fall` (200 ms × 2), with room for checks that run late on a
/// loaded machine: the instance is out of the rotation before its drain begins.
const SHUTDOWN_DELAY: &str = "2s";
const CLIENTS: usize = 6;

/// With `--shutdown-delay` longer than HAProxy takes to see the health path answer 503, a
/// rolling restart loses nothing, every restarted instance serves again, and HAProxy never
/// met a failure it had to hide: the instance left the rotation while it still served.
#[test]
fn rolling_restart_through_haproxy_loses_nothing() {
    let run = rolling_restart(0, Some(SHUTDOWN_DELAY));
    run.report(&format!("with --shutdown-delay {SHUTDOWN_DELAY}"));
    run.tally
        .assert_none_refused_or_lost("rolling restart through HAProxy with --shutdown-delay");
    assert_eq!(
        run.balancer_failures(),
        [0; 4],
        "HAProxy retried, redispatched or met failed connections or responses"
    );
}

/// The same without `--shutdown-delay`, for contrast: the drain starts, and the instance stops
/// accepting, while HAProxy still sends it traffic. HAProxy's connection retries send what the
/// stopped instance refused to another one, so the clients may well see no error (the figure
/// is printed); that HAProxy had to redispatch is what the delay saves.
#[test]
fn rolling_restart_without_shutdown_delay_for_contrast() {
    let run = rolling_restart(1, None);
    run.report("without --shutdown-delay");
    assert!(run.tally.ok > 0, "nothing served: {:?}", run.tally);
    assert!(
        run.redispatches > 0,
        "HAProxy never redispatched a request refused by a stopping instance"
    );
}

/// What one rolling restart under load gave.
struct Run {
    tally: Tally,
    /// From the first TERM until HAProxy had taken the last new instance back.
    took: Duration,
    /// HAProxy's counters for its servers, summed: retried and redispatched requests, failed
    /// connections and responses.
    retries: u64,
    redispatches: u64,
    connection_errors: u64,
    response_errors: u64,
}

impl Run {
    /// Retries, redispatches, connection and response errors, as HAProxy counted them.
    fn balancer_failures(&self) -> [u64; 4] {
        [
            self.retries,
            self.redispatches,
            self.connection_errors,
            self.response_errors,
        ]
    }

    fn report(&self, what: &str) {
        let errors = self.tally.lost + self.tally.refused;
        eprintln!(
            "rolling restart of {INSTANCES} instances through HAProxy {what}: {} served, {errors} \
             errors seen by the clients, restart took {:.1} s; HAProxy: {} retries, {} \
             redispatches, {} connection errors, {} response errors",
            self.tally.ok,
            self.took.as_secs_f64(),
            self.retries,
            self.redispatches,
            self.connection_errors,
            self.response_errors,
        );
        for loss in self.tally.losses.iter().take(10) {
            eprintln!("  error: {loss}");
        }
    }
}

/// Runs the whole sequence. `test` keeps the namespaces and addresses of tests running at the
/// same time apart.
fn rolling_restart(test: usize, shutdown_delay: Option<&str>) -> Run {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("index.html"), "hello\n").unwrap();
    // Declared before the servers, so dropped after them: a namespace goes once its last
    // process is gone, and the servers' guards kill theirs.
    let nets: Vec<Netns> = (0..INSTANCES)
        .map(|i| Netns::new(test * INSTANCES + i))
        .collect();
    let start = |net: &Netns| {
        let bind = SocketAddr::from((net.instance, PORT)).to_string();
        let mut args = vec![
            "--root",
            root.path().to_str().unwrap(),
            "--health-path",
            HEALTH_PATH,
            "-b",
            &bind,
        ];
        if let Some(delay) = shutdown_delay {
            args.extend(["--shutdown-delay", delay]);
        }
        Server::wrapped(&["ip", "netns", "exec", &net.name], Bin::Prefork, 2)
            .args(&args)
            .start()
    };
    let mut instances: Vec<Server> = nets.iter().map(start).collect();
    let haproxy = Haproxy::start(&nets);

    let load = Load::keepalive(haproxy.addr, CLIENTS, "/index.html");
    load.wait_each_served();
    let begun = Instant::now();
    for (i, net) in nets.iter().enumerate() {
        let server = format!("Server be/s{i} is");
        let before = haproxy.process.log_len();
        instances[i].signal(Signal::SIGTERM);
        let (status, _) = instances[i].expect_exit(PATIENCE);
        assert!(status.success(), "instance {i} stopped with {status}");
        // Out of the rotation first, as a pod that is replaced is: a new instance started
        // before two checks failed would never be seen to go.
        haproxy
            .process
            .wait_log_after(&format!("{server} DOWN"), before, PATIENCE);
        let down = haproxy.process.log_len();
        instances[i] = start(net);
        haproxy
            .process
            .wait_log_after(&format!("{server} UP"), down, PATIENCE);
    }
    let took = begun.elapsed();

    // The new instances serve: each server's count of sessions grows after the last one
    // came back.
    let back = haproxy.servers();
    load.wait_served(load.served() + 300);
    let now = haproxy.servers();
    for (name, counters) in &now {
        assert!(
            counters["stot"] > back[name]["stot"],
            "{name} served nothing after the restart: {now:?}"
        );
    }
    let tally = load.finish();
    let sum = |column: &str| now.values().map(|c| c[column]).sum();
    Run {
        tally,
        took,
        retries: sum("wretr"),
        redispatches: sum("wredis"),
        connection_errors: sum("econ"),
        response_errors: sum("eresp"),
    }
}

/// A network namespace with one end of a veth pair and an address of its own; the other end,
/// in the test's namespace, is the way in. Deleted with everything in it on drop.
struct Netns {
    name: String,
    /// The instance's address, inside the namespace.
    instance: Ipv4Addr,
}

impl Netns {
    /// The namespace of `slot`, with a /30 of 10.64.0.0/10 that no other test process running
    /// at the same time uses (pids differ in their low 14 bits among live processes in all
    /// but rare cases).
    fn new(slot: usize) -> Netns {
        let pid = std::process::id();
        let [_, _, high, low] = (pid % (1 << 14)).to_be_bytes();
        let base = [10, 64 + high, low, u8::try_from(slot * 4).unwrap()];
        let host = Ipv4Addr::from([base[0], base[1], base[2], base[3] + 1]);
        let instance = Ipv4Addr::from([base[0], base[1], base[2], base[3] + 2]);
        // Interface names have at most 15 bytes.
        let (outside, inside) = (format!("pf{pid}o{slot}"), format!("pf{pid}i{slot}"));
        let name = format!("prefork-test-{pid}-{slot}");
        ip(&["netns", "add", &name]);
        let net = Netns { name, instance };
        ip(&[
            "link", "add", &outside, "type", "veth", "peer", "name", &inside,
        ]);
        ip(&["link", "set", &inside, "netns", &net.name]);
        ip(&["addr", "add", &format!("{host}/30"), "dev", &outside]);
        ip(&["link", "set", &outside, "up"]);
        let within = ["-n", net.name.as_str()];
        ip(&[
            &within[..],
            &["addr", "add", &format!("{instance}/30"), "dev", &inside],
        ]
        .concat());
        ip(&[&within[..], &["link", "set", &inside, "up"]].concat());
        ip(&[&within[..], &["link", "set", "lo", "up"]].concat());
        net
    }
}

impl Drop for Netns {
    /// The veth pair goes with the namespace, once no process is left in it.
    fn drop(&mut self) {
        ip(&["netns", "del", &self.name]);
    }
}

/// Runs `ip` with `args`, failing the test if it fails or takes longer than [`PATIENCE`].
fn ip(args: &[&str]) {
    let mut child = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .spawn()
        .expect("run ip (Debian package iproute2)");
    let status = poll(PATIENCE, Duration::from_millis(5), || {
        child.try_wait().unwrap()
    });
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("ip {args:?} did not finish within {PATIENCE:?}");
    };
    assert!(status.success(), "ip {args:?}: {status}");
}

/// HAProxy in the foreground, under the same guard as a server, with its config and stats
/// socket in a directory of its own.
struct Haproxy {
    process: Server,
    addr: SocketAddr,
    stats: PathBuf,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    fn start(nets: &[Netns]) -> Haproxy {
        let dir = tempfile::tempdir().unwrap();
        let stats = dir.path().join("stats.sock");
        let config = dir.path().join("haproxy.cfg");
        // A free port: the kernel picks one, and it is given up for HAProxy to bind.
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        std::fs::write(&config, config_text(addr, &stats, nets)).unwrap();
        // Warnings, which include every server going DOWN or UP, go to standard error in the
        // foreground (`-db`).
        let process = Builder::wrapped_path(&[], Path::new("haproxy"))
            .without_bind()
            .args(&["-db", "-f", config.to_str().unwrap()])
            .spawn_program();
        process.wait_until("HAProxy listening", || accept_queue(addr));
        Haproxy {
            process,
            addr,
            stats,
            _dir: dir,
        }
    }

    /// The counters of every server of the backend (`show stat` on the stats socket), by
    /// server name and column name.
    fn servers(&self) -> HashMap<String, HashMap<String, u64>> {
        let mut socket = UnixStream::connect(&self.stats).expect("HAProxy's stats socket");
        socket.set_read_timeout(Some(PATIENCE)).unwrap();
        socket.write_all(b"show stat\n").unwrap();
        // HAProxy closes the socket after answering one command.
        let mut csv = String::new();
        socket.read_to_string(&mut csv).unwrap();
        let mut lines = csv.lines();
        let header: Vec<&str> = lines
            .next()
            .and_then(|h| h.strip_prefix("# "))
            .unwrap_or_else(|| panic!("no header in show stat: {csv}"))
            .split(',')
            .collect();
        lines
            .map(|line| line.split(',').collect::<Vec<_>>())
            .filter(|row| row[0] == "be" && !["BACKEND", "FRONTEND"].contains(&row[1]))
            .map(|row| {
                let counters = header
                    .iter()
                    .zip(&row)
                    .filter_map(|(name, value)| Some((name.to_string(), value.parse().ok()?)))
                    .collect();
                (row[1].to_string(), counters)
            })
            .collect()
    }
}

/// HAProxy's configuration; the settings that matter to a deploy that loses nothing are
/// explained where they are set.
fn config_text(addr: SocketAddr, stats: &Path, nets: &[Netns]) -> String {
    let servers: String = nets
        .iter()
        .enumerate()
        .map(|(i, net)| format!("    server s{i} {}:{PORT} check\n", net.instance))
        .collect();
    format!(
        "\
global
    stats socket {stats} mode 600 level admin

defaults
    mode http
    # Keep-alive on both sides, HAProxy's default: the clients keep their connections to HAProxy
    # across the restarts, and HAProxy keeps idle connections to the instances and reuses them,
    # as a production balancer does. So the test covers a draining instance's idle keep-alive
    # connections. (option http-server-close would open a connection per request to the
    # instances: thousands of TIME_WAIT sockets at this rate, and no idle connection to drain.)
    option http-keep-alive
    # The default: a client's first request never goes on a connection another client left idle.
    http-reuse safe
    # Only a connection attempt that failed is retried (the default retry-on conn-failure), on
    # another instance if it fails again (redispatch): the instance never had that request, so
    # retrying hides nothing. Not retry-on empty-response or all-retryable-errors: they would
    # replay requests an instance accepted and then dropped, the very losses this test counts.
    retries 3
    option redispatch 1
    # Far longer than any request of the test: no timeout ends a connection during the run.
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s
    timeout check 1s

frontend fe
    bind {addr}
    default_backend be

backend be
    balance roundrobin
    # The instance is taken out after two failed checks 200 ms apart (about 400 ms after its
    # health path starts answering 503), and back after two that pass.
    option httpchk GET {HEALTH_PATH}
    http-check expect status 200
    default-server inter 200ms fall 2 rise 2
{servers}",
        stats = stats.display(),
    )
}
