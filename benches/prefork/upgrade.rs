//! Section 6: deploying new code under load. The demo runs from a copy the benchmark owns; each
//! round measures latency at rest, then puts a fresh copy over the path (by rename: a new
//! inode) and sends HUP, and measures the upgrade: HUP to the new generation serving, latency
//! while it happens against latency at rest, and requests lost.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};

use crate::Bench;
use crate::load::{self, Generator, Mode, Spec, Stats};
use crate::report::{Row, Table, median, median_duration, ms, rate, ratio};
use crate::server::probe;
use crate::support::{Bin, PATIENCE, Server};

/// The measured window begins this long before HUP, so that requests in flight when the
/// signal arrives are counted (the generator counts only requests sent inside the window).
const LEAD: Duration = Duration::from_millis(100);
/// wrk runs no warm-up here (that would be a second process, with a start we cannot time): HUP
/// waits this long for it to connect, then [`LEAD`].
const WRK_CONNECT: Duration = Duration::from_millis(200);
/// The target: p99 during the upgrade below this multiple of p99 at rest.
const P99_TARGET: f64 = 2.0;
/// How often `/exe` is asked, on a fresh connection, until the new binary answers.
const PROBE_EVERY: Duration = Duration::from_millis(1);

/// What one round found.
struct Round {
    rest: Stats,
    during: Stats,
    /// From just before HUP to the master's `took over` line (the new image running).
    took_over: Duration,
    /// To the `reload complete` line: the new generation serving.
    complete: Duration,
    /// To the first `/exe` answer naming the new binary's inode.
    first_new: Option<Duration>,
    /// To the last of the old workers' `exited with status 0` lines.
    drained: Duration,
    /// `/exe` probes that were not answered with 200.
    probe_errors: u64,
}

pub fn upgrade(b: &Bench) -> Table {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let exe = dir.path().join("demo");
    let inode = put_in_place(&stage(&exe), &exe);
    let server = Server::wrapped_path(&[], &exe, b.workers).start();
    let master = server.pid();
    // Without the demo's /exe route (older demos), no first-response figure.
    let exe_route = matches!(probe(server.addr, "/exe", PATIENCE),
        Ok((200, body)) if body.trim() == inode.to_string());
    let window = b.secs.max(LEAD * 2);
    let (warmup, hup_after) = match b.generator {
        Generator::Rust => (b.warmup, b.warmup + LEAD),
        Generator::Wrk => (Duration::ZERO, WRK_CONNECT + LEAD),
    };
    let spec = |warmup: Duration| Spec {
        addr: server.addr,
        path: "/".to_string(),
        mode: Mode::KeepAlive,
        conns: b.conns,
        warmup,
        duration: window,
        tally: false,
        // Nothing sampled: the processes change during the upgrade, and at rest the sampling
        // would only make the two measurements differ.
        server: Vec::new(),
        tls: None,
        rate: None,
    };

    let mut rounds = Vec::new();
    for _ in 0..b.rounds {
        let rest = load::measure(b.generator, b.client_threads, &spec(b.warmup));
        // Staged before the window, so that copying the binary weighs on neither measurement.
        let staged = stage(&exe);
        let old = server.workers();
        let skip = server.log_len();
        let (during, hup, new_inode, probes) = std::thread::scope(|scope| {
            let start = Instant::now();
            let loaded =
                scope.spawn(|| load::measure(b.generator, b.client_threads, &spec(warmup)));
            std::thread::sleep((start + hup_after).saturating_duration_since(Instant::now()));
            let new_inode = put_in_place(&staged, &exe);
            let hup = Instant::now();
            kill(master, Signal::SIGHUP).expect("HUP the master");
            let probes = exe_route.then(|| first_new(server.addr, new_inode, hup));
            let during = loaded.join().expect("the load panicked");
            (during, hup, new_inode, probes)
        });
        let at = |needle: &str| server.wait_log_after(needle, skip, PATIENCE);
        let (took_over_at, line) = at("took over");
        // The upgrade keeps the master's pid: the new image says which it runs in.
        assert!(
            line.contains(&format!(
                "master (pid {master}) took over {} worker(s)",
                old.len()
            )),
            "the master's pid or its workers changed across the upgrade: {line:?}\n{}",
            server.log()
        );
        let running = std::fs::metadata(format!("/proc/{master}/exe")).map(|m| m.ino());
        assert_eq!(
            running.ok(),
            Some(new_inode),
            "pid {master} does not run the new binary\n{}",
            server.log()
        );
        let complete_at = at("reload complete").0;
        let drained_at = old
            .iter()
            .map(|pid| at(&format!("(pid {pid}) exited with status 0")).0)
            .max()
            .unwrap_or(complete_at);
        server.wait_workers(b.workers, &old);
        rounds.push(Round {
            rest,
            during,
            took_over: took_over_at - hup,
            complete: complete_at - hup,
            first_new: probes.and_then(|p| p.0),
            drained: drained_at - hup,
            probe_errors: probes.map_or(0, |p| p.1),
        });
    }
    drop(server);
    table(b, window, LEAD, exe_route, &rounds)
}

/// A fresh copy of the built demo next to `exe`, as a deploy stages a new binary.
fn stage(exe: &Path) -> PathBuf {
    let staged = exe.with_extension("new");
    std::fs::copy(Bin::Demo.path(), &staged).expect("copy the demo");
    staged
}

/// Renames `staged` over `exe`, as a deploy does: a new file at the path (a new inode), while
/// the running image keeps the old one. The new inode.
fn put_in_place(staged: &Path, exe: &Path) -> u64 {
    std::fs::rename(staged, exe).expect("put the new binary in place");
    std::fs::metadata(exe).expect("the new binary").ino()
}

/// Asks `/exe` on fresh connections from `hup` until the binary with `inode` answers: when it
/// first did (`None` if not within [`PATIENCE`]), and how many probes were not answered with
/// 200.
fn first_new(addr: std::net::SocketAddr, inode: u64, hup: Instant) -> (Option<Duration>, u64) {
    let inode = inode.to_string();
    let mut errors = 0;
    loop {
        match probe(addr, "/exe", Duration::from_secs(2)) {
            Ok((200, body)) if body.trim() == inode => return (Some(hup.elapsed()), errors),
            Ok((200, _)) => {}
            _ => errors += 1,
        }
        if hup.elapsed() > PATIENCE {
            return (None, errors);
        }
        std::thread::sleep(PROBE_EVERY);
    }
}

fn table(b: &Bench, window: Duration, lead: Duration, exe_route: bool, rounds: &[Round]) -> Table {
    let mut table = Table::new(format!(
        "6. Upgrade: a new binary copied over the path and HUP, prefork (demo app, --workers \
         {}) under keep-alive load ({} connections); latency in the upgrade window against \
         latency at rest just before",
        b.workers, b.conns
    ));
    let times = |f: fn(&Round) -> Duration| -> Vec<Duration> { rounds.iter().map(f).collect() };
    let med_max = |d: &[Duration]| {
        let max = d.iter().max().copied().unwrap_or_default();
        format!("{} / {}", ms(median_duration(d)), ms(max))
    };
    table.row(
        Row::new("HUP -> new image took over the workers (log), median / max")
            .value(med_max(&times(|r| r.took_over))),
    );
    table.row(
        Row::new("HUP -> reload complete, new generation serving (log), median / max")
            .value(med_max(&times(|r| r.complete))),
    );
    if exe_route {
        let firsts: Vec<Duration> = rounds.iter().filter_map(|r| r.first_new).collect();
        let missed = rounds.len() - firsts.len();
        let mut value = med_max(&firsts);
        if missed > 0 {
            value.push_str(&format!(" ({missed} round(s) never)"));
        }
        table.row(
            Row::new("HUP -> first response from the new binary (/exe), median / max").value(value),
        );
    }
    table.row(
        Row::new("HUP -> last old worker exited with status 0 (log), median / max")
            .value(med_max(&times(|r| r.drained))),
    );
    // The upgrade window against the measurement at rest before it: the medians over the
    // rounds, and the median of per-round ratios.
    let vs_rest = |name: &str, f: fn(&Stats) -> f64, show: fn(f64) -> String| {
        let med = |side: fn(&Round) -> &Stats| {
            median(&rounds.iter().map(|r| f(side(r))).collect::<Vec<_>>())
        };
        let ratios: Vec<f64> = rounds.iter().map(|r| f(&r.during) / f(&r.rest)).collect();
        let r = median(&ratios);
        let row = Row::new(format!("{name}, upgrade window (baseline: at rest)"))
            .value(show(med(|r| &r.during)))
            .baseline(show(med(|r| &r.rest)))
            .ratio(r);
        (row, r)
    };
    let latency = |secs: f64| ms(Duration::from_secs_f64(secs));
    let (p99, p99_ratio) = vs_rest("p99 latency", |s| s.p99.as_secs_f64(), latency);
    table.row(p99.target(format!("< {}", ratio(P99_TARGET)), p99_ratio < P99_TARGET));
    table.row(vs_rest("p50 latency", |s| s.p50.as_secs_f64(), latency).0);
    table.row(vs_rest("requests/s", Stats::rps, rate).0);
    let lost: u64 = rounds.iter().map(|r| r.during.errors).sum();
    let probe_lost: u64 = rounds.iter().map(|r| r.probe_errors).sum();
    let rest_lost: u64 = rounds.iter().map(|r| r.rest.errors).sum();
    table.row(
        Row::new("requests lost, all rounds: load + /exe probes (baseline: at rest)")
            .value(format!("{lost} + {probe_lost}"))
            .baseline(rest_lost.to_string())
            .ratio_text("-")
            .target("0", lost + probe_lost == 0),
    );
    table.note(format!(
        "{} round(s); each measures {window:?} of load at rest, then the upgrade window: \
         {window:?} from {lead:?} before HUP, so that it holds the whole upgrade (to the last \
         old worker's exit) and counts a request failing up to {:?} after HUP; the new binary \
         was copied next to the path before the window and renamed over it just before HUP; \
         each figure is the median over the rounds, each ratio the median of per-round ratios; \
         the master's pid was the same before and after every upgrade, and it ran the new file \
         (/proc/PID/exe)",
        rounds.len(),
        window - lead
    ));
    table.note(format!(
        "p99 at rest -> during the upgrade, per round: {}",
        rounds
            .iter()
            .map(|r| format!("{} -> {}", ms(r.rest.p99), ms(r.during.p99)))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let late = rounds.iter().filter(|r| r.drained + lead > window).count();
    if late > 0 {
        table.note(format!(
            "in {late} round(s) old workers were still draining when the window ended: the \
             upgrade window does not cover the whole upgrade (raise PREFORK_BENCH_SECS)"
        ));
    }
    table.note(
        "times are from just before kill(master, HUP) to when the master's stderr line was read; \
         'took over' is the new image's first line after adopting the workers, 'reload \
         complete' is logged once every new worker is ready; /exe is asked every 1 ms on a \
         fresh connection and answers with the inode of the serving worker's executable",
    );
    table
}
