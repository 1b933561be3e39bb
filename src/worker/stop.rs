//! Everything that can tell a worker to stop: the master's messages, the master's death, and
//! signals sent to the worker directly (systemd's `KillMode=control-group`, Ctrl+C on a process
//! group), which mean the same as the master's messages.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::warn;

use super::channel::Channel;
use crate::process::control::{Leave, ToWorker};

pub(crate) struct Stops {
    channel: Arc<Channel>,
    master_gone: bool,
    shutdown_delay: Duration,
    graceful_timeout: Duration,
    term: Signal,
    int: Signal,
    quit: Signal,
}

impl Stops {
    pub(crate) fn new(
        channel: Arc<Channel>,
        shutdown_delay: Duration,
        graceful_timeout: Duration,
    ) -> std::io::Result<Self> {
        Ok(Self {
            channel,
            master_gone: false,
            shutdown_delay,
            graceful_timeout,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
        })
    }

    /// Waits for the next request to stop. A TERM (also what `PR_SET_PDEATHSIG` delivers when
    /// the master dies) and the channel's EOF start a drain timed from now, as the master
    /// would have timed it.
    ///
    /// Requests to reopen the log files are carried out here, on the way.
    pub(crate) async fn next(&mut self) -> Leave {
        loop {
            return tokio::select! {
                msg = self.channel.recv(), if !self.master_gone => match msg {
                    Some(ToWorker::Leave(leave)) => leave,
                    Some(ToWorker::ReopenLogs) => {
                        crate::log::reopen();
                        continue;
                    }
                    None => {
                        self.master_gone = true;
                        warn!("the master is gone: draining");
                        self.timed()
                    }
                },
                _ = self.term.recv() => self.timed(),
                _ = self.int.recv() => Leave::Quit,
                _ = self.quit.recv() => Leave::Quit,
            };
        }
    }

    fn timed(&self) -> Leave {
        let start = Instant::now() + self.shutdown_delay;
        Leave::Drain {
            start,
            deadline: start + self.graceful_timeout,
        }
    }
}
