//! Everything that can tell a worker to stop: the master's messages, the master's death, and
//! signals sent to the worker directly (systemd's `KillMode=control-group`, Ctrl+C on a process
//! group), which mean the same as the master's messages.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::warn;

use super::channel::Channel;
use crate::control::ToWorker;

#[derive(Debug, Clone, Copy)]
pub(crate) enum Stop {
    /// Drain, cutting what is left at the deadline.
    Drain(Instant),
    /// Close everything now.
    Quit,
}

pub(crate) struct Stops {
    channel: Arc<Channel>,
    master_gone: bool,
    graceful_timeout: Duration,
    term: Signal,
    int: Signal,
    quit: Signal,
}

impl Stops {
    pub(crate) fn new(channel: Arc<Channel>, graceful_timeout: Duration) -> std::io::Result<Self> {
        Ok(Self {
            channel,
            master_gone: false,
            graceful_timeout,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
        })
    }

    /// Waits for the next request to stop. A TERM (also what `PR_SET_PDEATHSIG` delivers when
    /// the master dies) and the channel's EOF start a drain timed from now.
    pub(crate) async fn next(&mut self) -> Stop {
        let timed = |timeout| Stop::Drain(Instant::now() + timeout);
        tokio::select! {
            msg = self.channel.recv(), if !self.master_gone => match msg {
                Some(ToWorker::Drain { deadline }) => Stop::Drain(deadline),
                Some(ToWorker::Quit) => Stop::Quit,
                None => {
                    self.master_gone = true;
                    warn!("the master is gone: draining");
                    timed(self.graceful_timeout)
                }
            },
            _ = self.term.recv() => timed(self.graceful_timeout),
            _ = self.int.recv() => Stop::Quit,
            _ = self.quit.recv() => Stop::Quit,
        }
    }
}
