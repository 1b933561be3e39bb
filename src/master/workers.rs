//! What the master knows of each worker process, and the restart policy of each slot.

use std::fmt;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// A worker that has stayed up this long is healthy: its slot's restart delay resets.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// The first restart delay of a slot whose worker died soon after start; it doubles from here.
const FIRST_DELAY: Duration = Duration::from_millis(100);
/// The longest a slot waits before starting a worker again.
const MAX_DELAY: Duration = Duration::from_secs(10);
/// The wait before trying again when the system refused to start a worker (fork, descriptors).
const RETRY_DELAY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub(crate) struct Worker {
    /// Stable number of the place this worker fills, from 1; a replacement takes the same one.
    pub(crate) slot: usize,
    /// Reloads start a new generation beside the serving one.
    pub(crate) generation: u32,
    pub(crate) pid: Pid,
    pub(crate) started: Instant,
    pub(crate) ready: bool,
    pub(crate) last_beat: Instant,
    /// Whether a missing heartbeat means it hangs: always for prefork's own workers, and for a
    /// program once it has sent a first `WATCHDOG=1`.
    pub(crate) watched: bool,
    /// Reached its request limit: serves on until its replacement is ready.
    pub(crate) retiring: bool,
    /// Told to drain or quit: no longer counts towards the target.
    pub(crate) leaving: bool,
    /// When the master SIGKILLs it if it is still alive.
    pub(crate) kill_at: Option<Instant>,
    pub(crate) killed: bool,
}

impl Worker {
    pub(crate) fn new(slot: usize, generation: u32, pid: Pid, now: Instant) -> Self {
        Self {
            slot,
            generation,
            pid,
            started: now,
            ready: false,
            last_beat: now,
            watched: true,
            retiring: false,
            leaving: false,
            kill_at: None,
            killed: false,
        }
    }
}

/// How a worker process ended, as `waitpid` reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WorkerExit {
    Code(i32),
    Signal(Signal),
}

impl fmt::Display for WorkerExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkerExit::Code(code) => write!(f, "exited with status {code}"),
            WorkerExit::Signal(Signal::SIGKILL) => f.write_str(
                "was killed by SIGKILL (if prefork did not send it, look for the out-of-memory killer)",
            ),
            WorkerExit::Signal(sig) => write!(f, "was killed by {sig}"),
        }
    }
}

/// Restart policy of one slot: exponential backoff for workers that die soon after start.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    delay: Duration,
    respawn_at: Option<Instant>,
}

impl Slot {
    /// Records the death of this slot's worker after `uptime`, at `now`; returns the delay
    /// before the next start.
    pub(crate) fn died(&mut self, uptime: Duration, now: Instant) -> Duration {
        self.delay = if uptime >= STABLE_AFTER {
            Duration::ZERO
        } else if self.delay.is_zero() {
            FIRST_DELAY
        } else {
            (self.delay * 2).min(MAX_DELAY)
        };
        self.respawn_at = Some(now + self.delay);
        self.delay
    }

    /// A start failed for reasons of the system (fork, descriptors): try again in a while.
    pub(crate) fn retry_later(&mut self, now: Instant) {
        self.respawn_at = Some(now + RETRY_DELAY);
    }

    /// A worker now fills the slot: nothing is waiting to start.
    pub(crate) fn filled(&mut self) {
        self.respawn_at = None;
    }

    pub(crate) fn due(&self, now: Instant) -> bool {
        self.respawn_at.is_none_or(|at| now >= at)
    }

    /// When a start is waiting for its delay to pass.
    pub(crate) fn respawn_at(&self) -> Option<Instant> {
        self.respawn_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets_when_stable() {
        let mut slot = Slot::default();
        let now = Instant::now();
        let quick = Duration::from_millis(50);
        assert_eq!(slot.died(quick, now), FIRST_DELAY);
        assert_eq!(slot.died(quick, now), FIRST_DELAY * 2);
        assert_eq!(slot.died(quick, now), FIRST_DELAY * 4);
        for _ in 0..20 {
            slot.died(quick, now);
        }
        assert_eq!(slot.died(quick, now), MAX_DELAY);
        assert_eq!(slot.died(STABLE_AFTER, now), Duration::ZERO);
        assert!(slot.due(now));
    }
}
