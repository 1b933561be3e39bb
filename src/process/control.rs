//! The control channel between the master and one worker: a `SOCK_SEQPACKET` socketpair that
//! carries fixed-size messages, so neither side ever sees half a message.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType};
use nix::time::{ClockId, clock_gettime};

/// A message from a worker to the master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ToMaster {
    /// The application is built and the worker accepts connections.
    Ready,
    /// The worker's runtime is alive; sent from a task on it, so a blocked runtime stops them.
    Heartbeat,
    /// The worker reached its request limit and wants a replacement; it serves on until told
    /// to drain.
    Retiring,
}

/// A message from the master to a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ToWorker {
    /// Stop, one way or the other.
    Leave(Leave),
    /// Reopen the log files (logrotate moved them).
    ReopenLogs,
}

/// How a worker is told to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Leave {
    /// Serve normally until `start` (the shutdown delay, for load balancers), then stop
    /// accepting, finish what is in flight, and exit; cut what is left at `deadline`.
    Drain { start: Instant, deadline: Instant },
    /// Close every connection at once and exit.
    Quit,
}

const LEN: usize = 17;

const READY: u8 = 1;
const HEARTBEAT: u8 = 2;
const RETIRING: u8 = 3;
const DRAIN: u8 = 10;
const QUIT: u8 = 11;
const REOPEN_LOGS: u8 = 12;

/// A connected pair: the first end is the master's, the second the worker's. Both are
/// close-on-exec and non-blocking; a fork without exec keeps them.
pub(crate) fn pair() -> nix::Result<(OwnedFd, OwnedFd)> {
    socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )
}

/// A message type that can be read off a channel.
pub(crate) trait Message: Sized {
    fn decode(buf: &[u8]) -> Option<Self>;
}

impl ToMaster {
    pub(crate) fn encode(self) -> [u8; LEN] {
        let tag = match self {
            ToMaster::Ready => READY,
            ToMaster::Heartbeat => HEARTBEAT,
            ToMaster::Retiring => RETIRING,
        };
        frame(tag, 0, 0)
    }
}

impl Message for ToMaster {
    fn decode(buf: &[u8]) -> Option<Self> {
        match unframe(buf)? {
            (READY, ..) => Some(ToMaster::Ready),
            (HEARTBEAT, ..) => Some(ToMaster::Heartbeat),
            (RETIRING, ..) => Some(ToMaster::Retiring),
            _ => None,
        }
    }
}

impl ToWorker {
    pub(crate) fn encode(self) -> [u8; LEN] {
        match self {
            ToWorker::Leave(Leave::Drain { start, deadline }) => {
                frame(DRAIN, to_wire(start), to_wire(deadline))
            }
            ToWorker::Leave(Leave::Quit) => frame(QUIT, 0, 0),
            ToWorker::ReopenLogs => frame(REOPEN_LOGS, 0, 0),
        }
    }
}

impl Message for ToWorker {
    fn decode(buf: &[u8]) -> Option<Self> {
        match unframe(buf)? {
            (DRAIN, start, deadline) => Some(ToWorker::Leave(Leave::Drain {
                start: from_wire(start),
                deadline: from_wire(deadline),
            })),
            (QUIT, ..) => Some(ToWorker::Leave(Leave::Quit)),
            (REOPEN_LOGS, ..) => Some(ToWorker::ReopenLogs),
            _ => None,
        }
    }
}

/// Sends one message without blocking. A full or closed channel is not an error worth
/// reporting: the master learns of a dead worker from `waitpid`, and a worker of a dead
/// master from EOF.
pub(crate) fn send(fd: impl AsFd, msg: &[u8; LEN]) -> bool {
    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
    matches!(socket::send(fd.as_fd().as_raw_fd(), msg, flags), Ok(LEN))
}

/// What one non-blocking read of a channel found.
pub(crate) enum Received<M> {
    Message(M),
    /// The worker's end is closed.
    Closed,
    /// Nothing more to read now.
    Empty,
}

/// Reads one message without blocking; unknown messages are skipped.
pub(crate) fn recv<M: Message>(fd: impl AsFd) -> Received<M> {
    let mut buf = [0u8; LEN];
    loop {
        match socket::recv(fd.as_fd().as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            Ok(0) => return Received::Closed,
            Ok(n) => {
                if let Some(msg) = M::decode(&buf[..n]) {
                    return Received::Message(msg);
                }
            }
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => return Received::Empty,
            Err(_) => return Received::Closed,
        }
    }
}

/// A tag byte and two little-endian words.
fn frame(tag: u8, a: u64, b: u64) -> [u8; LEN] {
    let mut buf = [0u8; LEN];
    buf[0] = tag;
    buf[1..9].copy_from_slice(&a.to_le_bytes());
    buf[9..].copy_from_slice(&b.to_le_bytes());
    buf
}

fn unframe(buf: &[u8]) -> Option<(u8, u64, u64)> {
    let (&tag, words) = buf.split_first()?;
    let words: &[u8; LEN - 1] = words.try_into().ok()?;
    let (a, b) = words.split_at(8);
    Some((
        tag,
        u64::from_le_bytes(a.try_into().ok()?),
        u64::from_le_bytes(b.try_into().ok()?),
    ))
}

/// `CLOCK_MONOTONIC` is one clock for every process on the machine, so an instant written as
/// its nanoseconds means the same moment to the master and to a worker.
fn monotonic_now() -> Duration {
    // CLOCK_MONOTONIC cannot fail on Linux with a valid pointer.
    let ts = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC is always available");
    Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32)
}

/// `at` as `CLOCK_MONOTONIC` nanoseconds: the same moment in every process, and in the next
/// image of the master after an upgrade.
pub(crate) fn to_wire(at: Instant) -> u64 {
    let now = Instant::now();
    let mono = monotonic_now();
    let wire = if at >= now {
        mono + (at - now)
    } else {
        mono.saturating_sub(now - at)
    };
    wire.as_nanos() as u64
}

/// The instant that [`to_wire`] wrote as `nanos`.
pub(crate) fn from_wire(nanos: u64) -> Instant {
    let wire = Duration::from_nanos(nanos);
    let now = Instant::now();
    let mono = monotonic_now();
    if wire >= mono {
        now + (wire - mono)
    } else {
        now.checked_sub(mono - wire).unwrap_or(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        for msg in [ToMaster::Ready, ToMaster::Heartbeat, ToMaster::Retiring] {
            assert_eq!(ToMaster::decode(&msg.encode()), Some(msg));
        }
        for msg in [ToWorker::Leave(Leave::Quit), ToWorker::ReopenLogs] {
            assert_eq!(ToWorker::decode(&msg.encode()), Some(msg));
        }
        let start = Instant::now() + Duration::from_secs(2);
        let deadline = start + Duration::from_secs(7);
        let drain = ToWorker::Leave(Leave::Drain { start, deadline });
        let Some(ToWorker::Leave(Leave::Drain {
            start: start_back,
            deadline: deadline_back,
        })) = ToWorker::decode(&drain.encode())
        else {
            panic!("drain did not round-trip");
        };
        for (sent, back) in [(start, start_back), (deadline, deadline_back)] {
            let skew = if back > sent {
                back - sent
            } else {
                sent - back
            };
            assert!(skew < Duration::from_millis(5), "skew {skew:?}");
        }
        assert_eq!(ToWorker::decode(&[99; LEN]), None);
        assert_eq!(ToWorker::decode(&[DRAIN, 1]), None);
    }

    #[test]
    fn channel_delivers_whole_messages_and_reports_close() {
        let (master, worker) = pair().unwrap();
        assert!(send(&worker, &ToMaster::Ready.encode()));
        assert!(send(&worker, &ToMaster::Heartbeat.encode()));
        assert!(matches!(
            recv::<ToMaster>(&master),
            Received::Message(ToMaster::Ready)
        ));
        assert!(matches!(
            recv::<ToMaster>(&master),
            Received::Message(ToMaster::Heartbeat)
        ));
        assert!(matches!(recv::<ToMaster>(&master), Received::Empty));
        drop(worker);
        assert!(matches!(recv::<ToMaster>(&master), Received::Closed));
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)) {
            let _ = ToMaster::decode(&bytes);
            let _ = ToWorker::decode(&bytes);
        }
    }
}
