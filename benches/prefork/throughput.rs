//! Sections 1 and 2: requests per second and latency of prefork against the baseline, for the
//! demo app's plaintext `GET /` and for static files.

use std::net::SocketAddr;
use std::time::Duration;

use tempfile::TempDir;
use tokio_rustls::TlsConnector;

use crate::Bench;
use crate::load::{self, Generator, Mode, Spec, Stats};
use crate::report::{Row, Table, median, ms, rate, ratios};
use crate::server::{self, probe};
use crate::support::{PATIENCE, Server};

/// One round: the baseline's figures and prefork's, measured back to back.
pub struct Pair {
    pub base: Stats,
    pub pre: Stats,
}

/// Where a measurement sends its load, and the server whose processes (all of them, as they
/// are at the start of each measurement) it counts.
#[derive(Clone, Copy)]
pub struct Side<'a> {
    pub addr: SocketAddr,
    pub server: &'a Server,
    /// Over TLS with this client, or in cleartext.
    pub tls: Option<&'a TlsConnector>,
}

impl<'a> From<&'a Server> for Side<'a> {
    fn from(server: &'a Server) -> Side<'a> {
        Side {
            addr: server.addr,
            server,
            tls: None,
        }
    }
}

/// Measures baseline and prefork in turns, `rounds` times, each round starting with the one
/// the previous round ended with (A B B A A B ...), so that a drift of the machine's load
/// weighs on both alike.
pub fn alternate<'a>(
    b: &Bench,
    base: impl Into<Side<'a>>,
    pre: impl Into<Side<'a>>,
    path: &str,
    mode: Mode,
    conns: usize,
) -> Vec<Pair> {
    in_turns(b, base.into(), pre.into(), |side| {
        spec(b, side, path, mode, conns)
    })
}

/// What [`alternate`] measures a side with.
pub fn spec(b: &Bench, side: Side, path: &str, mode: Mode, conns: usize) -> Spec {
    Spec {
        addr: side.addr,
        path: path.to_string(),
        mode,
        conns,
        warmup: b.warmup,
        duration: b.secs,
        tally: false,
        server: side.server.processes(),
        tls: side.tls.cloned(),
        rate: None,
    }
}

/// Measures each side with its `spec`, in turns as [`alternate`] says.
pub fn in_turns<'a>(
    b: &Bench,
    base: Side<'a>,
    pre: Side<'a>,
    spec: impl Fn(Side<'a>) -> Spec,
) -> Vec<Pair> {
    let measure = |side| load::measure(b.generator, b.client_threads, &spec(side));
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

/// prefork's figure over the baseline's, round by round.
pub fn per_round(pairs: &[Pair], f: impl Fn(&Stats) -> f64) -> Vec<f64> {
    pairs.iter().map(|p| f(&p.pre) / f(&p.base)).collect()
}

/// A row comparing `f` over the rounds: prefork's and the baseline's medians (as `show` writes
/// them) and the median of the per-round ratios; with `at_least`, that ratio's target.
pub fn compare(
    name: String,
    pairs: &[Pair],
    f: impl Fn(&Stats) -> f64,
    show: impl Fn(f64) -> String,
    at_least: Option<f64>,
) -> Row {
    let med =
        |side: fn(&Pair) -> &Stats| median(&pairs.iter().map(|p| f(side(p))).collect::<Vec<_>>());
    let r = median(&per_round(pairs, &f));
    let row = Row::new(name)
        .value(show(med(|p| &p.pre)))
        .baseline(show(med(|p| &p.base)))
        .ratio(r);
    match at_least {
        Some(target) => row.target(format!(">= {target:.2}x"), r >= target),
        None => row,
    }
}

/// The failed requests of all rounds, when there were any.
pub fn errors_row(label: &str, pairs: &[Pair]) -> Option<Row> {
    let errors = |side: fn(&Pair) -> &Stats| pairs.iter().map(|p| side(p).errors).sum::<u64>();
    let (pre_errors, base_errors) = (errors(|p| &p.pre), errors(|p| &p.base));
    (pre_errors + base_errors > 0).then(|| {
        Row::new(format!("{label} failed requests (all rounds)"))
            .value(pre_errors.to_string())
            .baseline(base_errors.to_string())
            .ratio_text("-")
    })
}

/// Rows for requests/s (with the >= 1.0x target), p50 and p99, and notes on errors and CPU.
fn rows(table: &mut Table, label: &str, pairs: &[Pair], show_bytes: bool) {
    let pre: Vec<&Stats> = pairs.iter().map(|p| &p.pre).collect();

    let rps_ratios = per_round(pairs, Stats::rps);
    table.row(compare(
        format!("{label} requests/s"),
        pairs,
        Stats::rps,
        rate,
        Some(1.0),
    ));
    if show_bytes {
        table.row(compare(
            format!("{label} MiB/s"),
            pairs,
            |s| s.bytes_per_sec() / 1048576.0,
            |v| format!("{v:.0}"),
            None,
        ));
    }
    let p50 = |s: &Stats| s.p50.as_secs_f64();
    let p99 = |s: &Stats| s.p99.as_secs_f64();
    for (name, pick) in [("p50", p50 as fn(&Stats) -> f64), ("p99", p99)] {
        table.row(compare(
            format!("{label} {name} latency"),
            pairs,
            pick,
            |v| ms(Duration::from_secs_f64(v)),
            None,
        ));
    }
    table.rows.extend(errors_row(label, pairs));
    // How the keep-alive connections were spread over the workers, round by round: a worker
    // serves only the connections it accepted.
    if pairs.iter().any(|p| p.pre.conns_held.len() > 2) {
        table.note(format!(
            "{label}: prefork connections open per worker as each round's window began: {}",
            pre.iter().map(|s| spread(s)).collect::<Vec<_>>().join(", ")
        ));
    }
    table.note(format!(
        "{label}: requests/s ratio per round {}; {}",
        ratios(&rps_ratios),
        cores(pairs, "baseline")
    ));
}

/// The median CPU cores busy, client and server, on each side: `CPU cores busy (client +
/// server): prefork 0.90 + 1.02, baseline 0.85 + 1.10` (the baseline called `base_name`).
pub fn cores(pairs: &[Pair], base_name: &str) -> String {
    let med = |side: fn(&Pair) -> &Stats, f: fn(&Stats) -> f64| {
        median(&pairs.iter().map(|p| f(side(p))).collect::<Vec<_>>())
    };
    let cores =
        |side: fn(&Pair) -> &Stats| (med(side, |s| s.cores().0), med(side, |s| s.cores().1));
    let ((pc, ps), (bc, bs)) = (cores(|p| &p.pre), cores(|p| &p.base));
    format!(
        "CPU cores busy (client + server): prefork {pc:.2} + {ps:.2}, {base_name} {bc:.2} + {bs:.2}"
    )
}

/// Checks that `side` answers `GET path` with 200 (and `body`, when given).
pub fn expect_ok<'a>(side: impl Into<Side<'a>>, path: &str, body: Option<&str>) {
    let side = side.into();
    let (status, got) = probe(side.addr, path, PATIENCE).expect("a response");
    assert_eq!(
        status,
        200,
        "GET {path}: status {status}\n{}",
        side.server.log()
    );
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

/// The static files the benchmark serves: label, name, size in bytes.
pub const FILES: [(&str, &str, usize); 2] =
    [("1 KiB", "1k.bin", 1024), ("1 MiB", "1m.bin", 1 << 20)];

/// A temporary directory holding [`FILES`].
pub fn write_files() -> TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    for (_, name, size) in FILES {
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join(name), data).expect("write a test file");
    }
    dir
}

/// Checks that every response of every round had the whole file, where the generator counts
/// body bytes alone (wrk and h2load count the heads too).
pub fn assert_whole_bodies(b: &Bench, mode: Mode, pairs: &[Pair], path: &str, size: usize) {
    if b.generator == Generator::Wrk || mode == Mode::H2c {
        return;
    }
    for pair in pairs {
        for s in [&pair.base, &pair.pre] {
            assert!(
                s.bytes == s.requests * size as u64,
                "short bodies: {} bytes for {} requests of {path}",
                s.bytes,
                s.requests
            );
        }
    }
}

pub fn static_files(b: &Bench) -> Table {
    let dir = write_files();
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
    for (label, name, size) in FILES {
        let path = format!("/{name}");
        for s in [&base, &pre] {
            expect_ok(s, &path, None);
        }
        let pairs = alternate(b, &base, &pre, &path, Mode::KeepAlive, b.conns);
        assert_whole_bodies(b, Mode::KeepAlive, &pairs, &path, size);
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
