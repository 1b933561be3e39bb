//! HTTP/2 responses stalled by flow control.
//!
//! A client that keeps reading the socket but never opens a stream's flow-control window
//! holds the stream, and the connection, for as long as it likes: the socket writes never
//! wait (so the write side of the io timeout sees nothing), and hyper, once it holds a frame
//! it may not send, stops polling the response body. What is visible is exactly that: a body
//! that handed hyper a frame and has not been polled since. An application slow to produce
//! (an event stream between events) is waiting on its own body, not on the client, and does
//! not count.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// One connection's response bodies waiting on the client.
///
/// Time is cut into epochs of one io timeout, counted by [`Flow::stalled`]; a body that hands
/// a frame counts in the slot of the current epoch's parity until it is polled again. When an
/// epoch ends, the slot of the one before it holds only bodies that have waited through a
/// whole epoch: a stall between one and two timeouts long. No clock is read per frame, and no
/// timer runs per stream.
#[derive(Default)]
pub(crate) struct Flow {
    epoch: AtomicUsize,
    handed: [AtomicUsize; 2],
}

impl Flow {
    /// A body handed a frame: returns the slot to give back to [`Flow::taken`].
    pub(crate) fn handed(&self) -> usize {
        let slot = self.epoch.load(Ordering::Relaxed) % 2;
        self.handed[slot].fetch_add(1, Ordering::Relaxed);
        slot
    }

    /// The body that handed a frame in `slot` was polled again, or is gone.
    pub(crate) fn taken(&self, slot: usize) {
        self.handed[slot].fetch_sub(1, Ordering::Relaxed);
    }

    /// Completes once a response body has waited on the client for a whole `timeout`, so
    /// between one and two timeouts after it handed its frame; `http1` says, after each
    /// timeout, whether the connection turned out to be HTTP/1, where socket writes stall
    /// instead and this never completes.
    pub(crate) async fn stalled(&self, timeout: Duration, http1: impl Fn() -> bool) {
        loop {
            tokio::time::sleep(timeout).await;
            if http1() {
                return std::future::pending().await;
            }
            // Relaxed: a body reads the epoch a whole timeout after it was last written.
            let next = self.epoch.load(Ordering::Relaxed).wrapping_add(1);
            if self.handed[next % 2].load(Ordering::Relaxed) > 0 {
                return;
            }
            self.epoch.store(next, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(1);

    fn watch(flow: &'static Flow) -> tokio::task::JoinHandle<()> {
        tokio::spawn(flow.stalled(TIMEOUT, || false))
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_left_waiting_stalls_between_one_and_two_timeouts() {
        let flow: &'static Flow = Box::leak(Box::default());
        let watch = watch(flow);
        // Just after an epoch began: the longest wait.
        tokio::time::sleep(TIMEOUT / 10).await;
        let _slot = flow.handed();
        tokio::time::sleep(TIMEOUT * 18 / 10).await;
        assert!(!watch.is_finished(), "cut before a whole epoch");
        tokio::time::sleep(TIMEOUT * 2 / 10).await;
        tokio::task::yield_now().await;
        assert!(watch.is_finished(), "not cut within two timeouts");
    }

    #[tokio::test(start_paused = true)]
    async fn frames_taken_in_time_never_stall() {
        let flow: &'static Flow = Box::leak(Box::default());
        let watch = watch(flow);
        for _ in 0..50 {
            let slot = flow.handed();
            tokio::time::sleep(TIMEOUT * 9 / 10).await;
            flow.taken(slot);
        }
        assert!(
            !watch.is_finished(),
            "a body polled within the timeout was cut"
        );
    }
}
