//! The metrics endpoint (`--metrics-bind`): `GET /metrics` answered with the whole shared
//! table in the OpenMetrics text format, which Prometheus reads. Every worker accepts on the
//! metrics listener and any of them answers for all: the table is shared.

use std::convert::Infallible;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, error};

use crate::drain::Drain;
use crate::process::board::Board;
use crate::process::listeners::{Listener, Socket};
use crate::process::metrics::{BUCKETS, ExitCause, Metrics, Reading};

const CONTENT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Answers scrapes on `listener`, on a task of its own, until the drain begins; a scrape in
/// progress finishes.
pub(crate) fn serve(listener: Listener, metrics: Metrics, board: Board, drain: Drain) {
    let mut registry = Registry::with_prefix("prefork");
    registry.register_collector(Box::new(Table { metrics, board }));
    let registry: &'static Registry = Box::leak(Box::new(registry));
    let registered = match listener.socket {
        Socket::Tcp(l) => tokio::net::TcpListener::from_std(l).map(|l| {
            let accepted = async move || l.accept().await.map(|(stream, _)| stream);
            tokio::spawn(accept(accepted, registry, drain));
        }),
        Socket::Unix(l) => tokio::net::UnixListener::from_std(l).map(|l| {
            let accepted = async move || l.accept().await.map(|(stream, _)| stream);
            tokio::spawn(accept(accepted, registry, drain));
        }),
    };
    if let Err(e) = registered {
        error!("cannot serve the metrics: {e}");
    }
}

/// Serves each connection `next` accepts until the drain begins.
async fn accept<IO>(
    mut next: impl AsyncFnMut() -> std::io::Result<IO>,
    registry: &'static Registry,
    drain: Drain,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let draining = drain.draining();
    tokio::pin!(draining);
    loop {
        tokio::select! {
            () = &mut draining => return,
            accepted = next() => match accepted {
                Ok(stream) => spawn(stream, registry),
                Err(e) => debug!("metrics: accept failed: {e}"),
            },
        }
    }
}

fn spawn<IO>(stream: IO, registry: &'static Registry)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let service =
            service_fn(move |req| async move { Ok::<_, Infallible>(answer(&req, registry)) });
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service);
        if let Err(e) = conn.await {
            debug!("metrics connection ended: {e}");
        }
    });
}

fn answer(req: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: the metrics are at /metrics\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n");
    }
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, registry) {
        error!("cannot encode the metrics: {e}");
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics\n",
        );
    }
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT));
    response
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
}

/// The shared table, read afresh at every scrape.
struct Table {
    metrics: Metrics,
    board: Board,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the shared metrics table")
    }
}

impl Collector for Table {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let board = self.board;
        let reading = self.metrics.read(|cell| u64::from(board.open_in(cell)));
        encode(&reading, &mut encoder)
    }
}

/// A counter without labels.
fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let counter = ConstCounter::new(value);
    counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)
}

/// A gauge without labels.
fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
}

/// One series per `(label value, number)` of `values`, under label `label`.
fn labelled<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (String, M)>,
    metric_type: prometheus_client::metrics::MetricType,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (value, metric) in values {
        let labels = [(label, value)];
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn encode(r: &Reading, e: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
    use prometheus_client::metrics::MetricType::{Counter, Gauge};
    let sum = |f: fn(&crate::process::metrics::SlotReading) -> u64| -> u64 {
        r.slots.iter().map(f).sum()
    };
    let per_slot = |f: fn(&crate::process::metrics::SlotReading) -> u64| {
        r.slots
            .iter()
            .map(move |s| (s.slot.to_string(), ConstCounter::new(f(s))))
            .collect::<Vec<_>>()
    };
    counter(
        e,
        "requests",
        "Requests answered, by every worker ever.",
        sum(|s| s.requests),
    )?;
    labelled(
        e,
        "worker_requests",
        "Requests answered, by worker slot.",
        "worker",
        per_slot(|s| s.requests),
        Counter,
    )?;
    let classes = (0..5).map(|class| {
        let n: u64 = r.slots.iter().map(|s| s.responses[class]).sum();
        (format!("{}xx", class + 1), ConstCounter::new(n))
    });
    labelled(
        e,
        "responses",
        "Responses by status class.",
        "class",
        classes,
        Counter,
    )?;
    // The count of each bucket alone: the encoder adds them up into the cumulative counts the
    // format wants.
    let buckets: Vec<(f64, u64)> = BUCKETS
        .iter()
        .chain([&f64::INFINITY])
        .enumerate()
        .map(|(index, bound)| (*bound, r.slots.iter().map(|s| s.durations[index]).sum()))
        .collect();
    let count = buckets.iter().map(|(_, n)| n).sum();
    let seconds: f64 = r.slots.iter().map(|s| s.duration.as_secs_f64()).sum();
    let mut histogram = e.encode_descriptor(
        "request_duration",
        "Time from a request's arrival to its response's head.",
        Some(&Unit::Seconds),
        prometheus_client::metrics::MetricType::Histogram,
    )?;
    histogram.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
        seconds, count, &buckets, None,
    )?;
    counter(
        e,
        "connections_accepted",
        "Connections accepted.",
        sum(|s| s.connections),
    )?;
    counter(
        e,
        "connections_cut",
        "Connections still open when a drain's deadline or a quick stop ended their worker.",
        sum(|s| s.cut),
    )?;
    let open: u64 = r.workers.iter().map(|w| w.open).sum();
    gauge(
        e,
        "connections_open",
        "Connections open now, upgraded ones included.",
        open,
    )?;
    gauge(
        e,
        "connections_parked",
        "Idle HTTP/1 keep-alive connections among the open ones that gave their buffers back.",
        r.workers.iter().map(|w| w.parked).sum(),
    )?;
    let workers_open = r
        .workers
        .iter()
        .map(|w| (w.slot.to_string(), ConstGauge::new(w.open)));
    labelled(
        e,
        "worker_connections_open",
        "Connections open now, by worker slot.",
        "worker",
        workers_open,
        Gauge,
    )?;
    let in_flight: u64 = r.workers.iter().map(|w| w.in_flight).sum();
    gauge(
        e,
        "requests_in_flight",
        "Requests received and not yet answered.",
        in_flight,
    )?;
    let states = [
        (
            "serving",
            r.workers
                .iter()
                .map(|w| w.processes - w.draining)
                .sum::<usize>(),
        ),
        ("draining", r.workers.iter().map(|w| w.draining).sum()),
    ];
    labelled(
        e,
        "workers",
        "Worker processes now, by state; a drain in progress shows as draining workers.",
        "state",
        states.map(|(state, n)| (state.to_string(), ConstGauge::new(n as u64))),
        Gauge,
    )?;
    counter(
        e,
        "worker_starts",
        "Worker processes started.",
        r.worker_starts,
    )?;
    let exits = ExitCause::ALL.iter().map(|cause| {
        (
            cause.label().to_string(),
            ConstCounter::new(r.worker_exits[*cause as usize]),
        )
    });
    labelled(
        e,
        "worker_exits",
        "Worker processes ended, by cause.",
        "cause",
        exits,
        Counter,
    )?;
    let reloads = [
        ("completed", r.reloads_completed),
        ("failed", r.reloads_failed),
    ]
    .map(|(result, n)| (result.to_string(), ConstCounter::new(n)));
    labelled(
        e,
        "reloads",
        "Reloads, by how they ended.",
        "result",
        reloads,
        Counter,
    )?;
    gauge(
        e,
        "generation",
        "The serving generation: 0 at start, one more at each reload.",
        r.generation,
    )?;
    gauge(
        e,
        "stopping",
        "1 once a stop has begun.",
        u64::from(r.stopping),
    )?;
    Ok(())
}
