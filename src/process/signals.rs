//! Signal set-up of a newly forked worker. The master blocks the signals it reads from its
//! signalfd; a child inherits that mask and must undo it before anything else, and it must
//! ignore the signals that mean something to the master only.

use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, signal, sigprocmask};

/// Signals that mean something to the master only. Sent to the whole process group (a
/// terminal's hang-up, `kill -HUP -PGID`) they also reach the workers, which ignore them.
pub(crate) const MASTER_ONLY: [Signal; 7] = [
    Signal::SIGHUP,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGALRM,
];

/// In a freshly forked worker: unblocks everything the master blocked, so the worker's own
/// handlers (and default actions) apply again, and ignores the master's signals.
pub(crate) fn reset_in_child() -> Result<(), String> {
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(|e| format!("cannot unblock signals: {e}"))?;
    for sig in MASTER_ONLY {
        // SAFETY: installing SIG_IGN runs no handler code.
        unsafe { signal(sig, SigHandler::SigIgn) }
            .map_err(|e| format!("cannot ignore {sig}: {e}"))?;
    }
    Ok(())
}
