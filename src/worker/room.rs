//! The worker's connection limit (`--worker-connections`). A worker at its limit stops taking
//! connections and leaves them in the shared queue for its siblings, and takes them again once
//! one of its own closes: a client waits in the queue rather than being accepted by a worker
//! that has no descriptor or memory left for it. When no sibling takes it either, the worker
//! makes room by closing idle keep-alive connections (`accept::make_room`, [`super::shed`]).

use tokio::sync::Notify;

use crate::process::board::Seat;

pub(crate) struct Room {
    limit: u32,
    freed: Notify,
}

impl Room {
    pub(crate) fn new(limit: u32) -> Self {
        Self {
            limit,
            freed: Notify::new(),
        }
    }

    /// Whether the worker at `seat` holds as many connections as it may.
    pub(crate) fn full(&self, seat: Seat) -> bool {
        seat.open() >= self.limit
    }

    /// A connection closed: an accept loop waiting for room looks again.
    pub(crate) fn freed(&self) {
        self.freed.notify_waiters();
    }

    /// Waits until the worker at `seat` holds fewer connections than its limit.
    pub(crate) async fn wait(&self, seat: Seat) {
        loop {
            // Registered before the check, so that a close between the two is not missed.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if !self.full(seat) {
                return;
            }
            freed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::board::Board;

    #[tokio::test]
    async fn a_full_worker_waits_until_a_connection_closes() {
        let (_board, seat, _) = Board::for_two();
        let room: &'static Room = Box::leak(Box::new(Room::new(2)));
        seat.opened();
        seat.opened();
        assert!(room.full(seat));
        let waiting = tokio::spawn(room.wait(seat));
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "it did not wait");
        seat.closed();
        room.freed();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("woken when a connection closed")
            .unwrap();
        assert!(!room.full(seat));
    }
}
