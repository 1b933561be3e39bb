//! What one connection has been doing, as its service sees it: so that an HTTP/2 connection
//! left without requests can be closed, an idle keep-alive connection shed to make room or
//! parked (see [`super::parking`]), and a stalled one closed. hyper has no idle timeout for
//! HTTP/2, where a client may keep a connection open forever without sending a stream, and its
//! HTTP/1 one (the header-read timer) costs a timer per request: both are kept here instead.

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

/// What a connection's task is asked to do, as bits of [`Activity::asked`].
const CLOSE: u8 = 1;
const PARK: u8 = 2;

/// What [`Activity::asked`] completes with.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ask {
    /// Close gracefully: a request body stalled, or the worker needs the descriptor.
    Close,
    /// Give back hyper's buffers, if the connection is still an idle HTTP/1 one.
    Park,
}

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
    /// Request bodies begun and not read to their end. hyper is still reading (or discarding)
    /// such a body, so the connection is not between requests even once it has answered.
    unread: AtomicUsize,
    /// The `idle_since` of the idle period in which the connection was last asked to park:
    /// asked once per idle period, parked or not.
    park_asked: AtomicU64,
    /// HTTP/2 responses waiting on the client's flow-control window.
    pub(crate) flow: Flow,
    /// What the connection's task is asked to do ([`CLOSE`], [`PARK`]), and the wake-up
    /// that goes with it.
    asks: AtomicU8,
    ask: Notify,
}

impl Activity {
    /// Notes an HTTP/1 request begun.
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

    /// How long the connection has been an idle keep-alive one (see [`Self::idle_since`]).
    pub(crate) fn idle_for(&self) -> Option<Duration> {
        let since = self.idle_since()?;
        Some(Duration::from_millis(coarse_now().saturating_sub(since)))
    }

    /// Asks the connection's task to close the connection gracefully (see [`Self::closing`]).
    pub(crate) fn close(&self) {
        self.asks.fetch_or(CLOSE, Ordering::Relaxed);
        // A permit is kept if the task is not waiting yet.
        self.ask.notify_one();
    }

    /// Asks an HTTP/1 connection that has been idle since `before` or longer (in milliseconds
    /// of [`coarse_now`]), with no request body left unread, to park; true if it was asked.
    /// A connection is asked once per idle period.
    pub(crate) fn park_if_idle(&self, before: u64) -> bool {
        let Some(since) = self.idle_since().filter(|since| *since <= before) else {
            return false;
        };
        if !self.between_http1_requests() || self.park_asked.swap(since, Ordering::Relaxed) == since
        {
            return false;
        }
        self.asks.fetch_or(PARK, Ordering::Relaxed);
        self.ask.notify_one();
        true
    }

    /// Whether the connection is between HTTP/1 requests as far as its service can tell: no
    /// request open, no request body unread. hyper may still hold a response not yet flushed,
    /// which only the socket's side can tell (see [`super::parking::Rest`]).
    pub(crate) fn between_http1_requests(&self) -> bool {
        self.is_http1()
            && self.open.load(Ordering::Relaxed) == 0
            && self.unread.load(Ordering::Relaxed) == 0
    }

    /// Completes with what the connection's task was asked to do since it last looked; a
    /// close wins over a park asked at the same time.
    pub(crate) async fn asked(&self) -> Ask {
        loop {
            self.ask.notified().await;
            let asks = self.asks.swap(0, Ordering::Relaxed);
            if asks & CLOSE != 0 {
                return Ask::Close;
            }
            if asks & PARK != 0 {
                return Ask::Park;
            }
        }
    }

    /// Completes once [`Self::close`] was called; a park asked meanwhile is ignored.
    pub(crate) async fn closing(&self) {
        while self.asked().await != Ask::Close {}
    }

    /// Completes once the connection has gone `limit` without a request: an HTTP/2 connection
    /// with no stream begun or answered in that time, a connection that sent no request at
    /// all, or an HTTP/1 connection between requests for that long.
    pub(crate) async fn idle(&self, limit: Duration) {
        let mut seen = self.events.load(Ordering::Relaxed);
        let mut quiet = 0;
        loop {
            tokio::time::sleep(limit / TICKS).await;
            if self.is_http1() {
                return self.between_http1_requests_for(limit).await;
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

    /// Completes once the HTTP/1 connection has been between requests for `limit`, whether or
    /// not part of a next request has come: the keep-alive timeout, and the bound on a head
    /// sent slowly. hyper's header-read timer would do the same with a timer allocated,
    /// registered and dropped for every request; this one is the connection's, and wakes at
    /// most twice per `limit`.
    async fn between_http1_requests_for(&self, limit: Duration) {
        let timer = tokio::time::sleep(limit);
        tokio::pin!(timer);
        loop {
            timer.as_mut().await;
            let wait = match self.idle_for().filter(|_| self.between_http1_requests()) {
                Some(idle) if idle >= limit => return,
                Some(idle) => limit - idle,
                // Not idle now, so not idle for `limit` before a whole `limit` from now.
                None => limit,
            };
            timer.as_mut().reset(tokio::time::Instant::now() + wait);
        }
    }
}

impl Connection for Activity {
    fn body_begun(&self) {
        self.unread.fetch_add(1, Ordering::Relaxed);
    }

    fn body_ended(&self) {
        self.unread.fetch_sub(1, Ordering::Relaxed);
    }

    fn body_stalled(&self) {
        self.close();
    }
}

/// The coarse monotonic clock in milliseconds (never zero): a few milliseconds of resolution,
/// for a fraction of the cost of the precise clock, read once per request.
pub(super) fn coarse_now() -> u64 {
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

    /// On the real clock: an HTTP/1 connection's idle time is read from the coarse clock.
    #[tokio::test]
    async fn an_http1_connection_is_idle_once_between_requests_for_the_limit_and_no_later() {
        use std::time::Instant;
        const SHORT: Duration = Duration::from_millis(400);
        let activity = Arc::new(Activity::default());
        let request = activity.http1();
        let watched = Arc::clone(&activity);
        let idle = tokio::spawn(async move {
            watched.idle(SHORT).await;
            Instant::now()
        });
        tokio::time::sleep(SHORT * 3).await;
        assert!(!idle.is_finished(), "idle with a request open");
        let answered = Instant::now();
        drop(request);
        let idle_at = tokio::time::timeout(SHORT * 10, idle)
            .await
            .expect("never idle")
            .unwrap();
        let after = idle_at - answered;
        // The coarse clock has a few milliseconds of resolution.
        assert!(after >= SHORT - Duration::from_millis(20), "{after:?}");
        // At the limit, not a whole limit later (with room for a loaded machine).
        assert!(after < SHORT * 7 / 4, "{after:?}");
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

    #[tokio::test]
    async fn an_idle_http1_connection_is_asked_to_park_once_per_idle_period() {
        let activity = Arc::new(Activity::default());
        assert!(!activity.park_if_idle(u64::MAX), "asked before any request");
        drop(activity.http1());
        let since = activity.idle_since().unwrap();
        assert!(
            !activity.park_if_idle(since - 1),
            "asked before idle long enough"
        );
        assert!(activity.park_if_idle(since));
        assert!(
            !activity.park_if_idle(u64::MAX),
            "asked twice in one idle period"
        );
        assert_eq!(activity.asked().await, Ask::Park);
        assert!(activity.between_http1_requests());

        let request = activity.http1();
        assert!(!activity.between_http1_requests(), "a request open");
        drop(request);
        activity.idle_since.store(since + 10, Ordering::Relaxed);
        assert!(activity.park_if_idle(u64::MAX), "a new idle period");
        activity.close();
        assert_eq!(activity.asked().await, Ask::Close, "a close wins");
    }

    #[test]
    fn a_connection_reading_a_request_body_or_on_http2_is_not_asked_to_park() {
        let activity = Arc::new(Activity::default());
        let request = activity.http1();
        activity.body_begun();
        drop(request);
        assert!(!activity.between_http1_requests());
        assert!(!activity.park_if_idle(u64::MAX), "asked with a body unread");
        activity.body_ended();
        assert!(activity.between_http1_requests());
        assert!(activity.park_if_idle(u64::MAX));

        let activity = Arc::new(Activity::default());
        drop(activity.http2());
        assert!(
            !activity.park_if_idle(u64::MAX),
            "an HTTP/2 connection asked"
        );
        assert!(!activity.between_http1_requests());
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
