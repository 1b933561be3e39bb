//! What one connection has been doing, as its service sees it, so that an HTTP/2 connection
//! left without requests can be closed. hyper times out idle HTTP/1 connections itself (its
//! header-read timer) but has no idle timeout for HTTP/2, where a client may keep a connection
//! open forever without sending a stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

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
}

impl Activity {
    /// Notes an HTTP/1 request: hyper's own timers watch such a connection.
    pub(crate) fn http1(&self) {
        self.protocol.store(HTTP1, Ordering::Relaxed);
    }

    /// Notes an HTTP/2 request begun; the guard notes it answered when dropped (also when
    /// the client resets the stream and hyper drops the response future).
    pub(crate) fn http2(self: &Arc<Self>) -> Answering {
        self.protocol.store(HTTP2, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.events.fetch_add(1, Ordering::Relaxed);
        Answering(Arc::clone(self))
    }

    pub(crate) fn is_http2(&self) -> bool {
        self.protocol.load(Ordering::Relaxed) == HTTP2
    }

    /// Completes once the connection has gone `limit` without a request: an HTTP/2 connection
    /// with no stream begun or answered in that time, or a connection that sent no request at
    /// all. Never completes for HTTP/1, which hyper times out itself.
    pub(crate) async fn idle(&self, limit: Duration) {
        let mut seen = self.events.load(Ordering::Relaxed);
        let mut quiet = 0;
        loop {
            tokio::time::sleep(limit / TICKS).await;
            let protocol = self.protocol.load(Ordering::Relaxed);
            if protocol == HTTP1 {
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

/// An HTTP/2 request being answered, until its response is produced. A response body that
/// streams on (server-sent events) does not hold the connection: after the idle timeout it
/// is sent GOAWAY, which lets the stream finish and moves the client's next requests to a
/// new connection.
pub(crate) struct Answering(Arc<Activity>);

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.events.fetch_add(1, Ordering::Relaxed);
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
        let activity = Activity::default();
        activity.http1();
        assert!(!idle_within(&activity, LIMIT * 10).await);
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
