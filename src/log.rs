//! Logging: one line per event on standard error, written synchronously so that the master
//! needs no logging thread.

use std::io::IsTerminal;

/// Installs the global subscriber unless the application installed one already.
pub(crate) fn init(level: tracing::Level) {
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}
