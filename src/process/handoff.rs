//! What a newly forked worker receives from the master: everything it needs to serve, and
//! nothing of the master's own (signalfd, siblings' channels, the other generation's sockets).

use std::os::fd::OwnedFd;

use nix::unistd::Pid;

use super::board::Seat;
use super::listeners::Listener;
use crate::config::Config;

pub(crate) struct Handoff {
    /// The place the worker fills, from 1; a replacement takes the same one.
    pub(crate) slot: usize,
    /// Its cell on the accept-balancing board.
    pub(crate) seat: Seat,
    /// The master's pid, to detect that it died between the fork and `PR_SET_PDEATHSIG`.
    pub(crate) master: Pid,
    /// The worker's end of the control channel.
    pub(crate) control: OwnedFd,
    /// The listeners of the worker's generation.
    pub(crate) listeners: Vec<Listener>,
    /// The configuration of the worker's generation.
    pub(crate) config: Config,
}
