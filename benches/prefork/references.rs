//! Section 7: prefork against the servers users would pick instead, in the same run. Static
//! files (1 KiB and 1 MiB) from the prefork binary against nginx and h2o; applications against
//! a bare hyper `service_fn` in one process on a multi-thread runtime, served by prefork
//! (`examples/bare.rs`: the cost of prefork alone) and the demo's axum app (prefork and axum).
//! HTTP/1.1 keep-alive, and HTTP/2 by prior knowledge when h2load is installed. Requests per
//! second and requests per CPU-second of the server's processes (nginx's master and workers,
//! prefork's master and workers), each a median of per-round ratios. 1 MiB over HTTP/1.1 is
//! measured against nginx once more with both servers paced at the same rate (see [`paced`]).

use crate::Bench;
use crate::load::{self, H2_STREAMS, Mode, Spec, Stats};
use crate::reference_servers::{self, Kind};
use crate::report::{Table, median, rate, ratios};
use crate::server;
use crate::support::{PATIENCE, Server};
use crate::throughput::{
    FILES, Pair, alternate, assert_whole_bodies, compare, errors_row, expect_ok, in_turns,
    per_round, spec, write_files,
};

/// HTTP/2 connections (`h2load -c`), each with [`H2_STREAMS`] requests in flight.
const H2_CONNS: usize = 16;

/// The paced run's rate, as a share of the slower side's rate at full load.
const PACED_SHARE: f64 = 0.6;

pub fn references(b: &Bench) -> Vec<Table> {
    let modes = modes();
    vec![static_files(b, &modes), apps(b, &modes)]
}

/// HTTP/1.1 keep-alive, and HTTP/2 if there is a load generator for it.
fn modes() -> Vec<Mode> {
    if load::h2load_available() {
        vec![Mode::KeepAlive, Mode::H2c]
    } else {
        println!(
            "references: h2load is not installed (apt-get install nghttp2-client): HTTP/1 only"
        );
        vec![Mode::KeepAlive]
    }
}

fn conns(b: &Bench, mode: Mode) -> usize {
    if mode == Mode::H2c { H2_CONNS } else { b.conns }
}

/// Requests/s and requests per CPU-second of the server, with `at_least` as the target of
/// both ratios when given; requests per busy CPU-second of the whole machine, without a target;
/// the failed requests; the per-round ratios in a note.
pub fn rows(table: &mut Table, label: &str, pairs: &[Pair], at_least: Option<f64>) {
    table.row(compare(
        format!("{label}: requests/s"),
        pairs,
        Stats::rps,
        rate,
        at_least,
    ));
    table.row(compare(
        format!("{label}: requests/CPU-s"),
        pairs,
        Stats::per_cpu_sec,
        rate,
        at_least,
    ));
    table.row(compare(
        format!("{label}: requests/machine-CPU-s"),
        pairs,
        Stats::per_machine_cpu_sec,
        rate,
        None,
    ));
    table.rows.extend(errors_row(label, pairs));
    table.note(format!(
        "{label}: ratio per round, requests/s {}; per CPU-second {}; per machine CPU-second {}",
        ratios(&per_round(pairs, Stats::rps)),
        ratios(&per_round(pairs, Stats::per_cpu_sec)),
        ratios(&per_round(pairs, Stats::per_machine_cpu_sec)),
    ));
}

fn protocol(mode: Mode) -> String {
    match mode {
        Mode::H2c => format!("HTTP/2 c{H2_CONNS} m{H2_STREAMS}"),
        _ => "HTTP/1.1".to_string(),
    }
}

fn static_files(b: &Bench, modes: &[Mode]) -> Table {
    let dir = write_files();
    let root = dir.path().to_str().expect("a UTF-8 path");
    let n = b.workers;
    let pre = server::static_prefork(n, root);
    pre.wait_log("worker(s) ready", PATIENCE);
    let mut table = Table::new(format!(
        "7a. References, static files: the prefork binary --workers {n} --root vs nginx ({n} \
         workers) and h2o ({n} threads); the baseline column is the reference the row names"
    ));
    let probe_path = format!("/{}", FILES[0].1);
    for kind in reference_servers::ALL {
        let reference = match reference_servers::start(kind, n, dir.path(), &probe_path) {
            Ok(reference) => reference,
            Err(why) => {
                println!("references: {why}: skipped");
                table.note(format!("{}: skipped, {why}", kind.name()));
                continue;
            }
        };
        table.note(format!(
            "{}: {}; {}",
            kind.name(),
            reference.version,
            kind.settings()
        ));
        for (label, name, size) in FILES {
            let path = format!("/{name}");
            expect_ok(reference.side(Mode::KeepAlive), &path, None);
            expect_ok(&pre, &path, None);
            for &mode in modes {
                let pairs = alternate(b, reference.side(mode), &pre, &path, mode, conns(b, mode));
                assert_whole_bodies(b, mode, &pairs, &path, size);
                // nginx and h2o for small files, nginx for large ones (issue 18's targets).
                let target = (size <= 1024 || matches!(kind, Kind::Nginx)).then_some(1.0);
                let label = format!("{label} {} vs {}", protocol(mode), kind.name());
                rows(&mut table, &label, &pairs, target);
                if size > 1024 && mode == Mode::KeepAlive && matches!(kind, Kind::Nginx) {
                    paced(b, &mut table, &reference, &pre, &path, &pairs, &label);
                }
            }
        }
    }
    table.note(
        "requests/CPU-s: requests per second of CPU time (user + system) of all the server's \
         processes, read from /proc over the measured window; higher is better",
    );
    table.note(
        "requests/machine-CPU-s: requests per second of busy CPU time of the whole machine \
         (/proc/stat), the load generator's and the kernel's softirq work included, which no \
         process is charged with; on loopback a large file's TCP work lands there or in the \
         server's system calls depending on the server (docs/performance.md)",
    );
    table
}

/// The same load at the same rate for both sides, below what either serves at full load: at
/// full load the faster server also takes more of the kernel's receive work for the client's
/// socket (docs/performance.md), so its CPU per request is not the same measure as the
/// slower one's. Informational: the target is the full-load row's.
fn paced(
    b: &Bench,
    table: &mut Table,
    reference: &reference_servers::Reference,
    pre: &Server,
    path: &str,
    full: &[Pair],
    label: &str,
) {
    let slower =
        |f: fn(&Pair) -> &Stats| median(&full.iter().map(|p| f(p).rps()).collect::<Vec<_>>());
    let rate = PACED_SHARE * slower(|p| &p.base).min(slower(|p| &p.pre));
    // The Rust generator: wrk cannot pace.
    let paced = |side| Spec {
        rate: Some(rate),
        ..spec(b, side, path, Mode::KeepAlive, b.conns)
    };
    let pairs = in_turns(b, reference.side(Mode::KeepAlive), pre.into(), paced);
    rows(
        table,
        &format!("{label}, both paced at {rate:.0}/s"),
        &pairs,
        None,
    );
}

fn apps(b: &Bench, modes: &[Mode]) -> Table {
    let n = b.workers;
    let base = server::bare_baseline(n);
    let bare = server::bare(n);
    let demo = server::demo(n, &[]);
    for s in [&bare, &demo] {
        s.wait_log("worker(s) ready", PATIENCE);
    }
    for s in [&base, &bare, &demo] {
        expect_ok(s, "/", Some("Hello, World!"));
    }
    let mut table = Table::new(format!(
        "7b. References, applications: GET / of a bare tower::service_fn (examples/bare.rs) \
         and of the demo's axum app, served by prefork --workers {n}, vs the bare service_fn in \
         one process with {n} runtime threads (examples/baseline.rs --bare)"
    ));
    for &mode in modes {
        let proto = protocol(mode);
        let pairs = alternate(b, &base, &bare, "/", mode, conns(b, mode));
        rows(&mut table, &format!("bare {proto}"), &pairs, Some(1.0));
        let pairs = alternate(b, &base, &demo, "/", mode, conns(b, mode));
        rows(
            &mut table,
            &format!("demo (axum) {proto}"),
            &pairs,
            Some(0.95),
        );
    }
    table
}
