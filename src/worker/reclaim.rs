//! Giving a flood's memory back to the kernel once it has passed.
//!
//! A flood of connections spreads their buffers over the whole heap; when they close, glibc
//! keeps the freed memory resident (it returns only the top of the heap, see [`super::heap`]),
//! and the next flood piles onto what the last one left. A worker that held 2 000 connections
//! stayed at 40 MiB after they closed, and three such rounds took it to 58 MiB. Neither a lower
//! trim threshold nor a single arena (`M_ARENA_MAX`) changed that; mapping large blocks on
//! their own (`M_MMAP_THRESHOLD`) gave back part of a header flood but nothing of a connection
//! flood, and would cost the static files their speed. What works is `malloc_trim`, which frees
//! the pages of free chunks anywhere in every arena.
//!
//! It walks the heap, so a worker trims only when load has fallen: once a second it compares
//! the connections holding buffers (open and not parked, see [`super::parking`]) with the most
//! it held since it last trimmed, and how many connections it took since the last look.
//! Nothing is added per request or per connection.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::debug;

use super::{Me, Shared, heap};

/// How often the worker looks at its load: 1 s.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Connections that must have closed since the last trim for another to be worth it: 64, a
/// little over 1 MiB of per-connection buffers. Fewer leave too little to give back.
const CHURN: usize = 64;

/// Looks at the worker's load once per [`CHECK_EVERY`] and trims the heap when it has fallen.
pub(super) async fn after_load_falls(shared: &'static Shared) {
    let mut every = tokio::time::interval(CHECK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Parked connections hold no buffers (see [`super::parking`]): parking many gives back as
    // much as closing them.
    let holding = || {
        let parked = shared.protocols.parked.load(Ordering::Relaxed);
        shared.tracker.len().saturating_sub(parked)
    };
    let mut load = Load::new(holding(), shared.seat.accepted());
    loop {
        every.tick().await;
        if load.fell(holding(), shared.seat.accepted()) {
            trim(Me(shared.slot));
        }
    }
}

fn trim(me: Me) {
    let before = resident();
    let started = Instant::now();
    heap::release_free();
    let took = started.elapsed();
    let after = resident();
    debug!(
        "{me}: load fell, heap trimmed in {took:.1?}: resident {:.1} -> {:.1} MiB",
        mib(before),
        mib(after)
    );
}

/// The worker's resident memory in bytes (`VmRSS`); 0 if `/proc` cannot be read.
fn resident() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            let kib = line.split_whitespace().nth(1)?.parse::<u64>().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(0)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// What the worker held and took, as of its last look and its last trim.
struct Load {
    /// The most connections seen open at a look since the last trim.
    peak: usize,
    /// Connections open at the last trim (or at start).
    open_at_trim: usize,
    /// The worker's accepted count (wrapping) at the last trim, and at the last look.
    accepted_at_trim: u32,
    accepted_at_look: u32,
}

impl Load {
    fn new(open: usize, accepted: u32) -> Self {
        Self {
            peak: open,
            open_at_trim: open,
            accepted_at_trim: accepted,
            accepted_at_look: accepted,
        }
    }

    /// Takes a look: true when the heap is worth trimming now. That is when at least [`CHURN`]
    /// connections have closed since the last trim, and either the worker holds at most half of
    /// the most it held, and [`CHURN`] fewer (a flood ended, even while others go on), or it
    /// took no connection
    /// since the last look (a burst too short for a look to see its peak has passed). A steady
    /// load of keep-alive connections closes none (it sees one trim at most, for connections
    /// that closed before it); one of short connections is never quiet and never halves.
    fn fell(&mut self, open: usize, accepted: u32) -> bool {
        let quiet = accepted == self.accepted_at_look;
        self.accepted_at_look = accepted;
        self.peak = self.peak.max(open);
        let taken = accepted.wrapping_sub(self.accepted_at_trim) as usize;
        let closed = (self.open_at_trim + taken).saturating_sub(open);
        let halved = self.peak - open >= CHURN.max(self.peak.div_ceil(2));
        if closed < CHURN || !(halved || quiet) {
            return false;
        }
        *self = Self::new(open, accepted);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_that_ends_is_trimmed_once() {
        let mut load = Load::new(0, 0);
        // 2 000 connections arrive and stay open.
        assert!(!load.fell(1000, 1000));
        assert!(!load.fell(2000, 2000));
        assert!(!load.fell(2000, 2000), "held, not fallen");
        // They close.
        assert!(load.fell(0, 2000));
        assert!(!load.fell(0, 2000), "nothing closed since");
    }

    #[test]
    fn a_flood_that_ends_under_other_traffic_is_trimmed() {
        let mut load = Load::new(10, 0);
        assert!(!load.fell(2010, 2000));
        // Steady new connections, never quiet, and most of the flood gone.
        assert!(!load.fell(1500, 2100), "not yet half");
        assert!(load.fell(300, 2200));
    }

    #[test]
    fn a_burst_between_two_looks_is_trimmed_when_quiet() {
        let mut load = Load::new(5, 0);
        // 500 connections came and went between two looks; more keep coming.
        assert!(!load.fell(5, 500));
        // None came since the last look.
        assert!(load.fell(5, 500));
    }

    #[test]
    fn steady_load_is_not_trimmed() {
        // Keep-alive: the same connections, none closing.
        let mut load = Load::new(0, 0);
        for _ in 0..10 {
            assert!(!load.fell(64, 64));
        }
        // One connection per request: thousands close, but new ones keep coming and the count
        // moves by less than the churn.
        let mut load = Load::new(0, 0);
        for second in 1..10u32 {
            let open = if second % 2 == 0 { 20 } else { 60 };
            assert!(!load.fell(open, second * 5000), "second {second}");
        }
    }

    #[test]
    fn few_closed_connections_are_not_worth_a_trim() {
        let mut load = Load::new(0, 0);
        assert!(!load.fell(CHURN - 1, CHURN as u32 - 1));
        assert!(!load.fell(0, CHURN as u32 - 1));
        assert!(!load.fell(1, CHURN as u32));
        assert!(load.fell(0, CHURN as u32));
    }

    #[test]
    fn the_accepted_count_may_wrap() {
        let mut load = Load::new(0, u32::MAX - 10);
        assert!(!load.fell(100, 89));
        assert!(load.fell(0, 89));
    }
}
