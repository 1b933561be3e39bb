//! The worker's open connections, so that idle keep-alive ones can be closed to make room
//! (nginx's `ngx_drain_connections`) when the worker is at its connection limit with clients
//! waiting, or out of descriptors, and asked to give back their buffers once idle for a while.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use slab::Slab;

use super::activity::{Activity, coarse_now};

/// At most this many connections are closed at a time, the longest idle first (nginx closes
/// up to 32).
const AT_ONCE: usize = 32;

/// Every connection hyper serves; upgraded ones leave when hyper hands them over.
#[derive(Default)]
pub(crate) struct Connections {
    open: Mutex<Slab<Arc<Activity>>>,
}

impl Connections {
    /// Registers a connection for as long as the returned guard lives: one lock when it opens
    /// and one when it closes, none per request.
    pub(crate) fn enter(&'static self, activity: &Arc<Activity>) -> Entered {
        let key = self.lock().insert(Arc::clone(activity));
        Entered {
            connections: self,
            key,
        }
    }

    /// Asks up to [`AT_ONCE`] of the longest-idle keep-alive connections (HTTP/1 between
    /// requests, HTTP/2 with no stream open) to close gracefully, and returns how many. A
    /// connection whose next request arrives meanwhile answers it first.
    pub(crate) fn shed(&self) -> usize {
        let open = self.lock();
        let mut idle: Vec<(u64, usize)> = open
            .iter()
            .filter_map(|(key, activity)| activity.idle_since().map(|since| (since, key)))
            .collect();
        if idle.len() > AT_ONCE {
            idle.select_nth_unstable(AT_ONCE - 1);
            idle.truncate(AT_ONCE);
        }
        for (_, key) in &idle {
            open[*key].close();
        }
        idle.len()
    }

    /// Asks the HTTP/1 connections idle for `idle_for` or longer, and not asked yet in this
    /// idle period, to park (see [`super::parking`]); returns how many were asked.
    pub(crate) fn ask_idle_to_park(&self, idle_for: Duration) -> usize {
        let before = coarse_now().saturating_sub(idle_for.as_millis() as u64);
        let open = self.lock();
        open.iter()
            .filter(|(_, activity)| activity.park_if_idle(before))
            .count()
    }

    fn lock(&self) -> MutexGuard<'_, Slab<Arc<Activity>>> {
        // The slab is consistent between any two calls: a panic elsewhere cannot leave it
        // half-changed.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A connection's place in [`Connections`].
pub(crate) struct Entered {
    connections: &'static Connections,
    key: usize,
}

impl Drop for Entered {
    fn drop(&mut self) {
        self.connections.lock().remove(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_idle_keep_alive_connections_are_shed_and_busy_ones_kept() {
        let connections: &'static Connections = Box::leak(Box::default());
        let fresh = Arc::new(Activity::default());
        let _fresh = connections.enter(&fresh);
        let busy = Arc::new(Activity::default());
        let _busy = connections.enter(&busy);
        let _request = busy.http1();
        let mut idle = Vec::new();
        for _ in 0..AT_ONCE + 5 {
            let activity = Arc::new(Activity::default());
            drop(activity.http1());
            idle.push((connections.enter(&activity), activity));
        }
        assert_eq!(connections.shed(), AT_ONCE);
        let asked = |activity: &Arc<Activity>| {
            let closing = activity.closing();
            tokio::pin!(closing);
            let waker = std::task::Waker::noop();
            closing
                .as_mut()
                .poll(&mut std::task::Context::from_waker(waker))
                .is_ready()
        };
        assert!(!asked(&fresh), "a connection that sent no request was shed");
        assert!(!asked(&busy), "a connection with a request open was shed");
        let shed = idle.iter().filter(|(_, a)| asked(a)).count();
        assert_eq!(shed, AT_ONCE);
        drop(idle);
        assert_eq!(
            connections.lock().len(),
            2,
            "closed connections stay listed"
        );
    }
}
