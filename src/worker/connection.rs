//! Serving one connection, and draining it without losing a request that is on its way.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use super::Shared;
use super::activity::Activity;
use super::h2_flood::FloodGuard;
use super::service::HyperService;
use super::tracked::Tracked;
use crate::application::AppService;

/// Serves `io` on its own task. The socket counts as open work until it is closed, even if it
/// is upgraded and handed to the application.
pub(crate) fn spawn<IO, S>(io: IO, peer: Option<SocketAddr>, service: S, shared: &'static Shared)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: AppService,
{
    let io = TokioIo::new(Tracked::new(
        FloodGuard::new(io, &shared.floods),
        shared.tracker.token(),
        shared.seat,
        &shared.room,
        shared.io_timeout,
    ));
    tokio::spawn(async move { serve(io, peer, service, shared).await });
}

async fn serve<IO, S>(
    io: TokioIo<Tracked<IO>>,
    peer: Option<SocketAddr>,
    service: S,
    shared: &'static Shared,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: AppService,
{
    let activity = Arc::new(Activity::default());
    let service = HyperService::new(service, shared, Arc::clone(&activity), peer);
    let conn = shared.builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    tokio::select! {
        // The connection first: it is what wakes this task nearly every time.
        biased;
        result = conn.as_mut() => return finished(result),
        () = shared.drain.draining() => {}
        () = activity.idle(shared.idle_timeout) => {
            // GOAWAY for HTTP/2; a connection that never sent a request is closed.
            conn.as_mut().graceful_shutdown();
            return finished(conn.await);
        }
    }
    if !activity.is_http2() {
        // Closing an idle keep-alive connection now would race a client that is already
        // sending its next request on it: the request would meet a reset. For a short while,
        // answer such a request instead (with Connection: close, added by the service) and
        // only then close what is still idle. A request in flight then still completes.
        // HTTP/2 needs no such window: its GOAWAY tells the client which streams were taken.
        tokio::select! {
            result = conn.as_mut() => return finished(result),
            () = tokio::time::sleep_until(shared.linger_until().into()) => {}
        }
    }
    conn.as_mut().graceful_shutdown();
    finished(conn.await);
}

fn finished(result: Result<(), Box<dyn std::error::Error + Send + Sync>>) {
    if let Err(e) = result {
        // Clients that reset or time out are routine; nothing here is the server's failure.
        debug!("connection ended: {e}");
    }
}
