//! The master reads signals synchronously from a `signalfd`: they are blocked, so none
//! interrupts the loop or runs a handler, and several arriving at once are simply read in turn.

use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::process::signals::MASTER_ONLY;

/// The rest the master handles: the stops, which workers also obey when sent to them directly,
/// and children's exits.
const STOPS_AND_CHILDREN: [Signal; 4] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGCHLD,
];

pub(crate) struct Signals {
    fd: SignalFd,
}

impl Signals {
    /// Blocks the handled signals and opens the signalfd that reports them.
    pub(crate) fn install() -> nix::Result<Self> {
        let mask = handled();
        sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)?;
        let fd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(Self { fd })
    }

    /// Every signal pending now. The kernel hands out the pending ones lowest number first,
    /// and one kind pending twice is one signal.
    pub(crate) fn pending(&mut self) -> Vec<Signal> {
        let mut out = Vec::new();
        while let Ok(Some(info)) = self.fd.read_signal() {
            if let Ok(sig) = Signal::try_from(info.ssi_signo as i32) {
                out.push(sig);
            }
        }
        out
    }
}

impl AsFd for Signals {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Every signal the master acts on or deliberately ignores. Being blocked, none of them can
/// kill it by its default action.
fn handled() -> SigSet {
    let mut mask = SigSet::empty();
    for sig in MASTER_ONLY.iter().chain(&STOPS_AND_CHILDREN) {
        mask.add(*sig);
    }
    mask
}
