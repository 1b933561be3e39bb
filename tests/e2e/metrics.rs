//! `--metrics-bind`: the numbers a scrape reads agree with what the clients counted, across
//! workers, a worker recycled by `--max-requests`, a reload and a crash; the metrics are never
//! on the application's address.

use std::collections::HashMap;
use std::net::SocketAddr;

use nix::sys::signal::{Signal, kill};

use super::http::get;
use super::support::{Bin, PATIENCE, Server};

/// The metrics' address, from the log line the master writes for it.
fn metrics_addr(server: &Server) -> SocketAddr {
    let line = server.wait_log("(metrics)", PATIENCE);
    let addr = line
        .rsplit("http://")
        .next()
        .and_then(|rest| rest.split_whitespace().next())
        .expect("an address in the metrics line");
    addr.parse().expect("a socket address")
}

/// One scrape: every sample, by its name with labels as written (`name{label="v"}`).
fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let response = get(addr, "/metrics");
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(
        response
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/openmetrics-text")),
        "{response:?}"
    );
    let text = response.text();
    assert!(text.ends_with("# EOF\n"), "not a whole exposition:\n{text}");
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| {
            let (name, value) = line.rsplit_once(' ').expect("a sample");
            (name.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

fn value(samples: &HashMap<String, f64>, name: &str) -> u64 {
    let v = samples
        .get(name)
        .unwrap_or_else(|| panic!("no sample {name} in {samples:#?}"));
    *v as u64
}

#[test]
fn metrics_agree_with_the_clients_across_recycling_a_reload_and_a_crash() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("index.html"), "hi").unwrap();
    let server = Server::builder(Bin::Prefork, 2)
        .args(&["--root", root.path().to_str().unwrap()])
        .args(&["--metrics-bind", "127.0.0.1:0", "--max-requests", "40"])
        .start();
    let metrics = metrics_addr(&server);
    assert_ne!(metrics, server.addr);
    // The application's address does not serve them.
    assert_eq!(get(server.addr, "/metrics").status, 404);
    // That request counts too, as a 4xx.
    let mut sent = 1;
    let mut missing = 1;

    // Enough requests for at least one worker to reach its limit and be replaced.
    for _ in 0..120 {
        assert_eq!(get(server.addr, "/").status, 200);
        sent += 1;
    }
    server.wait_log("reached its request limit", PATIENCE);
    server.wait_log("draining: its replacement is ready", PATIENCE);
    assert_eq!(get(server.addr, "/nope").status, 404);
    sent += 1;
    missing += 1;

    server.signal(Signal::SIGHUP);
    server.wait_log("reload complete", PATIENCE);
    let serving = server.wait_until("the old generation gone", || {
        let now = server.workers();
        (now.len() == 2).then_some(now)
    });
    kill(serving[0], Signal::SIGKILL).unwrap();
    server.wait_workers(2, &serving[..1]);
    server.wait_log("all 2 worker(s) ready", PATIENCE);
    for _ in 0..30 {
        assert_eq!(get(server.addr, "/").status, 200);
        sent += 1;
    }

    let samples = scrape(metrics);
    assert_eq!(value(&samples, "prefork_requests_total"), sent);
    let per_worker: u64 = samples
        .iter()
        .filter(|(name, _)| name.starts_with("prefork_worker_requests_total{"))
        .map(|(_, v)| *v as u64)
        .sum();
    assert_eq!(per_worker, sent, "the workers' counts add up to the total");
    assert_eq!(
        value(&samples, "prefork_responses_total{class=\"2xx\"}"),
        sent - missing
    );
    assert_eq!(
        value(&samples, "prefork_responses_total{class=\"4xx\"}"),
        missing
    );
    assert_eq!(
        value(&samples, "prefork_request_duration_seconds_count"),
        sent
    );
    assert_eq!(
        value(
            &samples,
            "prefork_request_duration_seconds_bucket{le=\"+Inf\"}"
        ),
        sent
    );
    // Every request of the test came on a connection of its own.
    assert_eq!(value(&samples, "prefork_connections_accepted_total"), sent);
    assert_eq!(
        value(&samples, "prefork_reloads_total{result=\"completed\"}"),
        1
    );
    assert_eq!(
        value(&samples, "prefork_reloads_total{result=\"failed\"}"),
        0
    );
    assert_eq!(value(&samples, "prefork_generation"), 1);
    assert_eq!(
        value(&samples, "prefork_worker_exits_total{cause=\"crashed\"}"),
        1
    );
    let stopped = value(&samples, "prefork_worker_exits_total{cause=\"stopped\"}");
    assert!(
        stopped >= 3,
        "a recycled worker and the old generation: {stopped}"
    );
    let exits = stopped + value(&samples, "prefork_worker_exits_total{cause=\"killed\"}") + 1;
    let starts = value(&samples, "prefork_worker_starts_total");
    assert_eq!(
        starts - exits,
        2,
        "starts {starts}, exits {exits}, 2 running"
    );
    assert_eq!(value(&samples, "prefork_workers{state=\"serving\"}"), 2);
    assert_eq!(value(&samples, "prefork_workers{state=\"draining\"}"), 0);
    assert_eq!(value(&samples, "prefork_requests_in_flight"), 0);
    assert_eq!(value(&samples, "prefork_stopping"), 0);
    // The server closes each connection just after its response: wait for the last one.
    server.wait_until("every connection of the test closed", || {
        (value(&scrape(metrics), "prefork_connections_open") == 0).then_some(())
    });
}

#[test]
fn metrics_show_connections_open_and_requests_in_flight() {
    let server = Server::builder(Bin::Demo, 1)
        .args(&["--metrics-bind", "127.0.0.1:0"])
        .start();
    let metrics = metrics_addr(&server);
    let mut slow = super::http::Conn::connect(server.addr).unwrap();
    slow.send(b"GET /sleep?ms=3000 HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let samples = server.wait_until("the slow request in flight", || {
        let samples = scrape(metrics);
        (value(&samples, "prefork_requests_in_flight") == 1).then_some(samples)
    });
    assert_eq!(value(&samples, "prefork_connections_open"), 1);
    assert_eq!(
        value(&samples, "prefork_worker_connections_open{worker=\"1\"}"),
        1
    );
    let response = slow.read_response(false).unwrap();
    assert_eq!(response.status, 200);
    let samples = scrape(metrics);
    assert_eq!(value(&samples, "prefork_requests_in_flight"), 0);
    assert_eq!(value(&samples, "prefork_requests_total"), 1);
    // A request that took three seconds is past the 2.5 s bound and within 5 s.
    assert_eq!(
        value(
            &samples,
            "prefork_request_duration_seconds_bucket{le=\"2.5\"}"
        ),
        0
    );
    assert_eq!(
        value(
            &samples,
            "prefork_request_duration_seconds_bucket{le=\"5.0\"}"
        ),
        1
    );
}

#[test]
fn parked_connections_are_counted_until_their_next_request() {
    let server = Server::builder(Bin::Demo, 1)
        .args(&["--metrics-bind", "127.0.0.1:0", "--keepalive", "60s"])
        .start();
    let metrics = metrics_addr(&server);
    let parked = || value(&scrape(metrics), "prefork_connections_parked");
    let mut conns: Vec<_> = (0..3)
        .map(|_| super::http::Conn::connect(server.addr).unwrap())
        .collect();
    for conn in &mut conns {
        assert_eq!(conn.get("/").unwrap().status, 200);
    }
    // Idle for a second, each is parked by the next sweep.
    server.wait_until("three connections parked", || (parked() == 3).then_some(()));
    assert_eq!(conns[0].get("/").unwrap().status, 200);
    // Taken out of its parking for a second at least, until it is idle that long again.
    server.wait_until("one of them serving again", || {
        (parked() == 2).then_some(())
    });
    drop(conns);
    server.wait_until("none parked once closed", || (parked() == 0).then_some(()));
}
