//! Accepting connections on the inherited listeners, and taking what is queued when the drain
//! begins.

use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::libc::{SOCK_CLOEXEC, SOCK_NONBLOCK};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use socket2::Socket;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::{TcpStream, UnixStream};
use tracing::{debug, error, warn};

use super::{Shared, connection};
use crate::application::AppService;
use crate::process::board::Seat;
use crate::process::listeners::{Listener as Bound, Socket as BoundSocket};

/// How long an overloaded worker waits for a sibling that did not take the last connection it
/// was left.
const STEP_BACK: Duration = Duration::from_millis(1);
/// Step-backs in a row, all missed, that only yield before the worker waits on the timer.
const YIELDS: u32 = 2;
/// Step-backs in a row during which no sibling took any connection: then the siblings are
/// busy (or hung) rather than slow to wake, and waiting on them only delays clients.
const MISSES: u32 = 4;
/// How long a worker stops deferring once its siblings missed that many.
const SIBLINGS_BUSY: Duration = Duration::from_millis(100);

/// After a failed accept that is not one client's doing (out of descriptors, out of memory),
/// how long to wait before trying again instead of spinning.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// A listening socket registered with the worker's runtime.
///
/// The runtime is asked only whether a connection is waiting, and the worker accepts it itself:
/// that way an overloaded worker can see a connection arrive and leave it to a sibling, which
/// an accept call cannot do.
pub(crate) struct Listener {
    fd: AsyncFd<Socket>,
    unix: bool,
    /// Serves TLS.
    tls: bool,
}

/// Accepts until the drain begins, then accepts everything already in the kernel's queue — the
/// clients that connected before the drain are served, not reset — and lets go of the socket.
pub(crate) async fn run<S: AppService>(listener: Listener, service: S, shared: &'static Shared) {
    // Made once: a fresh one per turn would register with the drain handle per connection.
    let draining = shared.drain.draining();
    tokio::pin!(draining);
    let mut pacing = Pacing::default();
    let mut failures = Failures::default();
    loop {
        if shared.room.full(shared.seat) {
            // Siblings do not count a full worker when they weigh their own share.
            shared.seat.accepting(false);
            debug!(
                "worker {} (pid {}): at its connection limit, leaving new ones to its siblings",
                shared.slot,
                std::process::id()
            );
            tokio::select! {
                biased;
                () = &mut draining => break,
                () = make_room(&listener, shared) => {}
            }
            shared.seat.accepting(true);
        }
        let ready = tokio::select! {
            biased;
            () = &mut draining => break,
            ready = listener.fd.readable() => ready,
        };
        let mut ready = match ready {
            Ok(ready) => ready,
            Err(e) => {
                // Only a runtime that is shutting down refuses; the worker is exiting.
                error!("cannot wait for connections: {e}");
                break;
            }
        };
        if pacing.defers(shared.seat) {
            // Holding more than its share, this worker lets a sibling (woken for the same
            // connection) take it, and takes it itself only if it is still queued after that.
            let before = shared.seat.siblings_accepted();
            match pacing.patience() {
                Patience::Yield => step_back().await,
                Patience::Wait => tokio::select! {
                    biased;
                    () = &mut draining => break,
                    () = tokio::time::sleep(STEP_BACK) => {}
                },
            }
            pacing.stepped_back(shared.seat.siblings_accepted() != before);
        }
        // An empty queue (a sibling took the connection) clears the readiness.
        let Ok(accepted) = ready.try_io(|_| listener.accept()) else {
            continue;
        };
        match accepted {
            Ok(stream) => {
                ACCEPTED.store(true, Ordering::Relaxed);
                stream.serve(service.clone(), shared);
                // Every worker is woken by a burst of connections; without a pause the first
                // one awake would take the whole burst (and keep those connections for their
                // lifetime) before its siblings get to the queue.
                tokio::task::yield_now().await;
            }
            Err(e) if is_per_connection(&e) => {}
            Err(e) => {
                failures.record(&e, shared.slot);
                if is_out_of_descriptors(&e) {
                    shed(shared, "out of descriptors");
                }
                tokio::time::sleep(ACCEPT_PAUSE).await;
            }
        }
    }
    loop {
        match listener.accept() {
            Ok(stream) => stream.serve(service.clone(), shared),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if is_per_connection(&e) => {}
            Err(e) => {
                warn!("accepting queued connections at drain: {e}");
                break;
            }
        }
    }
}

/// Waits until the worker, full, has room for a connection again. Meanwhile connections that
/// arrive are left to siblings while any has room. When none has (all full, or no sibling at
/// all) and a connection is still queued after [`SIBLINGS_BUSY`], the worker makes room for it
/// by shedding idle keep-alive connections, rather than leave the client waiting for one to
/// close on its own.
async fn make_room(listener: &Listener, shared: &'static Shared) {
    loop {
        let ready = tokio::select! {
            biased;
            () = shared.room.wait(shared.seat) => return,
            ready = listener.fd.readable() => ready,
        };
        let Ok(mut ready) = ready else {
            // Only a runtime that is shutting down refuses; the worker is exiting.
            return shared.room.wait(shared.seat).await;
        };
        tokio::select! {
            biased;
            () = shared.room.wait(shared.seat) => return,
            () = tokio::time::sleep(SIBLINGS_BUSY) => {}
        }
        if !shared.seat.siblings_accepting() && listener.queued() {
            shed(shared, "at its connection limit with clients waiting");
        } else {
            // A sibling took it or will: wait for the next one.
            ready.clear_ready();
        }
    }
}

/// Asks the longest-idle keep-alive connections to close (see [`super::shed`]).
fn shed(shared: &Shared, why: &str) {
    let shed = shared.connections.shed();
    debug!(
        "worker {} (pid {}): {why}, closing {shed} idle keep-alive connection(s)",
        shared.slot,
        std::process::id()
    );
}

/// Failed accepts that are not one client's doing (out of descriptors, out of memory): logged
/// at most once a second with how many there were, so that a flood does not become log volume.
#[derive(Default)]
struct Failures {
    since_logged: u32,
    logged_at: Option<Instant>,
}

impl Failures {
    fn record(&mut self, e: &io::Error, slot: usize) {
        self.since_logged += 1;
        let now = Instant::now();
        if self
            .logged_at
            .is_some_and(|at| now - at < Duration::from_secs(1))
        {
            return;
        }
        error!(
            "worker {slot} (pid {}): accept failed {} time(s) since the last report: {e}",
            std::process::id(),
            self.since_logged
        );
        self.since_logged = 0;
        self.logged_at = Some(now);
    }
}

/// Leaves the connection being accepted to a sibling for as long as the kernel takes to run
/// one: the sibling was woken for it too. The worker's own ready tasks run first, then it gives
/// up the CPU once. Waiting on the timer at every step-back (tokio counts whole milliseconds)
/// held the accept loop for 1-2 ms each time; with a new connection per request the share is
/// exceeded all the time, and that left a third of the CPU idle (0.73x the baseline's
/// requests/s on two cores).
async fn step_back() {
    tokio::task::yield_now().await;
    std::thread::yield_now();
}

/// Set when the worker accepts a connection; cleared when its runtime next runs out of work.
static ACCEPTED: AtomicBool = AtomicBool::new(false);

/// Called by the runtime just before it sleeps waiting for events. A worker that has just
/// accepted a connection is likely to be sent the next one within microseconds: rather than
/// sleep and be woken for it — a wakeup the client pays for, of this worker and of every
/// sibling sleeping on the same socket — it gives up the CPU once, letting the client run, and
/// looks again. With connection-per-request load this is worth 5-10% of throughput on two
/// cores (see docs/performance.md); a worker serving only keep-alive connections never
/// yields.
pub(crate) fn before_park() {
    if ACCEPTED.swap(false, Ordering::Relaxed) {
        std::thread::yield_now();
    }
}

/// When a worker holding more than its share steps back from the accept race.
#[derive(Default)]
struct Pacing {
    /// Step-backs in a row during which no sibling accepted anything.
    misses: u32,
    /// Until then the worker accepts without deferring.
    busy_until: Option<Instant>,
}

impl Pacing {
    fn defers(&mut self, seat: Seat) -> bool {
        if !seat.overloaded() {
            return false;
        }
        match self.busy_until {
            Some(until) if Instant::now() < until => false,
            _ => {
                self.busy_until = None;
                true
            }
        }
    }

    /// How long to leave the connection to a sibling: while siblings take what they are left,
    /// a yield is enough; after [`YIELDS`] misses in a row (a sibling asleep, or kept off the
    /// CPU by the client, as in a burst of connects) the worker waits on the timer, so that
    /// the burst still spreads.
    fn patience(&self) -> Patience {
        if self.misses < YIELDS {
            Patience::Yield
        } else {
            Patience::Wait
        }
    }

    fn stepped_back(&mut self, siblings_progressed: bool) {
        if siblings_progressed {
            self.misses = 0;
            return;
        }
        self.misses += 1;
        if self.misses >= MISSES {
            self.misses = 0;
            self.busy_until = Some(Instant::now() + SIBLINGS_BUSY);
        }
    }
}

/// See [`Pacing::patience`].
#[derive(Debug, PartialEq)]
enum Patience {
    Yield,
    Wait,
}

/// An accepted connection, and whether it is served over TLS.
enum Stream {
    Tcp(TcpStream, std::net::SocketAddr, bool),
    Unix(UnixStream, bool),
}

impl Stream {
    fn serve<S: AppService>(self, service: S, shared: &'static Shared) {
        match self {
            Stream::Tcp(stream, peer, tls) => {
                connection::spawn(stream, Some(peer), tls, service, shared);
            }
            Stream::Unix(stream, tls) => connection::spawn(stream, None, tls, service, shared),
        }
    }
}

impl Listener {
    /// Registers an inherited listener with the worker's runtime.
    pub(crate) fn adopt(bound: Bound) -> io::Result<Self> {
        let tls = bound.tls;
        let (socket, unix) = match bound.socket {
            BoundSocket::Tcp(l) => (Socket::from(l), false),
            BoundSocket::Unix(l) => (Socket::from(l), true),
        };
        // SAFETY: the listener owns the socket, so the descriptor stays open and the same for
        // as long as the registration lives.
        let fd = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }?;
        Ok(Listener { fd, unix, tls })
    }

    /// Whether a connection waits in the queue, without taking it.
    fn queued(&self) -> bool {
        let mut fds = [PollFd::new(self.fd.get_ref().as_fd(), PollFlags::POLLIN)];
        // An error (EINTR, ENOMEM) reads as nothing queued: the caller only waits again.
        poll(&mut fds, PollTimeout::ZERO).is_ok_and(|n| n > 0)
    }

    /// Accepts one queued connection without waiting (`WouldBlock` when the queue is empty).
    /// This asks the kernel directly, so at the drain it also finds a connection that arrived
    /// too late for the runtime to have reported it.
    fn accept(&self) -> io::Result<Stream> {
        let (socket, peer) = self.fd.get_ref().accept4(SOCK_NONBLOCK | SOCK_CLOEXEC)?;
        if self.unix {
            return Ok(Stream::Unix(UnixStream::from_std(socket.into())?, self.tls));
        }
        // Responses are written whole; Nagle's delay would only add latency.
        socket.set_tcp_nodelay(true)?;
        let peer = peer.as_socket().ok_or(io::ErrorKind::InvalidData)?;
        Ok(Stream::Tcp(
            TcpStream::from_std(socket.into())?,
            peer,
            self.tls,
        ))
    }
}

/// The process's or the system's descriptors are used up.
fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::EMFILE | Errno::ENFILE)
    )
}

/// Errors that concern one connection that went away while being accepted; the listener is
/// fine.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::ECONNABORTED | Errno::EINTR | Errno::EPROTO | Errno::EPERM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::board::Board;

    #[test]
    fn an_overloaded_worker_stops_deferring_only_after_siblings_miss_several_in_a_row() {
        let (_, me, sibling) = Board::for_two();
        me.accepting(true);
        sibling.accepting(true);
        for _ in 0..5 {
            me.opened();
        }
        let mut pacing = Pacing::default();
        for missed in 0..MISSES - 1 {
            assert!(pacing.defers(me));
            let expected = if missed < YIELDS {
                Patience::Yield
            } else {
                Patience::Wait
            };
            assert_eq!(pacing.patience(), expected, "after {missed} misses");
            pacing.stepped_back(false);
        }
        assert!(pacing.defers(me));
        pacing.stepped_back(true);
        assert_eq!(pacing.patience(), Patience::Yield, "a sibling took one");
        for _ in 0..MISSES - 1 {
            assert!(
                pacing.defers(me),
                "a sibling's progress starts the count again"
            );
            pacing.stepped_back(false);
        }
        assert!(pacing.defers(me));
        pacing.stepped_back(false);
        assert!(!pacing.defers(me), "siblings that miss every time are busy");
        for _ in 0..5 {
            me.closed();
        }
        let mut pacing = Pacing::default();
        assert!(!pacing.defers(me), "a worker within its share never defers");
    }
}
