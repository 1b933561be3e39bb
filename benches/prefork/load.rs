//! The load generator: a hyper HTTP/1.1 client with a current-thread tokio runtime per thread,
//! closed loop, either over `conns` keep-alive connections or with a fresh connection for every
//! request (`conns` of them at a time, each request saying `Connection: close`). Every request
//! is timed from just before it is sent (before the connect, for a fresh connection) to the last
//! byte of its body. `wrk` can stand in for it where installed (`PREFORK_BENCH_GEN=wrk`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONNECTION, HOST};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use nix::unistd::Pid;
use tokio::net::TcpStream;

use crate::support::procfs::{Mem, cpu_time, mem, own_cpu_time, sockets};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    KeepAlive,
    ConnPerRequest,
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Mode::KeepAlive => "keep-alive",
            Mode::ConnPerRequest => "conn-per-request",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generator {
    Rust,
    Wrk,
}

/// One measurement.
#[derive(Clone)]
pub struct Spec {
    pub addr: SocketAddr,
    pub path: String,
    pub mode: Mode,
    pub conns: usize,
    /// Load before the measurement starts, not counted.
    pub warmup: Duration,
    pub duration: Duration,
    /// Count the response bodies (for `/pid`: requests per worker).
    pub tally: bool,
    /// The server's processes, for their CPU time and their peak memory during the run.
    pub server: Vec<Pid>,
}

/// What a measurement found.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub requests: u64,
    pub errors: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    pub p50: Duration,
    pub p99: Duration,
    /// Responses per distinct body, when tallied.
    pub tally: HashMap<String, u64>,
    /// CPU time of the load generator during the measurement.
    pub client_cpu: Duration,
    /// CPU time of the server's processes during the measurement.
    pub server_cpu: Duration,
    /// Highest memory of each server process seen during the measurement.
    pub peak_mem: Vec<(Pid, Mem)>,
    /// Connections each server process held when the measurement began (sockets open then,
    /// less those open before the load started).
    pub conns_held: Vec<(Pid, usize)>,
}

impl Stats {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn bytes_per_sec(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// CPU cores busy on average: client, server.
    pub fn cores(&self) -> (f64, f64) {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        (
            self.client_cpu.as_secs_f64() / secs,
            self.server_cpu.as_secs_f64() / secs,
        )
    }
}

/// Runs one measurement with `generator` (the Rust client whenever bodies are tallied).
pub fn measure(generator: Generator, threads: usize, spec: &Spec) -> Stats {
    if generator == Generator::Wrk && !spec.tally {
        wrk(threads, spec)
    } else {
        run(threads, spec)
    }
}

/// When requests count: those sent at or after `from` and finished by `until`.
#[derive(Clone, Copy)]
struct Window {
    from: Instant,
    until: Instant,
}

impl Window {
    fn counts(&self, sent: Instant, done: Instant) -> bool {
        sent >= self.from && done <= self.until
    }
}

#[derive(Default)]
struct Record {
    latencies_us: Vec<u32>,
    requests: u64,
    errors: u64,
    bytes: u64,
    tally: HashMap<String, u64>,
}

impl Record {
    fn done(&mut self, window: Window, sent: Instant, result: Result<Answer, ()>) {
        let done = Instant::now();
        if !window.counts(sent, done) {
            return;
        }
        match result {
            Ok(answer) if answer.status == StatusCode::OK => {
                self.requests += 1;
                self.bytes += answer.bytes;
                let us = (done - sent).as_micros().min(u128::from(u32::MAX)) as u32;
                self.latencies_us.push(us);
                if let Some(body) = answer.body {
                    let key = String::from_utf8_lossy(&body).trim().to_string();
                    *self.tally.entry(key).or_default() += 1;
                }
            }
            _ => self.errors += 1,
        }
    }
}

struct Answer {
    status: StatusCode,
    bytes: u64,
    body: Option<Vec<u8>>,
    /// The server said `Connection: close` (it drains): the next request needs a new one.
    closes: bool,
}

struct Target {
    addr: SocketAddr,
    path: String,
    tally: bool,
    window: Window,
}

/// The Rust generator.
pub fn run(threads: usize, spec: &Spec) -> Stats {
    let start = Instant::now();
    let window = Window {
        from: start + spec.warmup,
        until: start + spec.warmup + spec.duration,
    };
    let target = Arc::new(Target {
        addr: spec.addr,
        path: spec.path.clone(),
        tally: spec.tally,
        window,
    });

    // CPU and memory are sampled on a thread of their own, across the counted window only.
    let sampler = Sampler::start(&spec.server, window);

    // Each thread runs its share of the connections on a runtime of its own, as wrk's threads
    // each run an event loop. On one work-stealing runtime the client spent more CPU per
    // request against prefork than against the baseline, so the ratio measured the client
    // (docs/performance.md).
    let records: Vec<Record> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..threads)
            .map(|t| {
                let conns = spec.conns / threads + usize::from(t < spec.conns % threads);
                let target = Arc::clone(&target);
                scope.spawn(move || client_thread(&target, spec.mode, conns))
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().expect("a load thread panicked"))
            .collect()
    });
    let (sampled, conns_held) = sampler.finish();

    let mut stats = Stats {
        elapsed: spec.duration,
        client_cpu: sampled.client_cpu,
        server_cpu: sampled.server_cpu,
        peak_mem: sampled.peak_mem,
        conns_held,
        ..Stats::default()
    };
    let mut latencies = Vec::new();
    for record in records {
        stats.requests += record.requests;
        stats.errors += record.errors;
        stats.bytes += record.bytes;
        latencies.extend(record.latencies_us);
        for (body, n) in record.tally {
            *stats.tally.entry(body).or_default() += n;
        }
    }
    latencies.sort_unstable();
    stats.p50 = percentile(&latencies, 0.50);
    stats.p99 = percentile(&latencies, 0.99);
    stats
}

/// One of the generator's threads: `conns` connections (or requests in flight) on a
/// current-thread runtime.
fn client_thread(target: &Arc<Target>, mode: Mode, conns: usize) -> Vec<Record> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build a load thread's runtime");
    rt.block_on(async {
        let tasks: Vec<_> = (0..conns)
            .map(|_| {
                let target = Arc::clone(target);
                tokio::spawn(async move {
                    let mut record = Record::default();
                    match mode {
                        Mode::KeepAlive => keep_alive(&target, &mut record).await,
                        Mode::ConnPerRequest => conn_per_request(&target, &mut record).await,
                    }
                    record
                })
            })
            .collect();
        let mut records = Vec::new();
        for task in tasks {
            records.push(task.await.expect("a load task panicked"));
        }
        records
    })
}

/// Samples the server's CPU, memory and sockets on a thread of its own while the load runs.
struct Sampler {
    pids: Vec<Pid>,
    sockets_before: Vec<usize>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Sampled>,
}

impl Sampler {
    fn start(pids: &[Pid], window: Window) -> Sampler {
        let sockets_before = settled_sockets(pids);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let pids = pids.to_vec();
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || sample(&pids, window, &stop))
        };
        Sampler {
            pids: pids.to_vec(),
            sockets_before,
            stop,
            thread,
        }
    }

    /// Stops sampling: what was sampled, and the connections each process held.
    fn finish(self) -> (Sampled, Vec<(Pid, usize)>) {
        self.stop.store(true, Ordering::Relaxed);
        let sampled = self.thread.join().expect("the sampler panicked");
        let held = held(&self.pids, &sampled.sockets, &self.sockets_before);
        (sampled, held)
    }
}

/// The sockets each process has open once the count has stopped changing, so that the
/// connections of a previous measurement, which the server may still be closing, are gone
/// (waits at most a second).
fn settled_sockets(pids: &[Pid]) -> Vec<usize> {
    let count = || pids.iter().map(|&p| sockets(p)).collect::<Vec<_>>();
    let until = Instant::now() + Duration::from_secs(1);
    let mut last = count();
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let now = count();
        if now == last || Instant::now() >= until {
            return now;
        }
        last = now;
    }
}

/// Connections held per process: sockets open during the load less those open before.
fn held(pids: &[Pid], during: &[usize], before: &[usize]) -> Vec<(Pid, usize)> {
    pids.iter()
        .zip(during.iter().zip(before))
        .map(|(&pid, (d, b))| (pid, d.saturating_sub(*b)))
        .collect()
}

struct Sampled {
    client_cpu: Duration,
    server_cpu: Duration,
    peak_mem: Vec<(Pid, Mem)>,
    /// Sockets open in each server process as the window began.
    sockets: Vec<usize>,
}

fn sample(pids: &[Pid], window: Window, stop: &AtomicBool) -> Sampled {
    let server_cpu = || pids.iter().map(|&p| cpu_time(p)).sum::<Duration>();
    let mut peak: Vec<(Pid, Mem)> = pids.iter().map(|&p| (p, Mem::default())).collect();
    let sleep_until = |at: Instant| {
        while Instant::now() < at && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(
                at.saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(50)),
            );
        }
    };
    sleep_until(window.from);
    let (client0, server0) = (own_cpu_time(), server_cpu());
    let open: Vec<usize> = pids.iter().map(|&p| sockets(p)).collect();
    // Memory every 100 ms (reading smaps_rollup costs the server a little; not more often).
    while Instant::now() < window.until && !stop.load(Ordering::Relaxed) {
        for (pid, m) in &mut peak {
            if let Some(now) = mem(*pid) {
                *m = m.max(now);
            }
        }
        sleep_until((Instant::now() + Duration::from_millis(100)).min(window.until));
    }
    let (client1, server1) = (own_cpu_time(), server_cpu());
    Sampled {
        client_cpu: client1.saturating_sub(client0),
        server_cpu: server1.saturating_sub(server0),
        peak_mem: peak,
        sockets: open,
    }
}

fn percentile(sorted_us: &[u32], p: f64) -> Duration {
    if sorted_us.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    Duration::from_micros(u64::from(sorted_us[rank - 1]))
}

type Conn = http1::Connection<TokioIo<TcpStream>, Empty<Bytes>>;

pub async fn connect(addr: SocketAddr) -> Option<(SendRequest<Empty<Bytes>>, Conn)> {
    let stream = TcpStream::connect(addr).await.ok()?;
    stream.set_nodelay(true).ok()?;
    http1::handshake(TokioIo::new(stream)).await.ok()
}

/// One GET on a connection whose `Connection` future runs elsewhere; whether it was answered
/// with 200 and a whole body.
pub async fn get_ok(tx: &mut SendRequest<Empty<Bytes>>, path: &str) -> bool {
    matches!(exchange(tx, path, false, false).await, Ok(a) if a.status == StatusCode::OK)
}

/// One request and its whole response.
async fn exchange(
    tx: &mut SendRequest<Empty<Bytes>>,
    path: &str,
    close: bool,
    keep_body: bool,
) -> Result<Answer, hyper::Error> {
    tx.ready().await?;
    let mut req = Request::get(path).header(HOST, "bench");
    if close {
        req = req.header(CONNECTION, "close");
    }
    let resp = tx
        .send_request(req.body(Empty::new()).expect("a valid request"))
        .await?;
    let status = resp.status();
    let closes = resp
        .headers()
        .get(CONNECTION)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    let mut body = resp.into_body();
    let mut bytes = 0u64;
    let mut kept = keep_body.then(Vec::new);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            bytes += data.len() as u64;
            if let Some(kept) = &mut kept {
                kept.extend_from_slice(&data);
            }
        }
    }
    Ok(Answer {
        status,
        bytes,
        body: kept,
        closes,
    })
}

/// Runs `exchange` while driving its connection in the same task (no channel hop to a
/// connection task). The connection may finish first, having read the whole response of a
/// request that said `Connection: close`; the exchange then still completes from what it
/// delivered (bounded, in case the connection failed instead).
async fn drive(
    exchange: impl Future<Output = Result<Answer, hyper::Error>>,
    conn: std::pin::Pin<&mut Conn>,
) -> Result<Answer, ()> {
    let mut exchange = std::pin::pin!(exchange);
    tokio::select! {
        biased;
        answer = exchange.as_mut() => return answer.map_err(drop),
        _ = conn => {}
    }
    match tokio::time::timeout(Duration::from_secs(1), exchange).await {
        Ok(answer) => answer.map_err(drop),
        Err(_) => Err(()),
    }
}

/// A pause after a failure, so that a refused or broken connection does not spin.
const BACKOFF: Duration = Duration::from_millis(2);

/// Records one attempt; after a failure, pauses before the next. Returns whether it failed.
async fn attempt(
    record: &mut Record,
    window: Window,
    sent: Instant,
    result: Result<Answer, ()>,
) -> bool {
    let failed = result.is_err();
    record.done(window, sent, result);
    if failed {
        tokio::time::sleep(BACKOFF).await;
    }
    failed
}

async fn keep_alive(target: &Target, record: &mut Record) {
    let window = target.window;
    'connection: while Instant::now() < window.until {
        let sent = Instant::now();
        let Some((mut tx, conn)) = connect(target.addr).await else {
            attempt(record, window, sent, Err(())).await;
            continue;
        };
        let mut conn = std::pin::pin!(conn);
        while Instant::now() < window.until {
            let sent = Instant::now();
            let exchange = exchange(&mut tx, &target.path, false, target.tally);
            let result = drive(exchange, conn.as_mut()).await;
            // As any HTTP/1.1 client does: after `Connection: close`, a new connection.
            let closes = result.as_ref().is_ok_and(|answer| answer.closes);
            if attempt(record, window, sent, result).await || closes {
                continue 'connection;
            }
        }
    }
}

async fn conn_per_request(target: &Target, record: &mut Record) {
    let window = target.window;
    while Instant::now() < window.until {
        let sent = Instant::now();
        let Some((mut tx, conn)) = connect(target.addr).await else {
            attempt(record, window, sent, Err(())).await;
            continue;
        };
        let mut conn = std::pin::pin!(conn);
        let exchange = exchange(&mut tx, &target.path, true, target.tally);
        let result = drive(exchange, conn.as_mut()).await;
        attempt(record, window, sent, result).await;
    }
}

/// Whether `wrk` can be run.
pub fn wrk_available() -> bool {
    Command::new("wrk")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("wrk"))
}

/// The same measurement with wrk: `threads` threads, `conns` connections; a warm-up run first.
fn wrk(threads: usize, spec: &Spec) -> Stats {
    let url = format!("http://{}{}", spec.addr, spec.path);
    let threads = threads.clamp(1, spec.conns.max(1));
    let invoke = |duration: Duration| -> (String, Duration) {
        let mut cmd = Command::new("wrk");
        cmd.args([
            "-t",
            &threads.to_string(),
            "-c",
            &spec.conns.to_string(),
            "-d",
            // wrk takes whole seconds.
            &format!("{}s", duration.as_secs_f64().ceil().max(1.0)),
            "--latency",
        ]);
        if spec.mode == Mode::ConnPerRequest {
            cmd.args(["-H", "Connection: close"]);
        }
        cmd.arg(&url);
        let before = children_cpu();
        let out = cmd.output().expect("run wrk");
        assert!(
            out.status.success(),
            "wrk failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            children_cpu().saturating_sub(before),
        )
    };
    if !spec.warmup.is_zero() {
        invoke(spec.warmup);
    }
    let server_cpu = || spec.server.iter().map(|&p| cpu_time(p)).sum::<Duration>();
    let server0 = server_cpu();
    // Memory and connections held are sampled from shortly after wrk has connected.
    let start = Instant::now();
    let window = Window {
        from: start + Duration::from_millis(200).min(spec.duration / 2),
        until: start + spec.duration,
    };
    let sampler = Sampler::start(&spec.server, window);
    let (out, client_cpu) = invoke(spec.duration);
    let (sampled, conns_held) = sampler.finish();
    let server_cpu = server_cpu().saturating_sub(server0);
    let mut stats = Stats {
        elapsed: spec.duration,
        client_cpu,
        server_cpu,
        peak_mem: sampled.peak_mem,
        conns_held,
        ..Stats::default()
    };
    let mut transfer = 0.0;
    for line in out.lines() {
        let line = line.trim();
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.get(1..3) == Some(&["requests", "in"]) {
            // "123456 requests in 3.00s, 15.19MB read"
            stats.requests = words[0].parse().unwrap_or(0);
            let elapsed = wrk_duration(words.get(3).map_or("", |w| w.trim_end_matches(',')));
            if !elapsed.is_zero() {
                stats.elapsed = elapsed;
            }
        } else if words.first() == Some(&"50%") {
            stats.p50 = words.get(1).map_or(Duration::ZERO, |w| wrk_duration(w));
        } else if words.first() == Some(&"99%") {
            stats.p99 = words.get(1).map_or(Duration::ZERO, |w| wrk_duration(w));
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            stats.errors += rest.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            stats.errors += rest
                .split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        } else if let Some(rest) = line.strip_prefix("Transfer/sec:") {
            transfer = wrk_bytes(rest.trim());
        }
    }
    // Headers included: wrk counts every byte read.
    stats.bytes = (transfer * stats.elapsed.as_secs_f64()) as u64;
    stats
}

fn wrk_duration(text: &str) -> Duration {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: f64 = number.parse().unwrap_or(0.0);
    Duration::from_secs_f64(match unit {
        "us" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        _ => 0.0,
    })
}

fn wrk_bytes(text: &str) -> f64 {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: f64 = number.parse().unwrap_or(0.0);
    n * match unit {
        "KB" => 1024.0,
        "MB" => 1024.0 * 1024.0,
        "GB" => 1024.0 * 1024.0 * 1024.0,
        _ => 1.0,
    }
}

/// CPU time of the waited-for children of this process (wrk, once it has exited).
fn children_cpu() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_CHILDREN).map_or(Duration::ZERO, |u| {
        let t = |tv: nix::sys::time::TimeVal| {
            Duration::from_secs(tv.tv_sec() as u64) + Duration::from_micros(tv.tv_usec() as u64)
        };
        t(u.user_time()) + t(u.system_time())
    })
}
