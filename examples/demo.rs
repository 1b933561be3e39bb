//! An axum application served through prefork, with the full command line:
//!
//! ```text
//! cargo run --release --example demo -- serve --workers 3 --bind 127.0.0.1:8000
//! ```
//!
//! Its routes cover every kind of request a stop must handle: quick, slow, streaming,
//! upgraded, uploading, badly behaved, blocking and crashing; and one that leaves an orphan process, as
//! applications that run subprocesses do.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::ExtensionRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{ConnectInfo, Extension, Query};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::sse::{Event, Sse};
use axum::routing::{get, post};
use futures_util::stream::{self, Stream, StreamExt};
use prefork::Drain;
use serde::Deserialize;

/// How often `/sse` and `/ws` send something.
const TICK: Duration = Duration::from_millis(100);

fn main() -> ExitCode {
    prefork::main(|_worker| {
        // An application that cannot start while this file exists: how the tests make a boot
        // or a reload fail.
        if let Some(path) = std::env::var_os("DEMO_FAIL_IF_EXISTS") {
            assert!(
                !std::path::Path::new(&path).exists(),
                "DEMO_FAIL_IF_EXISTS: {} exists",
                path.to_string_lossy()
            );
        }
        app()
    })
}

fn app() -> Router {
    Router::new()
        .route("/", get(|| async { "Hello, World!" }))
        .route("/sleep", get(sleep))
        .route("/pid", get(|| async { std::process::id().to_string() }))
        .route("/client", get(client))
        .route("/exe", get(exe))
        .route("/sse", get(sse))
        .route("/ws", get(ws))
        .route("/ws-quiet", get(ws_quiet))
        .route("/block", get(block))
        .route("/crash", get(crash))
        .route("/orphan", get(orphan))
        .route("/echo", post(echo))
}

#[derive(Deserialize)]
struct Millis {
    ms: u64,
}

/// Waits without holding the runtime: a slow request in flight. It logs when it starts, so
/// that a test knows the request is in the handler before it signals the server.
async fn sleep(Query(Millis { ms }): Query<Millis>) -> String {
    tracing::info!("/sleep: waiting {ms} ms");
    tokio::time::sleep(Duration::from_millis(ms)).await;
    format!("slept {ms} ms\n")
}

/// Who the client is, as prefork tells it and as axum's `ConnectInfo` does (prefork's `axum`
/// feature): `client=ADDR peer=ADDR forwarded=BOOL scheme=SCHEME connect-info=ADDR`, `-` for
/// what is unknown.
async fn client(
    Extension(client): Extension<prefork::ClientAddr>,
    connect_info: Result<ConnectInfo<SocketAddr>, ExtensionRejection>,
) -> String {
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_string());
    format!(
        "client={} peer={} forwarded={} scheme={} connect-info={}\n",
        or_dash(client.addr().map(|a| a.to_string())),
        or_dash(client.peer().map(|a| a.to_string())),
        client.is_forwarded(),
        or_dash(client.scheme().map(|s| s.to_string())),
        or_dash(connect_info.ok().map(|ConnectInfo(a)| a.to_string())),
    )
}

/// Which file this worker's code came from, by inode: after an upgrade, the new binary's.
async fn exe() -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata("/proc/self/exe") {
        Ok(meta) => meta.ino().to_string(),
        Err(e) => format!("unknown: {e}"),
    }
}

/// Holds the runtime's thread: a hung worker, as far as the master can tell.
async fn block(Query(Millis { ms }): Query<Millis>) -> String {
    std::thread::sleep(Duration::from_millis(ms));
    format!("blocked {ms} ms\n")
}

/// Answers the request body, read whole first (an upload). A body that stops arriving fails
/// the read at prefork's io timeout: the answer is then 400 with the error.
async fn echo(body: axum::body::Body) -> Result<axum::body::Bytes, (StatusCode, String)> {
    axum::body::to_bytes(body, 1 << 20)
        .await
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("{e}\n")))
}

/// Ends the worker process the hardest way short of a signal.
async fn crash() -> &'static str {
    std::process::abort()
}

/// Starts a shell that leaves a short-lived grandchild behind: the orphan is re-parented to
/// the nearest reaper, which in a container is prefork's master, running as PID 1.
async fn orphan() -> String {
    let status = tokio::process::Command::new("sh")
        .args(["-c", "sleep 0.2 & echo $!"])
        .output()
        .await;
    match status {
        Ok(out) => format!("orphan {}", String::from_utf8_lossy(&out.stdout)),
        Err(e) => format!("cannot start sh: {e}\n"),
    }
}

/// One event per tick until the drain begins; then the stream ends cleanly.
async fn sse(
    Extension(drain): Extension<Drain>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let ticks = stream::unfold(0u64, |n| async move {
        tokio::time::sleep(TICK).await;
        Some((Ok(Event::default().data(format!("tick {n}"))), n + 1))
    });
    Sse::new(ticks.take_until(drain.draining_owned()))
}

async fn ws(upgrade: WebSocketUpgrade, Extension(drain): Extension<Drain>) -> impl IntoResponse {
    upgrade.on_upgrade(move |socket| echo_and_tick(socket, drain))
}

/// Echoes text, sends a tick every 100 ms, and says Going Away (1001) when the drain begins.
async fn echo_and_tick(mut socket: WebSocket, drain: Drain) {
    let mut ticks = tokio::time::interval(TICK);
    let mut n = 0u64;
    loop {
        tokio::select! {
            () = drain.draining() => {
                let frame = CloseFrame {
                    code: close_code::AWAY,
                    reason: "server is shutting down".into(),
                };
                if socket.send(Message::Close(Some(frame))).await.is_err() {
                    return;
                }
                // Wait for the client's answering Close so the socket closes cleanly; the
                // worker's deadline bounds a client that never answers.
                while let Some(Ok(msg)) = socket.recv().await {
                    if matches!(msg, Message::Close(_)) {
                        break;
                    }
                }
                return;
            }
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(text))) => {
                    if socket.send(Message::Text(text)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
            _ = ticks.tick() => {
                n += 1;
                if socket.send(Message::Text(format!("tick {n}").into())).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Accepts and then ignores the socket and the drain forever: the handler that hangs other
/// servers' shutdown. Only the worker's deadline ends it.
async fn ws_quiet(upgrade: WebSocketUpgrade) -> impl IntoResponse {
    upgrade.on_upgrade(|socket| async move {
        let _socket = socket;
        loop {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    })
}

/// `pow` from the `libm` crate, so that the C library's `libm.so`, which only tokio's `powf`
/// would need, is not loaded: about 400 KiB less resident in every process (the prefork
/// binary does the same; see `src/main.rs`).
#[unsafe(no_mangle)]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}
