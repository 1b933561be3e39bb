//! A worker process: what a forked child does from its first instruction to its exit.

mod accept;
mod activity;
mod channel;
mod connection;
mod flow;
mod forwarded;
mod gated;
mod h2_batch;
mod h2_flood;
mod h2_frames;
mod heap;
mod metrics;
mod parking;
mod prefixed;
mod protocol;
mod proxy_protocol;
mod reclaim;
mod response;
mod room;
mod sendfile;
mod service;
mod shed;
mod stop;
mod tls;
mod tracked;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use nix::sys::signal::Signal;
use nix::unistd::{Pid, getppid};
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::application::{AppService, WorkerContext};
use crate::config::{Config, TrustedProxies};
use crate::drain::Drain;
use crate::exit;
use crate::process::board::Seat;
use crate::process::control::{Leave, ToMaster};
use crate::process::handoff::Handoff;
use crate::process::metrics::Meter;
use crate::process::privileges;
use accept::Listener;
use channel::Channel;
use stop::Stops;

/// The limit on reading a request head when keep-alive is off (with keep-alive on, the
/// keep-alive timeout is the limit).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How a worker names itself in the log: its slot and its pid.
#[derive(Clone, Copy)]
struct Me(usize);

impl std::fmt::Display for Me {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "worker {} (pid {})", self.0, std::process::id())
    }
}

/// State every connection of the worker shares.
pub(crate) struct Shared {
    protocols: protocol::Builders,
    drain: Drain,
    /// What a request's extensions start as: the drain handle (see [`service::extensions`]).
    extensions: http::Extensions,
    /// Counts open sockets, upgraded ones included.
    tracker: TaskTracker,
    /// This worker's place on the accept-balancing board.
    seat: Seat,
    /// End of the window in which idle keep-alive connections are still answered; set just
    /// before the drain handle fires.
    linger_until: OnceLock<Instant>,
    /// How long a connection may go without a request before it is closed (GOAWAY for
    /// HTTP/2), a request head sent slowly included: --keepalive, or [`HEADER_READ_TIMEOUT`]
    /// when keep-alive is off.
    idle_timeout: Duration,
    /// Requests for this path are answered by prefork: 200, or 503 once stopping.
    health_path: Option<String>,
    /// What a request may hold before it is refused instead of reaching the application.
    limits: service::Limits,
    /// Set when a stop is requested, before the shutdown delay; the drain handle fires after.
    stopping: AtomicBool,
    channel: Arc<Channel>,
    /// The connection limit, and the wake-up when a connection closes.
    room: room::Room,
    /// The connections hyper serves, to shed idle ones when there is no room.
    connections: shed::Connections,
    /// How long a client may leave a write, a request body or an HTTP/2 stream waiting
    /// without progress (`--io-timeout`); zero for no limit.
    io_timeout: Duration,
    /// The worker's slot, for its log lines.
    slot: usize,
    /// Where requests are counted, with `--metrics-bind`.
    meter: Option<Meter>,
    /// Peers whose forwarding headers are believed.
    trusted: TrustedProxies,
    /// Every connection starts with a PROXY protocol header.
    proxy_protocol: bool,
    /// The TLS acceptor of the `https://` listeners, built by this worker from the files its
    /// configuration loaded; `None` when there is no certificate (and then no TLS listener).
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// Requests served, and after how many the worker asks to be replaced.
    served: AtomicU64,
    retire_after: Option<u64>,
}

impl Shared {
    fn linger_until(&self) -> Instant {
        self.linger_until
            .get()
            .copied()
            .unwrap_or_else(Instant::now)
    }

    fn healthy(&self) -> bool {
        !self.stopping.load(Ordering::Relaxed)
    }

    /// Counts a request; the one that reaches the limit asks the master for a replacement.
    fn count_request(&self) {
        let Some(limit) = self.retire_after else {
            return;
        };
        let served = self.served.fetch_add(1, Ordering::Relaxed) + 1;
        if served == limit {
            self.channel.send(ToMaster::Retiring);
        }
    }
}

/// Runs the worker and returns its exit status. Setup follows the order the process model
/// requires: signals first, then privileges dropped, then the parent-death signal, then the
/// runtime, the application, and only then accepting.
pub(crate) fn run<F, S>(handoff: Handoff, factory: &F) -> u8
where
    F: Fn(&WorkerContext) -> S,
    S: AppService,
{
    let me = Me(handoff.slot);
    if let Err(e) = prepare_process(handoff.master, &handoff.config) {
        error!("{me}: {e}");
        return exit::FAILURE;
    }
    let heap_managed = heap::keep_freed_memory();
    let runtime = match build_runtime(handoff.config.threads) {
        Ok(rt) => rt,
        Err(e) => {
            error!("{me}: cannot build the runtime: {e}");
            return exit::FAILURE;
        }
    };
    let code = runtime.block_on(serve(handoff, factory, heap_managed));
    // Tasks left at a cut (blocking file reads, say) must not hold up the exit.
    runtime.shutdown_background();
    code
}

fn prepare_process(master: Pid, config: &Config) -> Result<(), String> {
    crate::process::signals::reset_in_child()?;
    // Before the parent-death signal: the kernel clears that signal when the effective user or
    // group changes. A worker that cannot drop exits here: it never serves as root when a
    // user was asked for.
    privileges::drop_to(&config.credentials)?;
    nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)
        .map_err(|e| format!("cannot set the parent-death signal: {e}"))?;
    // The master may have died between fork and prctl; then no signal will ever come.
    if getppid() != master {
        return Err("the master exited while this worker was starting".to_string());
    }
    Ok(())
}

fn build_runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    builder
        .on_thread_park(accept::before_park)
        .enable_all()
        .build()
}

/// `heap_managed`: prefork tunes the worker's malloc (see [`heap`]), and so also trims it.
async fn serve<F, S>(handoff: Handoff, factory: &F, heap_managed: bool) -> u8
where
    F: Fn(&WorkerContext) -> S,
    S: AppService,
{
    let Handoff {
        slot,
        seat,
        meter,
        control,
        listeners,
        config,
        ..
    } = handoff;
    let me = Me(slot);
    let drain = Drain::new();
    let context = WorkerContext {
        id: slot,
        drain: drain.clone(),
        config: config.clone(),
    };
    let service = match catch_unwind(AssertUnwindSafe(|| factory(&context))) {
        Ok(service) => service,
        Err(_) => {
            error!("{me}: the application factory panicked");
            return exit::BOOT_FAILED;
        }
    };
    let channel = match Channel::new(control) {
        Ok(channel) => Arc::new(channel),
        Err(e) => {
            error!("{me}: cannot watch the control channel: {e}");
            return exit::FAILURE;
        }
    };
    let tls = match config.tls.as_ref().map(tls::acceptor).transpose() {
        Ok(tls) => tls,
        Err(e) => {
            error!("{me}: cannot set up TLS: {e}");
            return exit::FAILURE;
        }
    };
    let mut stops = match Stops::new(
        Arc::clone(&channel),
        config.shutdown_delay,
        config.graceful_timeout,
    ) {
        Ok(stops) => stops,
        Err(e) => {
            error!("{me}: cannot handle signals: {e}");
            return exit::FAILURE;
        }
    };
    // Every connection and request refers to this until the process exits, so it is leaked
    // rather than reference-counted: no atomic increments per connection and per request.
    let metered = (!config.metrics_bind.is_empty()).then_some(meter);
    let shared: &'static Shared = Box::leak(Box::new(Shared {
        protocols: protocols(&config, me, metered),
        extensions: service::extensions(&drain),
        drain,
        tracker: TaskTracker::new(),
        seat,
        linger_until: OnceLock::new(),
        idle_timeout: idle_timeout(&config),
        health_path: config.health_path.clone(),
        limits: service::Limits::new(&config),
        stopping: AtomicBool::new(false),
        channel: Arc::clone(&channel),
        room: room::Room::new(config.worker_connections),
        connections: shed::Connections::default(),
        io_timeout: config.io_timeout,
        slot,
        meter: metered,
        trusted: config.forwarded_allow_ips.clone(),
        proxy_protocol: config.proxy_protocol,
        tls,
        served: AtomicU64::new(0),
        retire_after: retire_after(&config),
    }));
    let mut accepting = Vec::new();
    for bound in listeners {
        if bound.metrics {
            metrics::serve(bound, meter.metrics(), seat.board(), shared.drain.clone());
            continue;
        }
        match Listener::adopt(bound) {
            Ok(listener) => {
                let task = accept::run(listener, service.clone(), shared);
                accepting.push(tokio::spawn(task));
            }
            Err(e) => {
                error!("{me}: cannot use a listener: {e}");
                return exit::FAILURE;
            }
        }
    }
    tokio::spawn(channel::heartbeat(Arc::clone(&channel), config.timeout));
    if !config.keepalive.is_zero() {
        tokio::spawn(parking::sweep(shared));
    }
    if heap_managed {
        tokio::spawn(reclaim::after_load_falls(shared));
    }
    shared.seat.accepting(true);
    channel.send(ToMaster::Ready);

    let Leave::Drain {
        mut start,
        mut deadline,
    } = stops.next().await
    else {
        return quit(me, shared);
    };
    shared.stopping.store(true, Ordering::Relaxed);
    if start > Instant::now() {
        info!(
            "{me}: serving for the shutdown delay ({:.1?}), health checks failing",
            start - Instant::now()
        );
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(start.into()) => break,
                stop = stops.next() => match stop {
                    Leave::Quit => return quit(me, shared),
                    Leave::Drain { start: s, deadline: d } => {
                        start = start.min(s);
                        deadline = deadline.min(d);
                    }
                }
            }
        }
    }
    // Done means: every accept loop has taken what was queued, then every socket closed.
    let done = async {
        for task in accepting {
            let _ = task.await;
        }
        shared.tracker.wait().await;
    };
    drain_until(me, shared, &mut stops, deadline, &config, done).await
}

fn quit(me: Me, shared: &Shared) -> u8 {
    info!(
        "{me}: quick stop, closing {} connection(s) now",
        open(shared)
    );
    cut(shared);
    exit::OK
}

/// Counts the connections a stop ends before they are done.
fn cut(shared: &Shared) {
    if let Some(meter) = &shared.meter {
        meter.cut(open(shared));
    }
}

/// Drains: fires the drain handle, stops accepting once the queue is empty, and waits until
/// every connection has closed, cutting what is left at the deadline. A later request to
/// stop can only bring the end closer.
async fn drain_until(
    me: Me,
    shared: &Shared,
    stops: &mut Stops,
    mut deadline: Instant,
    config: &Config,
    done: impl Future<Output = ()>,
) -> u8 {
    let started = Instant::now();
    let _ = shared
        .linger_until
        .set((started + config.linger).min(deadline));
    shared.seat.accepting(false);
    if let Some(meter) = &shared.meter {
        meter.draining();
    }
    shared.drain.start();
    shared.tracker.close();
    info!(
        "{me}: draining {} connection(s), deadline in {:.1?}",
        open(shared),
        deadline.saturating_duration_since(started)
    );
    tokio::pin!(done);
    loop {
        tokio::select! {
            () = &mut done => {
                info!("{me}: drained in {:.1?}", started.elapsed());
                return exit::OK;
            }
            () = tokio::time::sleep_until(deadline.into()) => {
                warn!("{me}: deadline reached, cutting {} connection(s)", open(shared));
                cut(shared);
                return exit::OK;
            }
            stop = stops.next() => match stop {
                Leave::Quit => return quit(me, shared),
                Leave::Drain { deadline: sooner, .. } => deadline = deadline.min(sooner),
            }
        }
    }
}

/// `max_requests` plus this worker's share of the jitter; `None` when unlimited. The jitter is
/// drawn from the pid, which differs between workers started together.
fn retire_after(config: &Config) -> Option<u64> {
    if config.max_requests == 0 {
        return None;
    }
    let spread = config.max_requests_jitter.saturating_add(1);
    let draw = u64::from(std::process::id()).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    Some(config.max_requests.saturating_add(draw % spread))
}

/// The keep-alive timeout, or with keep-alive off the limit on reading request headers.
fn idle_timeout(config: &Config) -> Duration {
    if config.keepalive.is_zero() {
        HEADER_READ_TIMEOUT
    } else {
        config.keepalive
    }
}

/// Open sockets, upgraded ones included.
fn open(shared: &Shared) -> usize {
    shared.tracker.len()
}

/// The largest request head (request line and header fields) read, in bytes: what one
/// connection may make the worker buffer before hyper answers 431 and closes it. It is also
/// the most an HTTP/2 header list may hold.
const MAX_HEAD: usize = 64 * 1024;

/// How many header fields hyper's HTTP/1 parser takes without being told: it keeps room for
/// them on the stack, and only a larger number costs an allocation per request.
const HYPER_MAX_HEADERS: usize = 100;

/// HTTP/2's allowance per header field on top of its name and value (RFC 9113, 6.5.2).
const HTTP2_FIELD_OVERHEAD: usize = 32;

/// HTTP/2 pseudo-header fields of a request, which stand in for the request line.
const HTTP2_PSEUDO_FIELDS: usize = 4;

fn protocols(config: &Config, me: Me, meter: Option<Meter>) -> protocol::Builders {
    let mut http1 = http1::Builder::new();
    http1
        .keep_alive(!config.keepalive.is_zero())
        // The connection's task times out heads and idle keep-alive connections itself
        // (`Activity::idle`), without hyper's timer per request.
        .header_read_timeout(None)
        // The read buffer holds the head until it is parsed. hyper stops growing it at this
        // size but reads into all of its spare room, so a head somewhat larger can arrive
        // whole in it: the bound on the head itself refuses that one.
        .max_buf_size(MAX_HEAD)
        .max_header_size(MAX_HEAD);
    // Past its own number of fields hyper answers 431 itself; below it the service does.
    if config.limit_request_fields > HYPER_MAX_HEADERS {
        http1.max_headers(config.limit_request_fields);
    }
    // hyper's defaults against rapid reset (pending accept resets) and CONTINUATION floods
    // (bounded by the header list size) are kept.
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(config.http2_max_concurrent_streams)
        .max_header_list_size(header_list_size(config));
    protocol::Builders {
        http1,
        http2,
        floods: h2_flood::Floods::new(me),
        parked: Default::default(),
        meter,
    }
}

/// The largest HTTP/2 header list: what the HTTP/1 limits allow, counted as HTTP/2 counts, and
/// never more than [`MAX_HEAD`]. A larger one is answered 431 by the h2 library.
fn header_list_size(config: &Config) -> u32 {
    let unlimited = config.limit_request_line == 0 || config.limit_request_field_size == 0;
    let allowed = if unlimited {
        MAX_HEAD
    } else {
        let fields = config.limit_request_fields + HTTP2_PSEUDO_FIELDS;
        config
            .limit_request_line
            .saturating_add(
                config
                    .limit_request_fields
                    .saturating_mul(config.limit_request_field_size),
            )
            .saturating_add(fields.saturating_mul(HTTP2_FIELD_OVERHEAD))
    };
    // At most MAX_HEAD, which fits in a u32.
    allowed.min(MAX_HEAD) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http2_header_list_follows_the_limits_up_to_the_head_bound() {
        assert_eq!(header_list_size(&Config::default()) as usize, MAX_HEAD);
        let small = Config::default()
            .limit_request_line(100)
            .limit_request_fields(10)
            .limit_request_field_size(50);
        // The line, ten fields of 50 bytes, and 32 bytes for each of them and of 4 pseudo-fields.
        assert_eq!(header_list_size(&small), 100 + 10 * 50 + 14 * 32);
        let unlimited = small.limit_request_field_size(0);
        assert_eq!(header_list_size(&unlimited) as usize, MAX_HEAD);
    }
}
