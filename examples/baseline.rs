//! The baseline of the benchmarks: the same applications prefork serves, in one process on a
//! multi-thread tokio runtime, the way an application is served without prefork.
//!
//! ```text
//! cargo run --release --example baseline -- --threads 2 --bind 127.0.0.1:0 [--root DIR | --bare]
//!     [--keepalive SECONDS]
//! ```
//!
//! Without `--root` it serves the demo's `GET /` ("Hello, World!", the same handler as
//! `examples/demo.rs`); with `--root` it serves the directory with prefork's built-in static
//! app (`prefork::app::static_files`, the very service the `prefork` binary uses); with `--bare`
//! it serves `examples/bare.rs`'s `tower::service_fn` (`examples/common/hello.rs`), the way
//! hyper's own examples serve one. Connections
//! get the HTTP settings prefork's workers use by default: HTTP/1.1 with keep-alive and a 5 s
//! idle timeout (`--keepalive` sets another), or HTTP/2, and TCP_NODELAY. The listen backlog is prefork's default, 2048.
//!
//! It logs `listening on http://ADDR` to stderr like prefork does. TERM is a graceful stop in
//! the usual hyper way: stop accepting, let every connection finish what it is doing (idle
//! keep-alive connections close at once), exit 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[path = "common/hello.rs"]
mod hello;

/// prefork's default listen backlog.
const BACKLOG: i32 = 2048;
/// prefork's default keep-alive idle timeout, the default of `--keepalive`.
const KEEPALIVE: Duration = Duration::from_secs(5);
/// The longest a graceful stop waits for connections (prefork's default graceful_timeout).
const GRACEFUL_TIMEOUT: Duration = Duration::from_secs(30);

/// What the baseline serves.
enum App {
    /// The demo's `GET /`, through axum.
    Demo,
    /// A directory, through prefork's static app.
    Static(PathBuf),
    /// The bare `service_fn` of `examples/bare.rs`.
    Bare,
}

struct Args {
    threads: usize,
    bind: SocketAddr,
    app: App,
    keepalive: Duration,
}

fn usage(message: &str) -> ExitCode {
    eprintln!("baseline: error: {message}");
    eprintln!(
        "usage: baseline [--threads N] [--bind HOST:PORT] [--root DIR | --bare] \
         [--keepalive SECONDS]"
    );
    ExitCode::from(2)
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        bind: "127.0.0.1:8000".parse().expect("a socket address"),
        app: App::Demo,
        keepalive: KEEPALIVE,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            // Accepted so that the benchmarks can give both servers the same first word.
            "serve" => {}
            "--threads" | "-t" => {
                args.threads = value()?.parse().map_err(|e| format!("--threads: {e}"))?;
                if args.threads == 0 {
                    return Err("--threads must be at least 1".to_string());
                }
            }
            "--bind" | "-b" => {
                args.bind = value()?.parse().map_err(|e| format!("--bind: {e}"))?;
            }
            "--root" => args.app = App::Static(PathBuf::from(value()?)),
            "--bare" => args.app = App::Bare,
            "--keepalive" => {
                let seconds = value()?.parse().map_err(|e| format!("--keepalive: {e}"))?;
                args.keepalive = Duration::from_secs(seconds);
            }
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(args) => args,
        Err(message) => return usage(&message),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
        .expect("build the runtime");
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("baseline: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The demo's `/`, handler for handler.
fn hello_router() -> Router {
    Router::new().route("/", get(|| async { "Hello, World!" }))
}

async fn run(args: Args) -> std::io::Result<()> {
    let listener = bind(args.bind)?;
    eprintln!(
        "baseline: listening on http://{} ({} runtime thread(s))",
        listener.local_addr()?,
        args.threads
    );
    match args.app {
        App::Static(root) => {
            let app = prefork::app::static_files(&prefork::Config::default().root(root))?;
            serve(listener, TowerToHyperService::new(app), args.keepalive).await
        }
        App::Demo => {
            let app = TowerToHyperService::new(hello_router());
            serve(listener, app, args.keepalive).await
        }
        App::Bare => {
            let app = tower::service_fn(hello::hello);
            serve(listener, TowerToHyperService::new(app), args.keepalive).await
        }
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

async fn serve<S, B>(listener: TcpListener, service: S, keepalive: Duration) -> std::io::Result<()>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(keepalive);
    builder.http2().timer(TokioTimer::new());

    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mut term = signal(SignalKind::terminate())?;
    loop {
        let (stream, _) = tokio::select! {
            _ = term.recv() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    eprintln!("baseline: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        let service = service.clone();
        let stop = stop.clone();
        tracker.spawn(async move {
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                () = stop.cancelled() => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        });
    }
    drop(listener);
    stop.cancel();
    tracker.close();
    if tokio::time::timeout(GRACEFUL_TIMEOUT, tracker.wait())
        .await
        .is_err()
    {
        eprintln!("baseline: graceful timeout reached, cutting connections");
    }
    Ok(())
}
