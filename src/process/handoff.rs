//! What a newly forked worker receives from the master: everything it needs to serve, and
//! nothing of the master's own (signalfd, siblings' channels, the other generation's sockets).

use std::os::fd::OwnedFd;

use nix::unistd::Pid;

use super::board::Seat;
use super::listeners::Listener;
use super::metrics::Meter;
use crate::config::Config;

pub(crate) struct Handoff {
    /// The place the worker fills, from 1; a replacement takes the same one.
    pub(crate) slot: usize,
    /// Its cell on the accept-balancing board.
    pub(crate) seat: Seat,
    /// Its counters and gauges in the metrics table.
    pub(crate) meter: Meter,
    /// The master's pid, to detect that it died between the fork and `PR_SET_PDEATHSIG`.
    pub(crate) master: Pid,
    /// The worker's end of the control channel.
    pub(crate) control: OwnedFd,
    /// The listeners of the worker's generation.
    pub(crate) listeners: Vec<Listener>,
    /// The configuration of the worker's generation.
    pub(crate) config: Config,
    /// For a worker that executes a program (`prefork run`): what the master set up for it.
    pub(crate) program: Option<ProgramSide>,
}

/// What a program's worker gets beside the listeners.
pub(crate) struct ProgramSide {
    /// The master's socket for `READY=1` and `WATCHDOG=1`, as `NOTIFY_SOCKET` spells it.
    pub(crate) notify_socket: String,
    /// The write ends of the pipes that become its standard output and error, when the master
    /// prefixes their lines.
    pub(crate) output: Option<[OwnedFd; 2]>,
}
