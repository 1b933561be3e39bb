//! A worker that is a program (`prefork run`): what the forked child does before it becomes
//! the program, which keeps its pid.
//!
//! The program finds what systemd's socket activation would give it: the listening sockets as
//! descriptors 3, 4, … with `LISTEN_FDS`, `LISTEN_PID` (its own pid) and `LISTEN_FDNAMES`;
//! `NOTIFY_SOCKET` for `READY=1` and `WATCHDOG=1`, and with a heartbeat timeout
//! `WATCHDOG_USEC`. It leads a process group of its own, which the master kills whole.

use std::ffi::{OsStr, OsString};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::fcntl::{FcntlArg, fcntl};
use nix::sys::signal::Signal;
use nix::unistd::{Pid, getpid, getppid, setpgid};
use tracing::error;

use crate::Error;
use crate::config::Config;
use crate::exit;
use crate::process::handoff::{Handoff, ProgramSide};
use crate::process::listeners::Listener;
use crate::process::privileges;

/// The first descriptor of the listeners, as in socket activation.
const FIRST_FD: i32 = 3;

/// What `{fd}` in the program's arguments becomes.
const FD_PLACEHOLDER: &[u8] = b"{fd}";

/// The name each listener is given in `LISTEN_FDNAMES`.
const FD_NAME: &str = "prefork";

/// Checks that the program can be found before anything starts: a missing program is a
/// failure to boot (exit status 3) in one line, not a crash loop of workers.
pub(crate) fn check(argv: &[OsString]) -> Result<(), Error> {
    let program = argv
        .first()
        .ok_or_else(|| Error::config("prefork run needs a program to run"))?;
    if find(program, std::env::var_os("PATH").as_deref()).is_some() {
        return Ok(());
    }
    let place = if program.as_bytes().contains(&b'/') {
        ""
    } else {
        " in PATH"
    };
    Err(Error::boot(format!(
        "cannot run '{}': no such executable{place}",
        program.to_string_lossy()
    )))
}

/// Where `program` is, as `execvp` would look for it.
fn find(program: &OsStr, path: Option<&OsStr>) -> Option<PathBuf> {
    let executable =
        |p: &Path| nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok() && p.is_file();
    if program.as_bytes().contains(&b'/') {
        let p = PathBuf::from(program);
        return executable(&p).then_some(p);
    }
    std::env::split_paths(path.unwrap_or(OsStr::new("/usr/local/bin:/usr/bin:/bin")))
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
}

/// Becomes the program; returns only the exit status of a child that could not.
pub(crate) fn exec(handoff: Handoff) -> u8 {
    let slot = handoff.slot;
    let me = format!("worker {slot} (pid {})", getpid());
    let Some(argv) = handoff.config.program.clone() else {
        error!("{me}: no program to run");
        return exit::FAILURE;
    };
    let Some(side) = handoff.program else {
        error!("{me}: no program side handed over");
        return exit::FAILURE;
    };
    if let Err(e) = prepare(handoff.master, &handoff.config, side, &handoff.listeners) {
        error!("{me}: {e}");
        return exit::FAILURE;
    }
    let err = command(&argv, slot, handoff.listeners.len(), &handoff.config).exec();
    error!("{me}: cannot run '{}': {err}", argv[0].to_string_lossy());
    exit::BOOT_FAILED
}

/// The process as the program must find it. Signals first (the master's mask is inherited
/// across exec), its own process group, privileges dropped before the parent-death signal
/// (a change of user clears it), then the descriptors.
fn prepare(
    master: Pid,
    config: &Config,
    side: ProgramSide,
    listeners: &[Listener],
) -> Result<(), String> {
    crate::process::signals::reset_in_child()?;
    setpgid(Pid::from_raw(0), Pid::from_raw(0))
        .map_err(|e| format!("cannot start a process group: {e}"))?;
    privileges::drop_to(&config.credentials)?;
    nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)
        .map_err(|e| format!("cannot set the parent-death signal: {e}"))?;
    if getppid() != master {
        return Err("the master exited while this worker was starting".to_string());
    }
    if let Some([stdout, stderr]) = side.output {
        nix::unistd::dup2_stdout(&stdout).map_err(|e| format!("cannot set up output: {e}"))?;
        nix::unistd::dup2_stderr(&stderr).map_err(|e| format!("cannot set up output: {e}"))?;
    }
    place_listeners(listeners).map_err(|e| format!("cannot pass the listeners: {e}"))?;
    // SAFETY: this child has a single thread (forked from the single-threaded master), so
    // nothing reads the environment while it changes.
    unsafe { std::env::set_var("NOTIFY_SOCKET", side.notify_socket) };
    Ok(())
}

/// Puts the listeners at descriptors 3, 4, … without close-on-exec. Each is first moved above
/// that range, so that placing one never closes another that sat where it goes.
fn place_listeners(listeners: &[Listener]) -> std::io::Result<()> {
    let above = FIRST_FD + listeners.len() as i32;
    let mut moved = Vec::new();
    for listener in listeners {
        let raw = fcntl(listener.fd(), FcntlArg::F_DUPFD_CLOEXEC(above))?;
        // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor, owned by nothing else.
        moved.push(unsafe { OwnedFd::from_raw_fd(raw) });
    }
    for (target, fd) in (FIRST_FD..).zip(moved) {
        // Programs written for socket activation expect what systemd passes by default: a
        // blocking socket. Those that want it otherwise set it themselves.
        socket2::SockRef::from(&fd).set_nonblocking(false)?;
        // SAFETY: `target` is a plain number, consumed by dup2: whatever it referred to in this
        // child (a descriptor of the master's, close-on-exec) is closed and replaced.
        let placed = unsafe { nix::unistd::dup2_raw(&fd, target) }?;
        // Kept open through exec: dup2 clears close-on-exec on the copy.
        let _ = placed.into_raw_fd();
    }
    Ok(())
}

/// The program's command: its arguments with `{fd}` replaced, and the environment of socket
/// activation.
fn command(argv: &[OsString], slot: usize, listeners: usize, config: &Config) -> Command {
    let mut command = Command::new(&argv[0]);
    command.args(argv[1..].iter().map(|arg| substitute(arg)));
    // In a process group of its own, a program is in the background of a terminal it was
    // started from, and reading from it would stop the program (SIGTTIN).
    command.stdin(std::process::Stdio::null());
    let pid = getpid().to_string();
    let names = vec![FD_NAME; listeners].join(":");
    command
        .env("LISTEN_FDS", listeners.to_string())
        .env("LISTEN_PID", &pid)
        .env("LISTEN_FDNAMES", names)
        .env("PREFORK_WORKER", slot.to_string());
    // The master's own watchdog settings are systemd's, for the master; a program gets the
    // heartbeat timeout as its own.
    if config.timeout.is_zero() {
        command
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID");
    } else {
        command
            .env("WATCHDOG_USEC", config.timeout.as_micros().to_string())
            .env("WATCHDOG_PID", &pid);
    }
    command
}

/// `arg` with every `{fd}` replaced by the first listener's descriptor.
fn substitute(arg: &OsStr) -> OsString {
    let bytes = arg.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    while let Some(at) = rest
        .windows(FD_PLACEHOLDER.len())
        .position(|w| w == FD_PLACEHOLDER)
    {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(FIRST_FD.to_string().as_bytes());
        rest = &rest[at + FD_PLACEHOLDER.len()..];
    }
    out.extend_from_slice(rest);
    OsString::from_vec(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_placeholders_are_replaced() {
        assert_eq!(substitute(OsStr::new("{fd}")), "3");
        assert_eq!(substitute(OsStr::new("fd://{fd}")), "fd://3");
        assert_eq!(substitute(OsStr::new("{fd},{fd}")), "3,3");
        assert_eq!(substitute(OsStr::new("{fdx}")), "{fdx}");
        assert_eq!(substitute(OsStr::new("plain")), "plain");
    }

    #[test]
    fn programs_are_found_as_execvp_would() {
        let path = OsStr::new("/nonexistent:/bin:/usr/bin");
        assert!(find(OsStr::new("sh"), Some(path)).is_some());
        assert!(find(OsStr::new("/bin/sh"), None).is_some());
        assert!(find(OsStr::new("no-such-program-here"), Some(path)).is_none());
        assert!(
            find(OsStr::new("/etc/passwd"), None).is_none(),
            "not executable"
        );
        assert!(find(OsStr::new("/bin"), None).is_none(), "a directory");
    }
}
