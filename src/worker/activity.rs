//! What one connection has been doing, as its service sees it: so that an HTTP/2 connection
//! left without requests can be closed, an idle keep-alive connection shed to make room, and
//! a stalled one closed. hyper times out idle HTTP/1 connections itself (its header-read
//! timer) but has no idle timeout for HTTP/2, where a client may keep a connection open forever
//! without sending a stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use nix::time::{ClockId, clock_gettime};
use tokio::sync::Notify;

use super::flow::Flow;
use crate::application::Connection;

/// The protocol of a connection's requests (0 until the first one).
const HTTP1: u8 = 1;
const HTTP2: u8 = 2;

/// Checks per idle period: a connection is closed between one and 1 + 1/`TICKS` idle periods
/// after its last request, without reading the clock on every request.
const TICKS: u32 = 4;

#[derive(Default)]
pub(crate) struct Activity {
    protocol: AtomicU8,
    /// HTTP/2 requests begun and answered: moves whenever the connection does something.
    events: AtomicU64,
    /// HTTP/2 requests whose response has not been produced yet.
    in_flight: AtomicUsize,
    /// Requests, of either protocol, whose response has not been sent whole: zero while the
    /// connection is an idle keep-alive one.
    open: AtomicUsize,
    /// When `open` last fell to zero, in milliseconds of the coarse monotonic clock; zero
    /// until a first request was answered.
    idle_since: AtomicU64,
    /// HTTP/2 responses waiting on the client's flow-control window.
    pub(crate) flow: Flow,
    /// Wakes the connection's task to close it gracefully: a request body stalled, or the
    /// worker needs its descriptor.
    close: Notify,
}

impl Activity {
    /// Notes an HTTP/1 request begun: hyper's own timers watch such a connection.
    pub(crate) fn http1(self: &Arc<Self>) -> InFlight {
        self.protocol.store(HTTP1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        InFlight {
            activity: Arc::clone(self),
            http2: false,
            answering: false,
            handed: None,
        }
    }

    /// Notes an HTTP/2 request begun; the guard notes it answered when dropped (also when
    /// the client resets the stream and hyper drops the response future).
    pub(crate) fn http2(self: &Arc<Self>) -> InFlight {
        self.protocol.store(HTTP2, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.events.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        InFlight {
            activity: Arc::clone(self),
            http2: true,
            answering: true,
            handed: None,
        }
    }

    pub(crate) fn is_http2(&self) -> bool {
        self.protocol.load(Ordering::Relaxed) == HTTP2
    }

    pub(crate) fn is_http1(&self) -> bool {
        self.protocol.load(Ordering::Relaxed) == HTTP1
    }

    /// Since when, in milliseconds of [`coarse_now`], the connection has been an idle
    /// keep-alive one: it has answered a request and has none open. `None` otherwise.
    pub(crate) fn idle_since(&self) -> Option<u64> {
        let since = self.idle_since.load(Ordering::Relaxed);
        (since != 0 && self.open.load(Ordering::Relaxed) == 0).then_some(since)
    }

    /// Asks the connection's task to close the connection gracefully (see [`Self::closing`]).
    pub(crate) fn close(&self) {
        // A permit is kept if the task is not waiting yet.
        self.close.notify_one();
    }

    /// Completes once [`Self::close`] was called.
    pub(crate) async fn closing(&self) {
        self.close.notified().await;
    }

    /// Completes once the connection has gone `limit` without a request: an HTTP/2 connection
    /// with no stream begun or answered in that time, or a connection that sent no request at
    /// all. Never completes for HTTP/1, which hyper times out itself.
    pub(crate) async fn idle(&self, limit: Duration) {
        let mut seen = self.events.load(Ordering::Relaxed);
        let mut quiet = 0;
        loop {
            tokio::time::sleep(limit / TICKS).await;
            if self.is_http1() {
                return std::future::pending().await;
            }
            let events = self.events.load(Ordering::Relaxed);
            if events != seen || self.in_flight.load(Ordering::Relaxed) > 0 {
                seen = events;
                quiet = 0;
                continue;
            }
            quiet += 1;
            if quiet == TICKS {
                return;
            }
        }
    }
}

impl Connection for Activity {
    fn body_stalled(&self) {
        self.close();
    }
}

/// The coarse monotonic clock in milliseconds (never zero): a few milliseconds of resolution,
/// for a fraction of the cost of the precise clock, read once per request.
fn coarse_now() -> u64 {
    match clock_gettime(ClockId::CLOCK_MONOTONIC_COARSE) {
        // The monotonic clock is never negative.
        Ok(now) => (now.tv_sec() as u64 * 1000 + now.tv_nsec() as u64 / 1_000_000).max(1),
        // Only an unknown clock fails, which Linux since 2.6.32 does not have.
        Err(_) => 1,
    }
}

/// A request on a connection, from the service's call until its response has been sent whole
/// (hyper drops the response body) or abandoned (hyper drops the response future).
///
/// An HTTP/2 request counts as answered, for the idle timeout, once its response is produced:
/// a response body that streams on (server-sent events) does not hold the connection, which
/// after the idle timeout is sent GOAWAY; that lets the stream finish and moves the client's
/// next requests to a new connection.
pub(crate) struct InFlight {
    activity: Arc<Activity>,
    http2: bool,
    /// HTTP/2, and the response not produced yet.
    answering: bool,
    /// The flow slot of the frame the response body last handed hyper, until it is polled
    /// again (HTTP/2 only).
    handed: Option<usize>,
}

impl InFlight {
    /// The response is produced; its body may still stream.
    pub(crate) fn answered(&mut self) {
        if std::mem::take(&mut self.answering) {
            self.activity.in_flight.fetch_sub(1, Ordering::Relaxed);
            self.activity.events.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The response body is polled: what it handed hyper before has gone out.
    pub(crate) fn polled(&mut self) {
        if let Some(slot) = self.handed.take() {
            self.activity.flow.taken(slot);
        }
    }

    /// The response body handed hyper a frame, which an HTTP/2 stream sends only as the
    /// client's flow-control window allows.
    pub(crate) fn handed(&mut self) {
        if self.http2 {
            self.handed = Some(self.activity.flow.handed());
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.answered();
        self.polled();
        if self.activity.open.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.activity
                .idle_since
                .store(coarse_now(), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(8);

    /// Runs `idle` on tokio's paused clock for `for_` and says whether it completed.
    async fn idle_within(activity: &Activity, for_: Duration) -> bool {
        tokio::time::timeout(for_, activity.idle(LIMIT))
            .await
            .is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_requests_is_idle_after_the_limit() {
        let activity = Activity::default();
        assert!(!idle_within(&activity, LIMIT - Duration::from_millis(1)).await);
        let activity = Activity::default();
        assert!(idle_within(&activity, LIMIT + Duration::from_millis(1)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn http1_connections_are_left_to_hyper() {
        let activity = Arc::new(Activity::default());
        drop(activity.http1());
        assert!(!idle_within(&activity, LIMIT * 10).await);
    }

    #[test]
    fn a_connection_is_idle_keep_alive_between_requests_until_its_response_is_sent_whole() {
        let activity = Arc::new(Activity::default());
        assert_eq!(activity.idle_since(), None, "no request yet");
        let mut request = activity.http2();
        request.answered();
        assert_eq!(activity.idle_since(), None, "its body still streams");
        drop(request);
        let since = activity.idle_since().expect("idle once the body is gone");
        let _next = activity.http2();
        assert_eq!(activity.idle_since(), None, "busy again");
        assert!(since > 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_keeps_an_http2_connection_and_its_end_restarts_the_count() {
        let activity = Arc::new(Activity::default());
        let answering = activity.http2();
        let watch = tokio::spawn({
            let activity = Arc::clone(&activity);
            async move { activity.idle(LIMIT).await }
        });
        tokio::time::sleep(LIMIT * 3).await;
        assert!(!watch.is_finished(), "closed with a request in flight");
        drop(answering);
        tokio::time::sleep(LIMIT - LIMIT / TICKS).await;
        assert!(
            !watch.is_finished(),
            "closed before the limit after the answer"
        );
        tokio::time::sleep(LIMIT / TICKS * 2 + Duration::from_millis(1)).await;
        assert!(
            watch.is_finished(),
            "open beyond the limit after the answer"
        );
        assert!(activity.is_http2());
    }
}
