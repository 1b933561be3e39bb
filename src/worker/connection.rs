//! Serving one connection, and draining it without losing a request that is on its way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use super::activity::{Activity, Ask};
use super::gated::Gated;
use super::prefixed::Prefixed;
use super::proxy_protocol;
use super::sendfile::{FileSending, Socket};
use super::service::HyperService;
use super::tracked::Tracked;
use super::{Shared, tls};
use crate::application::{AppService, ClientAddr, FileSender, Spans};
use crate::log::access::{self, Session};

/// Serves `io` on its own task, over TLS when `tls` says so. The socket counts as open work
/// until it is closed, even if it is upgraded and handed to the application.
pub(crate) fn spawn<IO, S>(
    socket: IO,
    peer: Option<SocketAddr>,
    tls: bool,
    service: S,
    shared: &'static Shared,
) where
    IO: Socket,
    S: AppService,
{
    if let Some(meter) = &shared.meter {
        meter.accepted();
    }
    // The listener serves TLS only when the worker has an acceptor: see `Shared::tls`.
    let tls = shared.tls.as_ref().filter(|_| tls);
    // Files are sent as they are only where the socket carries the response as hyper wrote it.
    let spans = tls.is_none().then(Arc::default);
    let mut io = Tracked::new(
        FileSending::new(socket, spans.clone()),
        shared.tracker.token(),
        shared.seat,
        &shared.room,
        shared.io_timeout,
    );
    tokio::spawn(async move {
        let (source, rest) = if shared.proxy_protocol {
            match proxy_protocol::read(&mut io, shared.idle_timeout).await {
                Ok(header) => header,
                Err(why) => return debug!("closing a connection without a PROXY header: {why}"),
            }
        } else {
            (None, Vec::new())
        };
        let io = Prefixed::new(rest, io);
        let client = ClientAddr::of(peer, source);
        match tls {
            None => serve(io, client, None, spans, service, shared).await,
            // Boxed: a task's future is as large as its largest state, and the TLS one (rustls'
            // connection state, its buffers' headers and the handshake) is about three times
            // the plain one. Inline, every plain connection would carry that room: 5 KiB each.
            Some(acceptor) => Box::pin(serve_tls(acceptor, io, client, service, shared)).await,
        }
    });
}

/// Completes the TLS handshake on `io`, then serves HTTP on the decrypted stream.
async fn serve_tls<IO, S>(
    acceptor: &tokio_rustls::TlsAcceptor,
    io: IO,
    client: ClientAddr,
    service: S,
    shared: &'static Shared,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: AppService,
{
    match tls::handshake(acceptor, io, shared.idle_timeout).await {
        Ok(stream) => {
            // Only the access log reads it.
            let session = access::enabled().then(|| Arc::new(tls::session(&stream)));
            serve(stream, client, session, None, service, shared).await;
        }
        Err(why) => debug!("closing a connection: {why}"),
    }
}

/// Serves HTTP on `io`, the connection's bytes in clear: after the PROXY header and the TLS
/// handshake, where the HTTP/2 flood guard can read the frames.
async fn serve<IO, S>(
    io: IO,
    client: ClientAddr,
    session: Option<Arc<Session>>,
    spans: Option<Arc<Spans>>,
    service: S,
    shared: &'static Shared,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: AppService,
{
    let activity = Arc::new(Activity::default());
    let _listed = shared.connections.enter(&activity);
    let service = HyperService::new(
        service,
        shared,
        Arc::clone(&activity),
        client,
        session,
        spans.map(FileSender::new),
    );
    let mut conn = shared.protocols.serve(io, service);
    // Watched for the connection's whole life, its drain included: GOAWAY does not open a
    // client's window.
    let stalled = flow_stalled(&activity, shared.io_timeout);
    let idle = activity.idle(shared.idle_timeout);
    tokio::pin!(stalled, idle);
    let draining = loop {
        // Polled only when one of them woke this task: nearly every wake is the connection's.
        let watched = Gated::new(async {
            tokio::select! {
                biased;
                () = &mut stalled => Watched::Stalled,
                () = shared.drain.draining() => Watched::Draining,
                // GOAWAY for HTTP/2; a connection that never sent a request is closed.
                () = &mut idle => Watched::Idle,
                asked = activity.asked() => Watched::Asked(asked),
            }
        });
        tokio::select! {
            biased;
            result = &mut conn => return finished(result),
            watched = watched => match watched {
                Watched::Stalled => return,
                Watched::Draining => break true,
                Watched::Idle => {
                    conn.time_out();
                    break false;
                }
                // A request body stalled, or the worker sheds the connection to make room.
                Watched::Asked(Ask::Close) => break false,
                Watched::Asked(Ask::Park) => {
                    // Still between requests: the ask may be older than the latest request.
                    if activity.between_http1_requests() {
                        conn.park();
                    }
                }
            },
        }
    };
    if draining && !activity.is_http2() {
        // Closing an idle keep-alive connection now would race a client that is already
        // sending its next request on it: the request would meet a reset. For a short while,
        // answer such a request instead (with Connection: close, added by the service) and
        // only then close what is still idle. A request in flight then still completes.
        // HTTP/2 needs no such window: its GOAWAY tells the client which streams were taken.
        tokio::select! {
            result = &mut conn => return finished(result),
            () = &mut stalled => return,
            () = tokio::time::sleep_until(shared.linger_until().into()) => {}
            () = activity.closing() => {}
        }
    }
    conn.graceful_shutdown();
    tokio::select! {
        result = &mut conn => finished(result),
        () = &mut stalled => {}
    }
}

/// What woke a connection's task, other than the connection itself.
enum Watched {
    /// An HTTP/2 response waited on the client's window for the io timeout.
    Stalled,
    Draining,
    Idle,
    Asked(Ask),
}

/// Completes, once logged, when an HTTP/2 response has waited on the client's flow-control
/// window for the io timeout (see [`super::flow`]); the connection is then dropped, which
/// closes it. Never completes with the io timeout off.
async fn flow_stalled(activity: &Activity, io_timeout: Duration) {
    if io_timeout.is_zero() {
        return std::future::pending().await;
    }
    activity
        .flow
        .stalled(io_timeout, || activity.is_http1())
        .await;
    debug!(
        "closing an HTTP/2 connection whose client kept a stream's flow-control window shut for \
         {io_timeout:?}"
    );
}

fn finished(result: Result<(), Box<dyn std::error::Error + Send + Sync>>) {
    if let Err(e) = result {
        // Clients that reset or time out are routine; nothing here is the server's failure.
        debug!("connection ended: {e}");
    }
}
