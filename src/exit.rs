//! Exit statuses of the master process, so that a supervisor (systemd's `Restart=`, a shell
//! script) can tell why it stopped.

/// Stopped on request; every worker exited.
pub const OK: u8 = 0;
/// Failed after starting (fork, signals or sockets refused by the system).
pub const FAILURE: u8 = 1;
/// Bad input: an option, config file, environment variable or address; nothing was started.
pub const USAGE: u8 = 2;
/// No worker could boot: the application factory failed, or workers kept dying before they
/// were ready.
pub const BOOT_FAILED: u8 = 3;
