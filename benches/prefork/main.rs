//! Load benchmarks of prefork, each figure a ratio against a baseline measured in the same run
//! (machines are shared and noisy): the same application served by one process on a
//! multi-thread tokio runtime (`examples/baseline.rs`).
//!
//! ```text
//! cargo bench --bench prefork                        # every section
//! cargo bench --bench prefork -- throughput drain    # some of them
//! ```
//!
//! Sections: `throughput` (plaintext GET / of the demo app), `static` (1 KiB and 1 MiB files),
//! `process` (memory, start-up and replacement time), `balance` (requests per worker), `drain`
//! (TERM to exit with idle keep-alive connections), `upgrade` (a new binary and HUP under
//! keep-alive load: HUP to the new generation serving, p99 during the upgrade against p99 at
//! rest, requests lost), `references` (the servers users would pick instead: static files
//! against nginx and h2o, started by the benchmark when installed, and apps against a bare
//! hyper `service_fn` in one process; HTTP/1.1, and HTTP/2 by prior knowledge with h2load;
//! requests per second and per CPU-second of the server's processes), `tls` (against nginx
//! with the same certificate: HTTP/1.1 keep-alive, new connections with full and resumed
//! handshakes, HTTP/2 by ALPN with h2load), `connections` (resident memory per idle keep-alive
//! connection against the single-process servers, and per open websocket), `instructions`
//! (user-space instructions per request of the bare and demo apps against the one-process
//! server, counted by callgrind when valgrind is installed: the app path's figure that load
//! does not move).
//!
//! Settings, from the environment:
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `PREFORK_BENCH_SECS` | 2 | seconds of load per measurement (after 0.25 s of warm-up) |
//! | `PREFORK_BENCH_ROUNDS` | 5 | baseline/prefork pairs per figure (upgrades, in `upgrade`); the median ratio is reported |
//! | `PREFORK_BENCH_WORKERS` | CPUs | prefork workers and baseline runtime threads |
//! | `PREFORK_BENCH_CONNS` | 64 | keep-alive connections |
//! | `PREFORK_BENCH_CPR_CONNS` | 32 | requests in flight in connection-per-request runs |
//! | `PREFORK_BENCH_CLIENT_THREADS` | CPUs | load generator threads |
//! | `PREFORK_BENCH_GEN` | rust | `wrk` to generate throughput load with wrk (if installed) |
//! | `PREFORK_BENCH_NO_BUILD` | unset | set to skip `cargo build --examples` at start |

mod balance;
mod drain;
mod instructions;
mod load;
mod per_connection;
mod process;
mod reference_servers;
mod references;
mod report;
mod server;
mod throughput;
mod tls;
mod upgrade;

// Shared with the end-to-end tests; `pub` so that what only the tests use is not dead code here.
#[path = "../../tests/support/mod.rs"]
pub mod support;

use std::time::Duration;

use load::Generator;
use report::Table;

const SECTIONS: [&str; 10] = [
    "throughput",
    "static",
    "process",
    "balance",
    "drain",
    "upgrade",
    "references",
    "tls",
    "connections",
    "instructions",
];

/// Everything a section needs: the settings and a runtime for the drain section's idle
/// connections (the load generator builds its own, one per thread).
pub struct Bench {
    pub rt: tokio::runtime::Runtime,
    pub cpus: usize,
    pub workers: usize,
    pub secs: Duration,
    pub warmup: Duration,
    pub rounds: usize,
    pub conns: usize,
    pub cpr_conns: usize,
    pub client_threads: usize,
    pub generator: Generator,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
        Err(_) => default,
    }
}

impl Bench {
    fn new() -> Bench {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let client_threads = env_or("PREFORK_BENCH_CLIENT_THREADS", cpus).max(1);
        let generator = match std::env::var("PREFORK_BENCH_GEN").as_deref() {
            Ok("wrk") => {
                assert!(
                    load::wrk_available(),
                    "PREFORK_BENCH_GEN=wrk but wrk is not installed (apt-get install wrk)"
                );
                Generator::Wrk
            }
            Ok("rust") | Err(_) => Generator::Rust,
            Ok(other) => panic!("PREFORK_BENCH_GEN={other:?}: expected rust or wrk"),
        };
        let secs: f64 = env_or("PREFORK_BENCH_SECS", 2.0);
        assert!(secs > 0.0, "PREFORK_BENCH_SECS must be positive");
        server::build_examples();
        Bench {
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(client_threads)
                .enable_all()
                .build()
                .expect("build the client runtime"),
            cpus,
            workers: env_or("PREFORK_BENCH_WORKERS", cpus).max(1),
            secs: Duration::from_secs_f64(secs),
            warmup: Duration::from_millis(250),
            rounds: env_or("PREFORK_BENCH_ROUNDS", 5usize).max(1),
            conns: env_or("PREFORK_BENCH_CONNS", 64usize).max(1),
            cpr_conns: env_or("PREFORK_BENCH_CPR_CONNS", 32usize).max(1),
            client_threads,
            generator,
        }
    }
}

/// 1000 idle connections plus the servers' own descriptors need more than the usual soft
/// limit of 1024; the servers inherit the raised limit.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it,
    // and then there is nothing to check that takes less than minutes.
    if !args.iter().any(|a| a == "--bench") {
        println!("prefork benchmarks: run them with `cargo bench --bench prefork`");
        return;
    }
    // Any other word names a section to run.
    let wanted: Vec<String> = args.into_iter().filter(|a| !a.starts_with('-')).collect();
    for w in &wanted {
        assert!(
            SECTIONS.contains(&w.as_str()),
            "unknown section {w:?}; the sections are {SECTIONS:?}"
        );
    }
    let run = |name: &str| wanted.is_empty() || wanted.iter().any(|w| w == name);
    raise_fd_limit();
    let bench = Bench::new();

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("prefork benchmarks");
    println!(
        "  {} CPU(s); prefork --workers {} vs baseline --threads {}; load average at start: {}",
        bench.cpus,
        bench.workers,
        bench.workers,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "  {:?} per measurement after {:?} warm-up, {} round(s) per figure (baseline and prefork \
         alternate, each round starting with the other one; ratio = median of per-round ratios)",
        bench.secs, bench.warmup, bench.rounds
    );
    println!(
        "  load generator: {} with {} thread(s); {} keep-alive connections, {} in flight for \
         connection-per-request (the client shares the CPUs with the server)",
        match bench.generator {
            Generator::Rust => "hyper client (this benchmark, a runtime per thread)",
            Generator::Wrk => "wrk",
        },
        bench.client_threads,
        bench.conns,
        bench.cpr_conns
    );

    let mut tables: Vec<Table> = Vec::new();
    let mut show = |new: Vec<Table>| {
        for t in &new {
            t.print();
        }
        tables.extend(new);
    };
    if run("throughput") {
        show(vec![throughput::plaintext(&bench)]);
    }
    if run("static") {
        show(vec![throughput::static_files(&bench)]);
    }
    if run("process") {
        show(process::process_model(&bench));
    }
    if run("balance") {
        show(vec![balance::accept_balance(&bench)]);
    }
    if run("drain") {
        show(vec![drain::drain_latency(&bench)]);
    }
    if run("upgrade") {
        show(vec![upgrade::upgrade(&bench)]);
    }
    if run("references") {
        show(references::references(&bench));
    }
    if run("tls") {
        show(tls::tls(&bench));
    }
    if run("connections") {
        show(vec![per_connection::memory(&bench)]);
    }
    if run("instructions") {
        show(instructions::instructions());
    }

    let mut summary = Table::new("Targets");
    let (mut met, mut total) = (0, 0);
    for table in &tables {
        let section = table.title.split_whitespace().next().unwrap_or_default();
        for row in table.rows.iter().filter(|r| r.met.is_some()) {
            total += 1;
            met += usize::from(row.met == Some(true));
            summary.row(
                report::Row {
                    name: format!("{section} {}", row.name),
                    value: row.value.clone(),
                    baseline: row.baseline.clone(),
                    ratio: row.ratio.clone(),
                    target: String::new(),
                    met: None,
                }
                .target(row.target.clone(), row.met == Some(true)),
            );
        }
    }
    summary.note(format!("{met} of {total} targets met"));
    summary.print();
}
