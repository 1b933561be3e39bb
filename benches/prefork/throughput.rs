//! Sections 1 and 2: requests per second and latency of prefork against the baseline, for the
//! demo app's plaintext `GET /` and for static files.

use std::time::Duration;

use crate::Bench;
use crate::load::{self, Generator, Mode, Spec, Stats};
use crate::report::{Row, Table, median, ms, rate, ratio};
use crate::server::{self, probe};
use crate::support::{PATIENCE, Server};

/// One round: the baseline's figures and prefork's, measured back to back.
pub struct Pair {
    pub base: Stats,
    pub pre: Stats,
}

/// Measures baseline and prefork in turns, `rounds` times, each round starting with the one
/// the previous round ended with (A B B A A B ...), so that a drift of the machine's load
/// weighs on both alike.
pub fn alternate(
    b: &Bench,
    base: &Server,
    pre: &Server,
    path: &str,
    mode: Mode,
    conns: usize,
) -> Vec<Pair> {
    let measure = |server: &Server| {
        let spec = Spec {
            addr: server.addr,
            path: path.to_string(),
            mode,
            conns,
            warmup: b.warmup,
            duration: b.secs,
            tally: false,
            server: server.processes(),
        };
        load::measure(b.generator, b.client_threads, &spec)
    };
    (0..b.rounds)
        .map(|round| {
            if round % 2 == 0 {
                let base = measure(base);
                let pre = measure(pre);
                Pair { base, pre }
            } else {
                let pre = measure(pre);
                let base = measure(base);
                Pair { base, pre }
            }
        })
        .collect()
}

/// Rows for requests/s (with the >= 1.0x target), p50 and p99, and notes on errors and CPU.
fn rows(table: &mut Table, label: &str, pairs: &[Pair], show_bytes: bool) {
    let pre: Vec<&Stats> = pairs.iter().map(|p| &p.pre).collect();
    let base: Vec<&Stats> = pairs.iter().map(|p| &p.base).collect();
    let med = |side: &[&Stats], f: fn(&Stats) -> f64| {
        median(&side.iter().map(|s| f(s)).collect::<Vec<_>>())
    };
    let ratios = |f: fn(&Stats) -> f64| -> Vec<f64> {
        pairs.iter().map(|p| f(&p.pre) / f(&p.base)).collect()
    };

    let rps_ratios = ratios(Stats::rps);
    let rps_ratio = median(&rps_ratios);
    table.row(
        Row::new(format!("{label} requests/s"))
            .value(rate(med(&pre, Stats::rps)))
            .baseline(rate(med(&base, Stats::rps)))
            .ratio(rps_ratio)
            .target(">= 1.00x", rps_ratio >= 1.0),
    );
    if show_bytes {
        let mibs = |s: &Stats| s.bytes_per_sec() / 1048576.0;
        table.row(
            Row::new(format!("{label} MiB/s"))
                .value(format!("{:.0}", med(&pre, mibs)))
                .baseline(format!("{:.0}", med(&base, mibs)))
                .ratio(median(&ratios(mibs))),
        );
    }
    let p50 = |s: &Stats| s.p50.as_secs_f64();
    let p99 = |s: &Stats| s.p99.as_secs_f64();
    for (name, pick) in [("p50", p50 as fn(&Stats) -> f64), ("p99", p99)] {
        table.row(
            Row::new(format!("{label} {name} latency"))
                .value(ms(Duration::from_secs_f64(med(&pre, pick))))
                .baseline(ms(Duration::from_secs_f64(med(&base, pick))))
                .ratio(median(&ratios(pick))),
        );
    }
    let errors = |side: &[&Stats]| side.iter().map(|s| s.errors).sum::<u64>();
    let (pre_errors, base_errors) = (errors(&pre), errors(&base));
    if pre_errors + base_errors > 0 {
        table.row(
            Row::new(format!("{label} failed requests (all rounds)"))
                .value(pre_errors.to_string())
                .baseline(base_errors.to_string())
                .ratio_text("-"),
        );
    }
    // How the keep-alive connections were spread over the workers, round by round: a worker
    // serves only the connections it accepted.
    if pairs.iter().any(|p| p.pre.conns_held.len() > 2) {
        table.note(format!(
            "{label}: prefork connections open per worker as each round's window began: {}",
            pre.iter().map(|s| spread(s)).collect::<Vec<_>>().join(", ")
        ));
    }
    let cores = |side: &[&Stats]| (med(side, |s| s.cores().0), med(side, |s| s.cores().1));
    let ((pc, ps), (bc, bs)) = (cores(&pre), cores(&base));
    table.note(format!(
        "{label}: requests/s ratio per round {}; CPU cores busy (client + server): prefork \
         {pc:.2} + {ps:.2}, baseline {bc:.2} + {bs:.2}",
        rps_ratios
            .iter()
            .map(|r| ratio(*r))
            .collect::<Vec<_>>()
            .join(" "),
    ));
}

fn expect_ok(server: &Server, path: &str, body: Option<&str>) {
    let (status, got) = probe(server.addr, path, PATIENCE).expect("a response");
    assert_eq!(status, 200, "GET {path}: status {status}\n{}", server.log());
    if let Some(body) = body {
        assert_eq!(got, body, "GET {path}");
    }
}

pub fn plaintext(b: &Bench) -> Table {
    let n = b.workers.to_string();
    let base = server::baseline(b.workers);
    let pre = server::demo(b.workers, &[]);
    pre.wait_log("worker(s) ready", PATIENCE);
    for s in [&base, &pre] {
        expect_ok(s, "/", Some("Hello, World!"));
    }
    let mut table = Table::new(format!(
        "1. Throughput: plaintext GET / of the demo app; prefork --workers {n} vs the same axum \
         app in one process with {n} runtime threads"
    ));
    for (mode, conns) in [
        (Mode::KeepAlive, b.conns),
        (Mode::ConnPerRequest, b.cpr_conns),
    ] {
        let pairs = alternate(b, &base, &pre, "/", mode, conns);
        rows(&mut table, mode.label(), &pairs, false);
    }
    // What counting costs: the same app with --metrics-bind, every request counted.
    drop(pre);
    let metered = server::demo(b.workers, &["--metrics-bind", "127.0.0.1:0"]);
    metered.wait_log("worker(s) ready", PATIENCE);
    expect_ok(&metered, "/", Some("Hello, World!"));
    let pairs = alternate(b, &base, &metered, "/", Mode::KeepAlive, b.conns);
    rows(&mut table, "keep-alive, --metrics-bind", &pairs, false);
    table.note(
        "figures are medians over the rounds and the ratio is the median of the per-round \
         ratios (so it need not equal the quotient of the two medians); latency ratios: lower \
         is better; requests/s: higher is better",
    );
    table
}

pub fn static_files(b: &Bench) -> Table {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let files = [("1 KiB", "1k.bin", 1024usize), ("1 MiB", "1m.bin", 1 << 20)];
    for (_, name, size) in files {
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join(name), data).expect("write a test file");
    }
    let root = dir.path().to_str().expect("a UTF-8 path");
    let n = b.workers.to_string();
    let base = server::static_baseline(b.workers, root);
    let pre = server::static_prefork(b.workers, root);
    pre.wait_log("worker(s) ready", PATIENCE);
    let mut table = Table::new(format!(
        "2. Static files: the prefork binary --workers {n} --root vs the same ServeDir in one \
         process with {n} runtime threads (keep-alive, {} connections)",
        b.conns
    ));
    for (label, name, size) in files {
        let path = format!("/{name}");
        for s in [&base, &pre] {
            let (status, _) = probe(s.addr, &path, PATIENCE).expect("a response");
            assert_eq!(status, 200, "GET {path}");
        }
        let pairs = alternate(b, &base, &pre, &path, Mode::KeepAlive, b.conns);
        for pair in &pairs {
            for s in [&pair.base, &pair.pre] {
                assert!(
                    b.generator == Generator::Wrk || s.bytes == s.requests * size as u64,
                    "short bodies: {} bytes for {} requests of {path}",
                    s.bytes,
                    s.requests
                );
            }
        }
        rows(&mut table, label, &pairs, true);
    }
    table.note(
        "files of 1 KiB and 1 MiB in a temporary directory; medians over the rounds, ratio = \
         median of the per-round ratios; latency ratios: lower is better",
    );
    table.note(
        "both serve through prefork::app::static_files; prefork's workers keep up to 4 MiB of \
         freed heap (src/worker/heap.rs) while the baseline runs with glibc's defaults, which \
         give memory back and fault it in again on every 1 MiB response; run the bench with \
         MALLOC_TRIM_THRESHOLD_=4194304 (both servers then use it) to compare without it",
    );
    table
}

/// The connections each worker held (the master, first, is left out), as `a/b/...`.
pub fn spread(stats: &Stats) -> String {
    stats
        .conns_held
        .iter()
        .skip(1)
        .map(|(_, n)| n.to_string())
        .collect::<Vec<_>>()
        .join("/")
}
