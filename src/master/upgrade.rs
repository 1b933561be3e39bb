//! Deploying new code: the binary at the path the master started from is checked, then
//! executed in the master's own pid with the listeners, the workers' channels and the
//! balancing board kept open, and a [`Record`] saying what they are. The new image adopts the
//! workers; one that cannot read the record executes the previous image again (kept open, so a
//! deleted or replaced file is no obstacle), which adopts them instead.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl, open};
use nix::sys::stat::Mode;
use nix::unistd::{Pid, execve, fexecve};

use std::time::Instant;

use super::Channel;
use super::core::Snapshot;
use super::handover::{ListenerRecord, Record, WorkerRecord};
use super::workers::Worker;
use crate::config::value;
use crate::process::board::Board;
use crate::process::control;
use crate::process::listeners::{self, Listener};
use crate::process::metrics::Metrics;

/// The record, as JSON, for the new image.
const RECORD_VAR: &str = "PREFORK_UPGRADE_RECORD";
/// The descriptor of the previous image's executable, for a new image that cannot go on.
const PREVIOUS_VAR: &str = "PREFORK_UPGRADE_PREVIOUS";
/// Set when an image falls back to the previous one, so that two images that cannot read the
/// record never hand it back and forth.
const FALLBACK_VAR: &str = "PREFORK_UPGRADE_FALLBACK";

/// What the master needs to execute a new binary of itself.
pub(crate) struct Upgrade {
    /// The path the executable was started from, resolved at start: a deploy puts the new
    /// binary there.
    path: PathBuf,
    /// The command line, `serve` and all.
    args: Vec<OsString>,
    /// This image's own executable, kept open for a new image that cannot go on.
    current: OwnedFd,
}

/// A check of the new binary, running.
pub(crate) struct Preflight {
    pub(crate) pid: Pid,
    /// What it writes to standard error, read once it has ended.
    stderr: File,
}

impl Upgrade {
    /// Resolves the executable's path and keeps this image open. `args` is the command line
    /// the master was started with.
    pub(crate) fn new(args: Vec<OsString>) -> io::Result<Self> {
        let path = started_from(args.first().map(PathBuf::from))?;
        let current = open(
            "/proc/self/exe",
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self {
            path,
            args,
            current,
        })
    }

    /// Starts the binary on disk as `check` with this command line and environment.
    pub(crate) fn preflight(&self) -> Result<Preflight, String> {
        let serve = self.args.iter().position(|a| a == "serve");
        let Some(serve) = serve else {
            return Err("the command line has no serve to check".to_string());
        };
        let mut args = self.args[1..].to_vec();
        args[serve - 1] = OsString::from("check");
        let child = Command::new(&self.path)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pids fit in an i32"));
        let stderr = child.stderr.expect("stderr was piped");
        // Read once the check has ended: a few lines fit the pipe, so it never blocks on it.
        Ok(Preflight {
            pid,
            stderr: File::from(OwnedFd::from(stderr)),
        })
    }

    /// Executes the new binary in this pid, keeping `keep` open for it and telling it what
    /// they are with `record`. Returns only if that failed, with every descriptor as it was.
    pub(crate) fn exec(&self, record: &Record, keep: &[BorrowedFd<'_>]) -> String {
        let env = handover_env(record, self.current.as_raw_fd());
        let kept: Vec<BorrowedFd<'_>> =
            keep.iter().copied().chain([self.current.as_fd()]).collect();
        let error = match inheritable(&kept, true) {
            Ok(()) => match CString::new(self.path.as_os_str().as_bytes()) {
                Ok(path) => execve(&path, &cstrings_of(&self.args), &env).unwrap_err(),
                Err(_) => Errno::EINVAL,
            },
            Err(e) => e,
        };
        let _ = inheritable(&kept, false);
        format!("{}: {error}", self.path.display())
    }
}

impl Preflight {
    /// The first line the check wrote to standard error.
    pub(crate) fn output(&mut self) -> String {
        let mut text = String::new();
        let mut buf = [0u8; 4096];
        if let Ok(n) = self.stderr.read(&mut buf) {
            text = String::from_utf8_lossy(&buf[..n]).into_owned();
        }
        let line = text.lines().next().unwrap_or("").trim();
        line.strip_prefix("prefork: error: ")
            .unwrap_or(line)
            .to_string()
    }
}

/// The path the executable was started as, made absolute but with its symbolic links kept,
/// so that a deploy that switches a link (`current -> releases/v2`) is followed; a bare name
/// is looked up in `PATH`, and without either the running file's own path is used.
fn started_from(argv0: Option<PathBuf>) -> io::Result<PathBuf> {
    let Some(argv0) = argv0.filter(|p| !p.as_os_str().is_empty()) else {
        return std::env::current_exe();
    };
    if argv0.components().count() > 1 {
        return Ok(std::env::current_dir()?.join(argv0));
    }
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(&argv0))
            .find(|candidate| candidate.is_file())
    });
    found.map_or_else(std::env::current_exe, Ok)
}

/// What a previous image handed this one, if it executed it: the record, or why it cannot be
/// read. The variables are removed, so that no worker or check sees them.
///
/// Must be called while the process is single-threaded, as the environment changes.
pub(crate) fn handed_over() -> Option<Result<Record, String>> {
    let record = std::env::var_os(RECORD_VAR)?;
    let previous = std::env::var(PREVIOUS_VAR).ok();
    let fallback = std::env::var_os(FALLBACK_VAR).is_some();
    // SAFETY: the master calls this before any fork and never starts a thread, so nothing
    // reads the environment concurrently.
    unsafe {
        std::env::remove_var(RECORD_VAR);
        std::env::remove_var(PREVIOUS_VAR);
        std::env::remove_var(FALLBACK_VAR);
    }
    let previous = previous
        .and_then(|fd| fd.parse::<RawFd>().ok())
        .filter(|fd| *fd >= 0);
    // SAFETY: the previous image left this descriptor open for this one, and nothing else
    // here owns it.
    let previous = previous.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
    let text = record.to_string_lossy().into_owned();
    let taken = Record::decode(&text)
        .map_err(|why| format!("cannot read the upgrade record: {why}"))
        .and_then(|record| adoptable(&record).map(|()| record));
    Some(match taken {
        Ok(record) => Ok(record),
        // Nothing the record names has been taken yet: the previous binary finds it all open.
        Err(why) => match previous {
            Some(previous) if !fallback => {
                tracing::error!("{why}; going back to the previous binary");
                let error = fall_back(previous, &text);
                Err(format!(
                    "{why}; and cannot go back to the previous binary: {error}"
                ))
            }
            _ => Err(why),
        },
    })
}

/// Whether this build can adopt the shared tables `record` names: a table of another size was
/// made by a build whose layout differs (see `process::metrics`), and mapping it would fail
/// only once the listeners had been taken, too late to go back.
fn adoptable(record: &Record) -> Result<(), String> {
    type Fits = fn(BorrowedFd<'_>) -> nix::Result<bool>;
    let tables: [(&str, Option<RawFd>, Fits); 2] = [
        ("balancing board", Some(record.board), |fd| Board::fits(fd)),
        ("metrics table", record.metrics, |fd| Metrics::fits(fd)),
    ];
    for (what, fd, fits) in tables {
        let Some(fd) = fd else { continue };
        if fd < 0 {
            return Err(format!("the upgrade record names no {what}"));
        }
        // SAFETY: the previous image kept the descriptors the record names open for this one,
        // and none has been taken (and so none closed) yet; it is only borrowed for the call.
        let file = unsafe { BorrowedFd::borrow_raw(fd) };
        match fits(file) {
            Ok(true) => {}
            Ok(false) => {
                return Err(format!(
                    "the running binary's {what} has another layout than this build's: stop \
                     and start the server instead of upgrading it in place"
                ));
            }
            Err(e) => return Err(format!("cannot look at the running binary's {what}: {e}")),
        }
    }
    Ok(())
}

/// What an image takes over from the previous one.
pub(crate) struct Inherited {
    pub(crate) listeners: Vec<Listener>,
    pub(crate) board: (Board, OwnedFd),
    /// `None` from a build without metrics.
    pub(crate) metrics: Option<(Metrics, OwnedFd)>,
    pub(crate) channels: Vec<Channel>,
    pub(crate) snapshot: Snapshot,
}

/// Takes the descriptors `record` names: listeners, channels, the board and the metrics.
pub(crate) fn inherit(record: &Record) -> io::Result<Inherited> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut listeners = Vec::new();
    for l in &record.listeners {
        let addr = value::bind(&l.addr)
            .ok()
            .and_then(|addrs| addrs.into_iter().next())
            .ok_or_else(|| invalid(format!("listener address {}", l.addr)))?;
        // SAFETY: the record names the descriptor, and it is taken once.
        let fd = unsafe { take_fd(l.fd) }?;
        let mut listener = listeners::inherited(fd, Some(addr), l.activated)?;
        listener.metrics = l.metrics;
        listener.tls = l.tls;
        listeners.push(listener);
    }
    // SAFETY: as above.
    let board_file = unsafe { take_fd(record.board) }?;
    let board = Board::map(&board_file)?;
    let metrics = record
        .metrics
        .map(|fd| -> io::Result<_> {
            // SAFETY: as above.
            let file = unsafe { take_fd(fd) }?;
            Ok((Metrics::map(&file)?, file))
        })
        .transpose()?;
    let now = Instant::now();
    let mut channels = Vec::new();
    let mut workers = Vec::new();
    for w in &record.workers {
        let pid = Pid::from_raw(w.pid);
        // SAFETY: as above.
        let fd = w.control.map(|fd| unsafe { take_fd(fd) }).transpose()?;
        channels.push(Channel {
            pid,
            fd,
            cell: w.cell,
        });
        let mut worker = Worker::new(w.slot, w.generation, pid, now);
        worker.ready = w.ready;
        worker.retiring = w.retiring;
        worker.leaving = w.leaving;
        worker.kill_at = w.kill_at.map(control::from_wire);
        workers.push(worker);
    }
    Ok(Inherited {
        listeners,
        board: (board, board_file),
        metrics,
        channels,
        snapshot: Snapshot {
            generation: record.generation,
            target: record.target,
            configured: record.configured,
            was_serving: record.was_serving,
            workers,
        },
    })
}

/// The record of where this master is, and the descriptors it names, for a new image.
pub(crate) fn record<'a>(
    snapshot: &Snapshot,
    channels: &'a [Channel],
    listeners: &'a [Listener],
    board: &'a OwnedFd,
    metrics: &'a OwnedFd,
) -> (Record, Vec<BorrowedFd<'a>>) {
    let mut keep = vec![board.as_fd(), metrics.as_fd()];
    let workers = snapshot
        .workers
        .iter()
        .filter_map(|w| {
            let channel = channels.iter().find(|c| c.pid == w.pid)?;
            keep.extend(channel.fd.as_ref().map(AsFd::as_fd));
            Some(WorkerRecord {
                slot: w.slot,
                generation: w.generation,
                pid: w.pid.as_raw(),
                ready: w.ready,
                retiring: w.retiring,
                leaving: w.leaving,
                kill_at: w.kill_at.map(control::to_wire),
                control: channel.fd.as_ref().map(AsRawFd::as_raw_fd),
                cell: channel.cell,
            })
        })
        .collect();
    let listeners = listeners
        .iter()
        .map(|l| {
            keep.push(l.fd());
            ListenerRecord {
                addr: l.addr.to_string(),
                fd: l.fd().as_raw_fd(),
                activated: l.activated,
                metrics: l.metrics,
                tls: l.tls,
            }
        })
        .collect();
    let record = Record {
        generation: snapshot.generation,
        target: snapshot.target,
        configured: snapshot.configured,
        was_serving: snapshot.was_serving,
        workers,
        listeners,
        board: board.as_raw_fd(),
        metrics: Some(metrics.as_raw_fd()),
    };
    (record, keep)
}

/// Takes ownership of a descriptor a record names, closed on exec again.
///
/// # Safety
///
/// `fd` must be one the record this image was handed names, taken once.
pub(crate) unsafe fn take_fd(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: by the caller's promise the previous image kept `fd` open for this one, and
    // nothing else here owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    fcntl(&fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(fd)
}

/// Executes the previous image with the record it wrote; returns only on failure.
fn fall_back(previous: OwnedFd, record: &str) -> Errno {
    if let Err(e) = fcntl(&previous, FcntlArg::F_SETFD(FdFlag::empty())) {
        return e;
    }
    let fd = previous.as_raw_fd().to_string();
    let env = env_with(&[
        (RECORD_VAR, record),
        (PREVIOUS_VAR, &fd),
        (FALLBACK_VAR, "1"),
    ]);
    let args: Vec<OsString> = std::env::args_os().collect();
    fexecve(&previous, &cstrings_of(&args), &env).unwrap_err()
}

/// The environment of the new image: this one's, and the handover.
fn handover_env(record: &Record, previous: RawFd) -> Vec<CString> {
    env_with(&[
        (RECORD_VAR, &record.encode()),
        (PREVIOUS_VAR, &previous.to_string()),
    ])
}

/// This process's environment without any handover, and then `extra`.
fn env_with(extra: &[(&str, &str)]) -> Vec<CString> {
    let ours = [RECORD_VAR, PREVIOUS_VAR, FALLBACK_VAR];
    let inherited = std::env::vars_os().filter(|(k, _)| !ours.iter().any(|o| k == o));
    let extra = extra
        .iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
    inherited
        .chain(extra)
        .filter_map(|(k, v)| {
            let mut pair = k.as_bytes().to_vec();
            pair.push(b'=');
            pair.extend_from_slice(v.as_bytes());
            CString::new(pair).ok()
        })
        .collect()
}

/// Sets or clears close-on-exec on every descriptor; clears it when `across_exec`.
fn inheritable(fds: &[BorrowedFd<'_>], across_exec: bool) -> Result<(), Errno> {
    let flags = if across_exec {
        FdFlag::empty()
    } else {
        FdFlag::FD_CLOEXEC
    };
    for fd in fds {
        fcntl(fd, FcntlArg::F_SETFD(flags))?;
    }
    Ok(())
}

/// Arguments as C strings; an argument with a NUL byte could not have been passed to this
/// process in the first place, so none is dropped in practice.
fn cstrings_of(items: &[OsString]) -> Vec<CString> {
    items
        .iter()
        .filter_map(|item| CString::new(item.as_bytes()).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use nix::sys::memfd::{MFdFlags, memfd_create};
    use nix::unistd::ftruncate;

    use super::*;

    fn record(board: &OwnedFd, metrics: Option<&OwnedFd>) -> Record {
        Record {
            generation: 1,
            target: 1,
            configured: 1,
            was_serving: true,
            workers: Vec::new(),
            listeners: Vec::new(),
            board: board.as_raw_fd(),
            metrics: metrics.map(AsRawFd::as_raw_fd),
        }
    }

    #[test]
    fn tables_of_another_layout_are_refused_before_anything_is_taken() {
        let (_, board) = Board::new().unwrap();
        let (_, metrics) = Metrics::new().unwrap();
        assert_eq!(adoptable(&record(&board, Some(&metrics))), Ok(()));
        // A build without metrics handed none over.
        assert_eq!(adoptable(&record(&board, None)), Ok(()));

        // Another build's metrics table: a word longer.
        let other = memfd_create(c"prefork-test", MFdFlags::MFD_CLOEXEC).unwrap();
        let len = nix::sys::stat::fstat(&metrics).unwrap().st_size;
        ftruncate(&other, len + 8).unwrap();
        let why = adoptable(&record(&board, Some(&other))).unwrap_err();
        assert!(why.contains("metrics table has another layout"), "{why}");
        let why = adoptable(&record(&other, Some(&metrics))).unwrap_err();
        assert!(why.contains("balancing board has another layout"), "{why}");
        // Borrowed only: both are still open.
        assert!(nix::sys::stat::fstat(&other).is_ok() && nix::sys::stat::fstat(&metrics).is_ok());
    }
}
