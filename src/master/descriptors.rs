//! The descriptor limit. A login shell or an old init often leaves the soft limit at 1024,
//! far below what a worker holding `--worker-connections` needs; the master raises it to the
//! hard limit before forking, so that every worker inherits it, and says what it is.

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use tracing::{info, warn};

/// Descriptors a worker needs besides its connections: listeners, its channel, the runtime's
/// epoll and eventfd, log files, and files the application opens.
const OVERHEAD: u64 = 64;

/// Raises the soft limit to the hard one, and warns when `worker_connections` (per worker) or
/// `workers × worker_connections` (against the system's total) cannot fit.
pub(super) fn raise(workers: usize, worker_connections: u32) {
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(e) => return warn!("cannot read the descriptor limit: {e}"),
    };
    let limit = if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                warn!("cannot raise the descriptor limit from {soft} to {hard}: {e}");
                soft
            }
        }
    } else {
        soft
    };
    info!("descriptor limit: {limit} per process");
    let wanted = u64::from(worker_connections) + OVERHEAD;
    if limit < wanted {
        warn!(
            "a worker may need {wanted} descriptors for {worker_connections} connections, and \
             the limit is {limit}: raise LimitNOFILE (systemd) or ulimit -n, or lower \
             --worker-connections"
        );
    }
    let total = wanted.saturating_mul(workers as u64);
    if let Some(system) = system_max().filter(|max| *max < total) {
        warn!(
            "{workers} worker(s) of {worker_connections} connections may need {total} \
             descriptors, more than the system's {system} (fs.file-max)"
        );
    }
}

fn system_max() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/sys/fs/file-max").ok()?;
    text.trim().parse().ok()
}
