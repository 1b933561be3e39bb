//! The worker's end of the control channel, on its tokio runtime.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::unix::AsyncFd;

use crate::process::control::{self, Received, ToMaster, ToWorker};

/// How often a worker tells the master it is alive, at most; a short `timeout` asks for more.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// The most often a worker beats, however short the timeout.
const HEARTBEAT_FASTEST: Duration = Duration::from_millis(50);

pub(crate) struct Channel {
    fd: AsyncFd<OwnedFd>,
}

impl Channel {
    pub(crate) fn new(fd: OwnedFd) -> io::Result<Self> {
        // SAFETY: the channel owns the descriptor, so it stays open and the same for as long
        // as the registration lives.
        let fd = unsafe { AsyncFd::register(fd) }?;
        Ok(Self { fd })
    }

    pub(crate) fn send(&self, msg: ToMaster) -> bool {
        control::send(self.fd.get_ref(), &msg.encode())
    }

    /// The next message from the master; `None` once the master's end is closed, which means
    /// the master is gone.
    pub(crate) async fn recv(&self) -> Option<ToWorker> {
        loop {
            let mut guard = self.fd.readable().await.ok()?;
            match control::recv::<ToWorker>(self.fd.get_ref()) {
                Received::Message(msg) => return Some(msg),
                Received::Closed => return None,
                Received::Empty => guard.clear_ready(),
            }
        }
    }
}

/// Beats for as long as the runtime runs tasks: a handler that blocks the runtime's thread
/// stops the beats, which is how the master tells a hung worker from a busy one.
pub(crate) async fn heartbeat(channel: Arc<Channel>, timeout: Duration) {
    // Four beats per timeout, so a late beat or two never looks like a hang.
    let period = if timeout.is_zero() {
        HEARTBEAT_EVERY
    } else {
        (timeout / 4).clamp(HEARTBEAT_FASTEST, HEARTBEAT_EVERY)
    };
    let mut every = tokio::time::interval(period);
    loop {
        every.tick().await;
        channel.send(ToMaster::Heartbeat);
    }
}
