//! Accepting connections on the inherited listeners, and taking what is queued when the drain
//! begins.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::SockRef;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tracing::{error, warn};

use super::{Shared, connection};
use crate::AppService;
use crate::master::listeners::{Listener as Bound, Socket};

/// How long an overloaded worker leaves a new connection to its siblings.
const STEP_BACK: Duration = Duration::from_millis(1);
/// How long a worker stops deferring once its siblings left a connection waiting.
const SIBLINGS_BUSY: Duration = Duration::from_millis(100);

/// After a failed accept that is not one client's doing (out of descriptors, out of memory),
/// how long to wait before trying again instead of spinning.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

pub(crate) enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// Accepts until the drain begins, then accepts everything already in the kernel's queue — the
/// clients that connected before the drain are served, not reset — and lets go of the socket.
pub(crate) async fn run<S: AppService>(listener: Listener, service: S, shared: Arc<Shared>) {
    let mut defer_from = Instant::now();
    // Made once: a fresh one per turn would register with the drain handle per connection.
    let draining = shared.drain.draining();
    tokio::pin!(draining);
    loop {
        if Instant::now() >= defer_from && shared.seat.overloaded() {
            // Holding more than its share, this worker lets a sibling take the connection.
            tokio::select! {
                biased;
                () = &mut draining => break,
                () = tokio::time::sleep(STEP_BACK) => {}
            }
            // Still queued: no sibling wants it (busy, or hung). Take it, and stop deferring
            // for a while rather than starve the queue.
            if let Ok(Some(stream)) = listener.take_queued() {
                stream.serve(service.clone(), &shared);
                defer_from = Instant::now() + SIBLINGS_BUSY;
            }
            continue;
        }
        let result = tokio::select! {
            biased;
            () = &mut draining => break,
            result = listener.accept() => result,
        };
        match result {
            Ok(stream) => {
                stream.serve(service.clone(), &shared);
                // Every worker is woken by a burst of connections; without a pause the first
                // one awake would take the whole burst (and keep those connections for their
                // lifetime) before its siblings get to the queue.
                tokio::task::yield_now().await;
            }
            Err(e) if is_per_connection(&e) => {}
            Err(e) => {
                error!("accept failed: {e}");
                tokio::time::sleep(ACCEPT_PAUSE).await;
            }
        }
    }
    loop {
        match listener.take_queued() {
            Ok(Some(stream)) => stream.serve(service.clone(), &shared),
            Ok(None) => break,
            Err(e) if is_per_connection(&e) => {}
            Err(e) => {
                warn!("accepting queued connections at drain: {e}");
                break;
            }
        }
    }
}

/// An accepted connection.
enum Stream {
    Tcp(TcpStream, SocketAddr),
    Unix(UnixStream),
}

impl Stream {
    fn serve<S: AppService>(self, service: S, shared: &Arc<Shared>) {
        match self {
            Stream::Tcp(stream, peer) => connection::spawn(stream, Some(peer), service, shared),
            Stream::Unix(stream) => connection::spawn(stream, None, service, shared),
        }
    }
}

impl Listener {
    /// Registers an inherited listener with the worker's runtime.
    pub(crate) fn adopt(bound: Bound) -> io::Result<Self> {
        Ok(match bound.socket {
            Socket::Tcp(l) => Listener::Tcp(TcpListener::from_std(l)?),
            Socket::Unix(l) => Listener::Unix(UnixListener::from_std(l)?),
        })
    }

    async fn accept(&self) -> io::Result<Stream> {
        Ok(match self {
            Listener::Tcp(l) => {
                let (stream, peer) = l.accept().await?;
                // Responses are written whole; Nagle's delay would only add latency.
                stream.set_nodelay(true)?;
                Stream::Tcp(stream, peer)
            }
            Listener::Unix(l) => Stream::Unix(l.accept().await?.0),
        })
    }

    /// Accepts one queued connection without waiting; `None` when the queue is empty. This
    /// asks the kernel directly: the runtime's readiness flag may not yet know of a connection
    /// that arrived just before the drain.
    fn take_queued(&self) -> io::Result<Option<Stream>> {
        let accepted = match self {
            Listener::Tcp(l) => SockRef::from(l).accept(),
            Listener::Unix(l) => SockRef::from(l).accept(),
        };
        let (socket, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e),
        };
        socket.set_nonblocking(true)?;
        Ok(Some(match self {
            Listener::Tcp(_) => {
                socket.set_tcp_nodelay(true)?;
                let peer = peer.as_socket().ok_or(io::ErrorKind::InvalidData)?;
                Stream::Tcp(TcpStream::from_std(socket.into())?, peer)
            }
            Listener::Unix(_) => Stream::Unix(UnixStream::from_std(socket.into())?),
        }))
    }
}

/// Errors that concern one connection that went away while being accepted; the listener is
/// fine.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error().map(nix::errno::Errno::from_raw),
        Some(
            nix::errno::Errno::ECONNABORTED
                | nix::errno::Errno::EINTR
                | nix::errno::Errno::EPROTO
                | nix::errno::Errno::EPERM
        )
    )
}
