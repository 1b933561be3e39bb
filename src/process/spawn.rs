//! Starting a child process: a control channel, then `fork`. Both processes return from
//! [`spawn`], each with its own end of the channel; the caller decides what the child becomes,
//! so the master's loop never runs a worker inside itself.

use std::os::fd::OwnedFd;

use nix::unistd::{ForkResult, Pid, fork};

use super::control;

/// Which side of the fork this is.
pub(crate) enum Forked {
    /// The master, with the child's pid and the master's end of its channel.
    Parent { child: Pid, control: OwnedFd },
    /// The new child, with its end of the channel.
    Child { control: OwnedFd },
}

/// Creates the control channel and forks.
///
/// # Safety
///
/// The calling process must be single-threaded: a child forked from a multi-threaded process
/// may inherit locks held by threads that no longer exist in it.
pub(crate) unsafe fn spawn() -> nix::Result<Forked> {
    let (master_end, worker_end) = control::pair()?;
    // SAFETY: the caller guarantees a single thread, so the child is a faithful copy with no
    // lock held by a vanished thread.
    match unsafe { fork() }? {
        ForkResult::Parent { child } => Ok(Forked::Parent {
            child,
            control: master_end,
        }),
        ForkResult::Child => Ok(Forked::Child {
            control: worker_end,
        }),
    }
}
