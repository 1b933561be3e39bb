//! What the master and the workers share, and neither owns: the listening sockets, the control
//! channel between them, the accept-balancing board, the metrics table, the privileges to
//! drop, the signal set-up of a new child, and the handoff from one to the other at the fork. `master` and `worker`
//! both build on this layer and never on each other, as nginx's `ngx_process.c` and
//! `ngx_channel.c` serve its master and its workers alike.

pub(crate) mod board;
pub(crate) mod control;
pub(crate) mod handoff;
pub(crate) mod listeners;
pub(crate) mod metrics;
pub(crate) mod privileges;
mod shared_memory;
pub(crate) mod signals;
pub(crate) mod spawn;
