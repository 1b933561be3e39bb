//! Section 3: what the process model costs. Memory of the master and of each worker, idle and
//! under load; time from exec to every worker ready; time from `kill -9` of a worker to its
//! replacement serving.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::Bench;
use crate::load::{self, Generator, Mode, Spec};
use crate::report::{Row, Table, median_duration, mib, ms};
use crate::server::{self, probe};
use crate::support::procfs::{Mem, mem};
use crate::support::{PATIENCE, Server};

/// Starts timed per server.
const STARTS: usize = 5;
/// prefork restarts a worker without delay only once it has been up this long (before, the
/// slot backs off, from 100 ms); see `STABLE_AFTER` in src/master/workers.rs.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// The memory targets.
const RSS_TARGET: u64 = 4 << 20;
const READY_TARGET: Duration = Duration::from_millis(100);

pub fn process_model(b: &Bench) -> Vec<Table> {
    let n = b.workers.to_string();
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(dir.path().join("index.html"), "Hello, World!").expect("write index.html");
    let root = dir.path().to_str().expect("a UTF-8 path");
    let demo = || server::demo(b.workers, &[]);
    let statics = || server::static_prefork(b.workers, root);
    let base = || server::baseline(b.workers);
    let base_static = || server::static_baseline(b.workers, root);

    // Start-up, timed from just before exec, the three servers in turns.
    let mut demo_starts = Vec::new();
    let mut static_starts = Vec::new();
    let mut base_starts = Vec::new();
    for _ in 0..STARTS {
        demo_starts.push(Start::of(demo(), true));
        static_starts.push(Start::of(statics(), true));
        base_starts.push(Start::of(base(), false));
    }

    // Memory: idle (both binaries), then for the demo under keep-alive load and idle again.
    let settle = Duration::from_secs(1);
    let mut memory = Table::new(format!(
        "3a. Cost of the process model, memory: prefork's master and {n} workers vs the \
         baseline's one process serving the same app"
    ));
    {
        let (pre, base) = (statics(), base_static());
        pre.wait_log("worker(s) ready", PATIENCE);
        std::thread::sleep(settle);
        let (pre_idle, base_idle) = (mems(&pre.processes()), mems(&[base.pid()]));
        memory_rows(
            &mut memory,
            "prefork binary (static), idle",
            &pre_idle,
            base_idle[0].1,
            Rows::Targets,
        );
    }
    let pre = demo();
    pre.wait_log("worker(s) ready", PATIENCE);
    let base = base();
    std::thread::sleep(settle);
    let pre_idle = mems(&pre.processes());
    let base_idle = mems(&[base.pid()]);
    let under_load = |server: &Server| {
        let spec = Spec {
            addr: server.addr,
            path: "/".to_string(),
            mode: Mode::KeepAlive,
            conns: b.conns,
            warmup: b.warmup,
            duration: b.secs,
            tally: false,
            server: server.processes(),
            tls: None,
            rate: None,
        };
        load::measure(Generator::Rust, b.client_threads, &spec).peak_mem
    };
    let pre_load = under_load(&pre);
    let base_load = under_load(&base);
    std::thread::sleep(settle);
    let pre_after = mems(&pre.processes());
    let base_after = mems(&[base.pid()]);
    drop(base);
    memory_rows(
        &mut memory,
        "demo, idle",
        &pre_idle,
        base_idle[0].1,
        Rows::Targets,
    );
    memory_rows(
        &mut memory,
        "demo, under load",
        &pre_load,
        base_load[0].1,
        Rows::All,
    );
    memory_rows(
        &mut memory,
        "demo, idle after load",
        &pre_after,
        base_after[0].1,
        Rows::Short,
    );
    memory.note(
        "RSS (VmRSS) counts every resident page, so pages a worker shares with the master after \
         the fork (the binary's code, the copy-on-write heap) count in full in each process; PSS \
         divides shared pages among the processes sharing them and sums to the true total; USS \
         is what only that process holds (what killing it would free); 'anon + file' splits the \
         RSS into anonymous memory and pages of the executable and shared libraries (RssAnon, \
         RssFile in /proc/PID/status)",
    );
    memory.note(format!(
        "idle: {settle:?} after every worker is ready, before any request; 'under load': the \
         peak of 100 ms samples during {:?} of keep-alive load ({} connections) on GET /; \
         'idle after load': {settle:?} after it",
        b.secs, b.conns
    ));

    // Replacement after kill -9: first of workers that have been up long enough for an
    // immediate restart, then of a young replacement, which the crash-loop backoff delays.
    let up = pre.exec_at.elapsed();
    if up < STABLE_AFTER + Duration::from_millis(500) {
        std::thread::sleep(STABLE_AFTER + Duration::from_millis(500) - up);
    }
    let originals = pre.workers();
    let mut stable = Vec::new();
    let mut last = None;
    for victim in &originals {
        let r = replace(&pre, *victim);
        last = Some(r.new_pid);
        stable.push(r);
    }
    let young = last.map(|pid| replace(&pre, pid));
    drop(pre);

    let mut startup = Table::new(format!(
        "3b. Cost of the process model, start-up and replacement: prefork with {n} workers vs \
         starting the baseline process"
    ));
    let base_start = median_duration(&base_starts.iter().map(|s| s.first).collect::<Vec<_>>());
    for (label, starts) in [("demo", &demo_starts), ("prefork binary", &static_starts)] {
        let ready = median_duration(&starts.iter().filter_map(|s| s.ready).collect::<Vec<_>>());
        startup.row(
            Row::new(format!("{label}: exec -> all {n} workers ready (log)"))
                .value(ms(ready))
                .baseline(ms(base_start))
                .ratio(ratio_of(ready, base_start))
                .target(format!("< {}", ms(READY_TARGET)), ready < READY_TARGET),
        );
        let first = median_duration(&starts.iter().map(|s| s.first).collect::<Vec<_>>());
        startup.row(
            Row::new(format!("{label}: exec -> first response"))
                .value(ms(first))
                .baseline(ms(base_start))
                .ratio(ratio_of(first, base_start)),
        );
    }
    let pl = median_duration(&demo_starts.iter().map(|s| s.listening).collect::<Vec<_>>());
    let bl = median_duration(&base_starts.iter().map(|s| s.listening).collect::<Vec<_>>());
    startup.row(
        Row::new("demo: exec -> listening (log)")
            .value(ms(pl))
            .baseline(ms(bl))
            .ratio(ratio_of(pl, bl)),
    );
    let ready: Vec<Duration> = stable.iter().map(|r| r.ready).collect();
    let serving: Vec<Duration> = stable.iter().map(|r| r.serving).collect();
    let (rm, sm) = (median_duration(&ready), median_duration(&serving));
    startup.row(
        Row::new("demo: kill -9 of a worker up > 10 s -> replacement ready (log)")
            .value(ms(rm))
            .baseline(ms(base_start))
            .ratio(ratio_of(rm, base_start)),
    );
    startup.row(
        Row::new("demo: kill -9 of a worker up > 10 s -> replacement serving")
            .value(ms(sm))
            .baseline(ms(base_start))
            .ratio(ratio_of(sm, base_start)),
    );
    if let Some(y) = &young {
        startup.row(
            Row::new("demo: kill -9 of a worker up < 10 s -> replacement serving")
                .value(ms(y.serving))
                .baseline(ms(base_start))
                .ratio(ratio_of(y.serving, base_start)),
        );
    }
    startup.note(format!(
        "medians of {STARTS} starts each; 'ready' is when the master's 'all N worker(s) ready' \
         line was read from its stderr; 'first response' is when a request sent on a connection \
         made as soon as the address was logged was answered; the baseline column is the \
         baseline's exec -> first response, i.e. what a single-process server needs to serve \
         again after it is killed and restarted"
    ));
    startup.note(format!(
        "replacement: median of {} kills; 'serving' is when a fresh connection is first \
         answered by the new worker's pid (probing /pid every millisecond; the surviving \
         workers answer some of the probes too, so this is an upper bound); a worker that dies \
         less than 10 s after its start is restarted after the crash-loop backoff (100 ms, \
         doubling)",
        stable.len()
    ));
    vec![memory, startup]
}

/// Times of one start, from just before exec.
struct Start {
    listening: Duration,
    first: Duration,
    /// When the master said every worker is ready (prefork only).
    ready: Option<Duration>,
}

impl Start {
    fn of(server: Server, prefork: bool) -> Start {
        let first = first_response(&server);
        let ready = prefork
            .then(|| server.wait_log_after("worker(s) ready", 0, PATIENCE).0 - server.exec_at);
        Start {
            listening: server.listening_at - server.exec_at,
            first: first - server.exec_at,
            ready,
        }
    }
}

fn ratio_of(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

fn mems(pids: &[Pid]) -> Vec<(Pid, Mem)> {
    pids.iter()
        .map(|&p| (p, mem(p).unwrap_or_default()))
        .collect()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Rows {
    /// Every row, with the RSS targets.
    Targets,
    /// Every row.
    All,
    /// The workers' and the total.
    Short,
}

/// `procs`: the master first, then the workers.
fn memory_rows(table: &mut Table, when: &str, procs: &[(Pid, Mem)], base: Mem, rows: Rows) {
    let (master, workers) = procs.split_first().expect("the master");
    let master = master.1;
    let worst = workers
        .iter()
        .fold(Mem::default(), |acc, (_, m)| acc.max(*m));
    let r = |a: u64, b: u64| a as f64 / b.max(1) as f64;
    let row = |name: String, value: u64, base: u64| {
        Row::new(name)
            .value(mib(value))
            .baseline(mib(base))
            .ratio(r(value, base))
    };
    let target = |row: Row, value: u64| {
        if rows == Rows::Targets {
            row.target(format!("<= {}", mib(RSS_TARGET)), value <= RSS_TARGET)
        } else {
            row
        }
    };
    let nw = workers.len();
    // RSS rows also say how much of it is the binary's and libraries' pages.
    let rss_row = |name: String, m: Mem| {
        let split = format!(
            " (anon {:.2} + file {:.2})",
            m.rss_anon as f64 / 1048576.0,
            m.rss_file as f64 / 1048576.0
        );
        let mut r = row(name, m.rss, base.rss);
        r.value.push_str(&split);
        r
    };
    if rows != Rows::Short {
        table.row(target(
            rss_row(format!("{when}: master RSS"), master),
            master.rss,
        ));
    }
    let worst_rss = workers
        .iter()
        .map(|(_, m)| *m)
        .max_by_key(|m| m.rss)
        .unwrap_or_default();
    table.row(target(
        rss_row(format!("{when}: worker RSS (largest of {nw})"), worst_rss),
        worst_rss.rss,
    ));
    if rows != Rows::Short {
        table.row(row(format!("{when}: master USS"), master.uss, base.uss));
        table.row(row(
            format!("{when}: worker PSS (largest)"),
            worst.pss,
            base.pss,
        ));
    }
    table.row(row(
        format!("{when}: worker USS (largest)"),
        worst.uss,
        base.uss,
    ));
    let total_rss: u64 = procs.iter().map(|(_, m)| m.rss).sum();
    let total_pss: u64 = procs.iter().map(|(_, m)| m.pss).sum();
    if rows != Rows::Short {
        table.row(row(
            format!("{when}: all {} processes RSS (sum)", procs.len()),
            total_rss,
            base.rss,
        ));
    }
    table.row(row(
        format!("{when}: all {} processes PSS (sum)", procs.len()),
        total_pss,
        base.pss,
    ));
}

fn first_response(server: &Server) -> Instant {
    let (status, _) = probe(server.addr, "/", PATIENCE)
        .unwrap_or_else(|e| panic!("no first response: {e}\n{}", server.log()));
    assert_eq!(status, 200, "first response\n{}", server.log());
    Instant::now()
}

struct Replacement {
    new_pid: Pid,
    ready: Duration,
    serving: Duration,
}

/// Kills `victim` with SIGKILL and times its replacement: the master's log line saying it is
/// ready, and the first response from its pid.
fn replace(server: &Server, victim: Pid) -> Replacement {
    let old = server.workers();
    let skip = server.log_len();
    let killed_at = Instant::now();
    kill(victim, Signal::SIGKILL).expect("kill -9 a worker");
    let until = killed_at + PATIENCE;
    let (new_pid, serving_at) = loop {
        if let Ok((200, body)) = probe(server.addr, "/pid", Duration::from_secs(1))
            && let Ok(pid) = body.trim().parse::<i32>()
        {
            let pid = Pid::from_raw(pid);
            if pid != victim && !old.contains(&pid) {
                break (pid, Instant::now());
            }
        }
        assert!(
            Instant::now() < until,
            "no replacement served within {PATIENCE:?}\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    let (ready_at, _) = server.wait_log_after(&format!("(pid {new_pid}) ready"), skip, PATIENCE);
    Replacement {
        new_pid,
        ready: ready_at - killed_at,
        serving: serving_at - killed_at,
    }
}
