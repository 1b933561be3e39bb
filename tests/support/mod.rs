//! What the end-to-end tests (`tests/e2e`) and the benchmark (`benches/prefork`) share: running
//! the real binaries in their own process group with a guard that kills the group, following
//! their logs, and reading `/proc`. Every wait is bounded.
//!
//! Both include this file with `#[path]` as a `pub mod` of their crate root, so that what only
//! one of them uses is not reported as dead code in the other.

pub mod certs;
pub mod procfs;
pub mod server;

use std::time::{Duration, Instant};

pub use server::{Bin, Builder, Server, run};

/// The longest any single wait lasts; only reached when something is broken.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Calls `check` until it gives a value, every `every`, at most `timeout`; `None` if it never
/// did.
pub fn poll<T>(
    timeout: Duration,
    every: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let until = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= until {
            return None;
        }
        // The polling interval of a bounded wait.
        std::thread::sleep(every);
    }
}

/// Waits until `check` gives a value, failing with `what` after [`PATIENCE`].
pub fn wait_for<T>(what: impl std::fmt::Display, check: impl FnMut() -> Option<T>) -> T {
    poll(PATIENCE, Duration::from_millis(5), check)
        .unwrap_or_else(|| panic!("{what}: not within {PATIENCE:?}"))
}

/// Distinct values, for counting which workers served.
pub fn distinct<T: std::hash::Hash + Eq + Clone>(items: &[T]) -> usize {
    items
        .iter()
        .cloned()
        .collect::<std::collections::HashSet<_>>()
        .len()
}

/// A tokio runtime for a test's async clients (HTTP/2, websockets). The test process itself
/// never forks; the servers it starts do. Spawned tasks run on a thread of their own, so that
/// a test may block in `block_on` waiting for the server while its requests go on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}
