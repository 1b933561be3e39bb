//! Section 4: how evenly the workers share the load: requests served per worker over a run,
//! counted from the demo's `/pid` answers.

use crate::Bench;
use crate::load::{self, Generator, H2_STREAMS, Mode, Spec};
use crate::report::{Row, Table, median, ratio};
use crate::server;
use crate::support::PATIENCE;
use crate::throughput::spread;

/// Workers in this section, whatever the machine: the target is stated for two.
const WORKERS: usize = 2;
const TARGET: f64 = 1.3;

pub fn accept_balance(b: &Bench) -> Table {
    let server = server::demo(WORKERS, &[]);
    server.wait_log("worker(s) ready", PATIENCE);
    let workers = server.workers();
    let mut table = Table::new(format!(
        "4. Accept balance: requests served per worker, prefork (demo app) --workers {WORKERS}, \
         GET /pid under sustained load; max/min ratio against an even split"
    ));
    for (mode, conns) in [
        (Mode::KeepAlive, b.conns),
        (Mode::ConnPerRequest, b.cpr_conns),
    ] {
        let spec = Spec {
            addr: server.addr,
            path: "/pid".to_string(),
            mode,
            conns,
            warmup: b.warmup,
            duration: b.secs,
            tally: true,
            server: server.processes(),
            tls: None,
            rate: None,
        };
        let mut totals = vec![0u64; workers.len()];
        let (mut requests, mut others, mut errors) = (0, 0, 0);
        let mut ratios = Vec::new();
        let mut spreads = Vec::new();
        for _ in 0..b.rounds {
            let stats = load::measure(Generator::Rust, b.client_threads, &spec);
            let counts: Vec<u64> = workers
                .iter()
                .map(|w| {
                    stats
                        .tally
                        .get(&w.as_raw().to_string())
                        .copied()
                        .unwrap_or(0)
                })
                .collect();
            for (t, c) in totals.iter_mut().zip(&counts) {
                *t += c;
            }
            requests += stats.requests;
            others += stats.requests - counts.iter().sum::<u64>();
            errors += stats.errors;
            ratios.push(max_min(&counts));
            spreads.push(spread(&stats));
        }
        let r = median(&ratios);
        let connections = match mode {
            Mode::KeepAlive => format!("{conns} keep-alive connections (new ones every round)"),
            Mode::ConnPerRequest => format!("a new connection per request, {conns} in flight"),
            Mode::H2c => format!("{conns} HTTP/2 connections, {H2_STREAMS} streams on each"),
        };
        table.row(
            Row::new(format!("{}: requests per worker", mode.label()))
                .value(
                    totals
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(" / "),
                )
                .baseline("even split")
                .ratio(r)
                .target(format!("<= {TARGET:.2}x"), r <= TARGET),
        );
        table.note(format!(
            "{}: {connections}, {} rounds of {:?}; max/min per round {}; connections open \
             per worker as each round's window began: {}; {requests} requests, {others} by \
             processes that are not the original workers, {errors} failed",
            mode.label(),
            b.rounds,
            b.secs,
            ratios
                .iter()
                .map(|r| ratio(*r))
                .collect::<Vec<_>>()
                .join(" "),
            spreads.join(", "),
        ));
    }
    table.note(
        "ratio = requests of the busiest worker / requests of the least busy one (1.00x is an \
         even split), the median of the rounds; the counts are the rounds' sums; with keep-alive, a worker serves whatever connections it accepted at the \
         start, so that row shows how the connections were spread",
    );
    table
}

/// Requests of the busiest worker over those of the least busy one.
fn max_min(counts: &[u64]) -> f64 {
    let max = counts.iter().copied().max().unwrap_or(0);
    let min = counts.iter().copied().min().unwrap_or(0);
    if min == 0 {
        f64::INFINITY
    } else {
        max as f64 / min as f64
    }
}
