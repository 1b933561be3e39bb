//! The master's side of systemd's notification protocol (`Type=notify`). Without
//! `NOTIFY_SOCKET` in the environment every call is a no-op. Workers never notify: only the
//! master speaks for the service (`NotifyAccess=main`).

use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tracing::warn;

/// How often the stop timeout is extended while a drain goes on.
const EXTEND_EVERY: Duration = Duration::from_secs(1);
/// How soon an unhealthy master checks again whether it may ping the watchdog.
const UNHEALTHY_RECHECK: Duration = Duration::from_millis(100);
/// Margin added to the drain's remaining time in each extension.
const EXTEND_MARGIN: Duration = Duration::from_secs(5);

pub(crate) struct Notifier {
    enabled: bool,
    /// Half of `WATCHDOG_USEC`, when the unit has a watchdog.
    watchdog_every: Option<Duration>,
    next_watchdog: Instant,
    next_extend: Instant,
    status: String,
}

impl Notifier {
    pub(crate) fn from_env() -> Self {
        let now = Instant::now();
        Self {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
            watchdog_every: sd_notify::watchdog_enabled().map(|usec| usec / 2),
            next_watchdog: now,
            next_extend: now,
            status: String::new(),
        }
    }

    /// Whether systemd listens (`NOTIFY_SOCKET` is set).
    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    /// Every worker is ready: at start, and at the end of a reload (also a failed one).
    pub(crate) fn ready(&mut self, status: &str) {
        self.status = status.to_string();
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// Keeps `STATUS=` current; sends only changes.
    pub(crate) fn status(&mut self, status: &str) {
        if self.status != status {
            self.status = status.to_string();
            self.send(&[NotifyState::Status(status)]);
        }
    }

    pub(crate) fn reloading(&mut self) {
        self.status = "reloading".to_string();
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[
                NotifyState::Reloading,
                now,
                NotifyState::Status("reloading"),
            ]),
            Err(e) => warn!("cannot read the monotonic clock for systemd: {e}"),
        }
    }

    pub(crate) fn stopping(&mut self, status: &str) {
        self.status = status.to_string();
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    /// Pings the watchdog when due, but only while `healthy`: a master whose workers hang
    /// should be restarted by systemd.
    pub(crate) fn watchdog(&mut self, now: Instant, healthy: impl FnOnce() -> bool) {
        let Some(every) = self.watchdog_every else {
            return;
        };
        if now < self.next_watchdog {
            return;
        }
        if healthy() {
            self.next_watchdog = now + every;
            self.send(&[NotifyState::Watchdog]);
        } else {
            // Look again soon: the ping is due, and a worker may be replaced any moment.
            self.next_watchdog = now + UNHEALTHY_RECHECK.min(every);
        }
    }

    /// While stopping: asks systemd to wait for the drain, whose end is `until`, in case its
    /// stop timeout is shorter (systemd ignores extensions within the original timeout).
    pub(crate) fn extend_stop(&mut self, now: Instant, until: Instant) {
        if now < self.next_extend {
            return;
        }
        self.next_extend = now + EXTEND_EVERY;
        let usec = (until.saturating_duration_since(now) + EXTEND_MARGIN).as_micros();
        self.send(&[NotifyState::ExtendTimeoutUsec(
            u32::try_from(usec).unwrap_or(u32::MAX),
        )]);
    }

    /// When the loop must wake next for the watchdog.
    pub(crate) fn next_wake(&self) -> Option<Instant> {
        self.watchdog_every.map(|_| self.next_watchdog)
    }

    fn send(&self, states: &[NotifyState]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(states) {
            warn!("cannot notify systemd: {e}");
        }
    }
}
