//! Section 5: drain latency, the time from TERM to the master's exit with status 0, with 0, 100
//! and 1000 idle keep-alive connections open (each has served one request, so a worker holds
//! it), with `--linger 0` and with the default linger window.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::Empty;
use hyper::client::conn::http1::SendRequest;
use nix::sys::signal::Signal;

use crate::Bench;
use crate::load::{connect, get_ok};
use crate::report::{Row, Table, median_duration, ms, ratio};
use crate::server;
use crate::support::{PATIENCE, Server};

const IDLE: [usize; 3] = [0, 100, 1000];
/// prefork's default `--linger` (src/config: `linger: Duration::from_secs(1)`).
const DEFAULT_LINGER: Duration = Duration::from_secs(1);
/// The target: the drain with 1000 idle connections ends this soon after the linger window.
const BEYOND_TARGET: Duration = Duration::from_millis(200);
const TARGET_CONNS: usize = 1000;

/// One timed stop.
struct Stop {
    took: Duration,
    code: Option<i32>,
}

pub fn drain_latency(b: &Bench) -> Table {
    let n = b.workers.to_string();
    let mut table = Table::new(format!(
        "5. Drain latency: TERM -> exit 0 of prefork (demo app, --workers {n}) with idle \
         keep-alive connections, vs the baseline's graceful stop (hyper graceful_shutdown)"
    ));
    // Stops vary little; three are enough for a median.
    let rounds = b.rounds.min(3);
    let mut failures = Vec::new();
    for conns in IDLE {
        let base: Vec<Stop> = (0..rounds)
            .map(|_| {
                let server = server::baseline(b.workers);
                stop_with_idle(b, server, conns)
            })
            .collect();
        let base_took = median_duration(&base.iter().map(|s| s.took).collect::<Vec<_>>());
        for linger in [Some(Duration::ZERO), None] {
            let window = linger.unwrap_or(DEFAULT_LINGER);
            let linger_arg = format!("{}ms", window.as_millis());
            let args = match linger {
                Some(_) => vec!["--linger", &linger_arg],
                None => vec![],
            };
            let pre: Vec<Stop> = (0..rounds)
                .map(|_| {
                    let server = server::demo(b.workers, &args);
                    server.wait_log("worker(s) ready", PATIENCE);
                    stop_with_idle(b, server, conns)
                })
                .collect();
            let took = median_duration(&pre.iter().map(|s| s.took).collect::<Vec<_>>());
            let bad: Vec<String> = pre
                .iter()
                .chain(&base)
                .filter(|s| s.code != Some(0))
                .map(|s| format!("{:?}", s.code))
                .collect();
            if !bad.is_empty() {
                failures.push(format!(
                    "{conns} idle connections, linger {}: exit status {}",
                    ms(window),
                    bad.join(", ")
                ));
            }
            let beyond = took.saturating_sub(window);
            let label = match linger {
                Some(_) => "--linger 0".to_string(),
                None => format!("default linger ({})", ms(DEFAULT_LINGER)),
            };
            let value = if conns == 0 {
                format!("{} (nothing to linger on)", ms(took))
            } else {
                format!("{} (linger + {})", ms(took), ms(beyond))
            };
            let mut row = Row::new(format!("{conns} idle conns, {label}"))
                .value(value)
                .baseline(ms(base_took))
                .ratio_text(ratio(took.as_secs_f64() / base_took.as_secs_f64()));
            if conns == TARGET_CONNS {
                let ok = beyond < BEYOND_TARGET && pre.iter().all(|s| s.code == Some(0));
                row = row.target(format!("linger + < {}", ms(BEYOND_TARGET)), ok);
            }
            table.row(row);
        }
    }
    table.note(format!(
        "median of {} stops each, timed from just before kill(master, TERM) to the master's exit \
         (polled every 1 ms); '--linger 0' is given on the command line, the default linger is \
         not given at all",
        rounds
    ));
    table.note(
        "the baseline closes idle keep-alive connections at once on TERM: compare it with \
         --linger 0; with the default linger prefork keeps them open for the window on purpose",
    );
    for f in failures {
        table.note(format!("FAILED: {f}"));
    }
    table
}

/// Opens `conns` idle keep-alive connections to `server` (each answered once), sends TERM and
/// times the exit. The connections stay open on the client's side until after the exit.
fn stop_with_idle(b: &Bench, mut server: Server, conns: usize) -> Stop {
    let idle = open_idle(b, server.addr, conns);
    assert_eq!(
        idle.len(),
        conns,
        "could only open {} of {conns} idle connections\n{}",
        idle.len(),
        server.log()
    );
    // Let the last responses' bookkeeping finish: the connections are idle, not just served.
    std::thread::sleep(Duration::from_millis(100));
    let sent = Instant::now();
    server.signal(Signal::SIGTERM);
    let (status, exited) = server
        .wait_exit(PATIENCE)
        .unwrap_or_else(|| panic!("no exit within {PATIENCE:?} of TERM\n{}", server.log()));
    drop(idle);
    Stop {
        took: exited - sent,
        code: status.code(),
    }
}

fn open_idle(b: &Bench, addr: SocketAddr, conns: usize) -> Vec<SendRequest<Empty<Bytes>>> {
    b.rt.block_on(async {
        futures_util::stream::iter(0..conns)
            .map(|_| async move {
                for _ in 0..3 {
                    if let Some((mut tx, conn, _)) = connect(addr, None).await {
                        tokio::spawn(conn);
                        if get_ok(&mut tx, "/").await {
                            return Some(tx);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                None
            })
            .buffer_unordered(64)
            .filter_map(|tx| async move { tx })
            .collect()
            .await
    })
}
