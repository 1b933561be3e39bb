//! The io timeout's clock (`--io-timeout`): how long a wait on the client — a write it does not
//! read, a request body it does not send — may go without progress.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Sleep;

/// Watches one kind of wait on one connection or body.
///
/// The timer is armed the first time the wait is pending, and kept: each time it fires, the
/// wait has stalled unless progress was made since it was armed, and it is re-armed if some
/// was. A timer made and dropped at every wait (a large response waits many times) cost a few
/// percent of 1 MiB responses per second. A stall is reported between one and two timeouts
/// after the last progress.
pub(crate) struct Watchdog {
    /// Zero turns the watch off.
    timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    /// Progress was made since the timer was last armed.
    progressed: bool,
}

impl Watchdog {
    pub(crate) fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            timer: None,
            progressed: false,
        }
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The wait made progress (bytes went through).
    pub(crate) fn progressed(&mut self) {
        self.progressed = true;
    }

    /// The wait is pending: `Ready` once it has gone the timeout without progress, otherwise
    /// `Pending` with `cx` woken when the timer next fires.
    pub(crate) fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.timeout.is_zero() {
            return Poll::Pending;
        }
        let timeout = self.timeout;
        let progressed = &mut self.progressed;
        let timer = self.timer.get_or_insert_with(|| {
            *progressed = false;
            Box::pin(tokio::time::sleep(timeout))
        });
        while timer.as_mut().poll(cx).is_ready() {
            if !std::mem::take(progressed) {
                return Poll::Ready(());
            }
            timer.as_mut().reset(tokio::time::Instant::now() + timeout);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(1);

    /// Polls `dog` as a pending wait, on tokio's paused clock, until it reports a stall or
    /// `for_` passes, progressing every `every` (never if `None`); returns when it stalled.
    async fn stalls_after(dog: &mut Watchdog, every: Option<Duration>, for_: Duration) -> bool {
        let start = tokio::time::Instant::now();
        let step = Duration::from_millis(50);
        let mut since = Duration::ZERO;
        while start.elapsed() < for_ {
            if std::future::poll_fn(|cx| Poll::Ready(dog.poll_stalled(cx)))
                .await
                .is_ready()
            {
                return true;
            }
            tokio::time::sleep(step).await;
            since += step;
            if every.is_some_and(|every| since >= every) {
                dog.progressed();
                since = Duration::ZERO;
            }
        }
        false
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_without_progress_stalls_between_one_and_two_timeouts() {
        let mut dog = Watchdog::new(TIMEOUT);
        assert!(!stalls_after(&mut dog, None, TIMEOUT - Duration::from_millis(100)).await);
        let mut dog = Watchdog::new(TIMEOUT);
        assert!(stalls_after(&mut dog, None, TIMEOUT * 2).await);
    }

    #[tokio::test(start_paused = true)]
    async fn steady_progress_never_stalls_and_a_zero_timeout_is_off() {
        let mut dog = Watchdog::new(TIMEOUT);
        assert!(!stalls_after(&mut dog, Some(Duration::from_millis(200)), TIMEOUT * 10).await);
        let mut off = Watchdog::new(Duration::ZERO);
        assert!(!stalls_after(&mut off, None, TIMEOUT * 10).await);
    }
}
