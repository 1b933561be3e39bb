//! The master's side of workers that are programs (`prefork run`): their `NOTIFY_SOCKET`, the
//! signal that asks them to stop, their process groups, and their output when it is prefixed.
//!
//! A program has no control channel: it says it is ready or alive with systemd's datagrams
//! (`READY=1`, `WATCHDOG=1`) on a socket of the master's, is asked to stop with a signal, and
//! is made to stop by killing its whole process group, so that neither a program that ignores
//! the signal nor children it left behind outlive the deadline.

use std::io::{IoSliceMut, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::socket::{
    self, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
    UnixCredentials, sockopt,
};
use nix::unistd::{Pid, getpgid, getpid, setpgid};
use tracing::debug;

use crate::config::Config;
use crate::process::control::{Leave, ToMaster};
use crate::process::handoff::ProgramSide;

/// The largest notification read; systemd's own limit is the same order.
const DATAGRAM: usize = 4096;
/// A line longer than this is written out in pieces rather than buffered whole.
const LONGEST_LINE: usize = 64 * 1024;

pub(super) struct Programs {
    notify: OwnedFd,
    /// `NOTIFY_SOCKET` as the programs get it: `@` and the abstract name.
    notify_name: String,
    stop_signal: Signal,
    prefix: bool,
    /// Stop signals to send at a drain's start, after the shutdown delay.
    pending: Vec<(Pid, Instant)>,
    outputs: Vec<Output>,
}

/// One program's standard output or error, read by the master to prefix its lines.
struct Output {
    slot: usize,
    fd: OwnedFd,
    to_stderr: bool,
    partial: Vec<u8>,
}

impl Programs {
    /// Binds the notification socket: abstract, so that there is no file to clean up and no
    /// permission to grant a worker that dropped its privileges; only datagrams from the
    /// workers' process groups are believed.
    pub(super) fn new(config: &Config) -> nix::Result<Self> {
        let notify = socket::socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        socket::setsockopt(&notify, sockopt::PassCred, &true)?;
        let name = format!("prefork/{}/notify", getpid());
        socket::bind(
            notify.as_raw_fd(),
            &UnixAddr::new_abstract(name.as_bytes())?,
        )?;
        Ok(Self {
            notify,
            notify_name: format!("@{name}"),
            stop_signal: config.worker_stop_signal,
            prefix: config.prefix_output,
            pending: Vec::new(),
            outputs: Vec::new(),
        })
    }

    /// Takes the settings of a reloaded configuration.
    pub(super) fn reconfigure(&mut self, config: &Config) {
        self.stop_signal = config.worker_stop_signal;
        self.prefix = config.prefix_output;
    }

    /// What a new worker gets, and the read ends of its output pipes for [`Self::spawned`].
    pub(super) fn prepare(&self) -> nix::Result<(ProgramSide, Option<[OwnedFd; 2]>)> {
        let (output, readers) = if self.prefix {
            let (out_r, out_w) = output_pipe()?;
            let (err_r, err_w) = output_pipe()?;
            (Some([out_w, err_w]), Some([out_r, err_r]))
        } else {
            (None, None)
        };
        let side = ProgramSide {
            notify_socket: self.notify_name.clone(),
            output,
        };
        Ok((side, readers))
    }

    /// A worker was forked: it leads a process group of its own (set here too, so that a kill
    /// that comes before the child set it still reaches the group), and its output is read.
    pub(super) fn spawned(&mut self, pid: Pid, slot: usize, readers: Option<[OwnedFd; 2]>) {
        // Fails once the child has executed its program, by which time it has done it itself.
        let _ = setpgid(pid, pid);
        for (fd, to_stderr) in readers.into_iter().flatten().zip([false, true]) {
            self.outputs.push(Output {
                slot,
                fd,
                to_stderr,
                partial: Vec::new(),
            });
        }
    }

    /// Asks a program to stop with the stop signal: at once to quit (the master kills it a
    /// second later), and at the drain's start to drain (killed at the deadline).
    pub(super) fn tell(&mut self, pid: Pid, leave: Leave, now: Instant) {
        match leave {
            Leave::Drain { start, .. } if start > now => {
                self.pending.retain(|(p, _)| *p != pid);
                self.pending.push((pid, start));
            }
            _ => {
                self.pending.retain(|(p, _)| *p != pid);
                let _ = kill(pid, self.stop_signal);
            }
        }
    }

    /// Sends the stop signals whose drain has started.
    pub(super) fn signal_due(&mut self, now: Instant) {
        let signal = self.stop_signal;
        self.pending.retain(|(pid, at)| {
            if *at > now {
                return true;
            }
            let _ = kill(*pid, signal);
            false
        });
    }

    /// When the next stop signal is due.
    pub(super) fn next_wake(&self) -> Option<Instant> {
        self.pending.iter().map(|(_, at)| *at).min()
    }

    /// Kills a program and everything in its process group.
    pub(super) fn kill(&self, pid: Pid) {
        let _ = killpg(pid, Signal::SIGKILL);
        let _ = kill(pid, Signal::SIGKILL);
    }

    /// A program exited: what it left behind in its process group goes with it.
    pub(super) fn reaped(&mut self, pid: Pid) {
        self.pending.retain(|(p, _)| *p != pid);
        let _ = killpg(pid, Signal::SIGKILL);
    }

    /// The descriptors the master's loop waits on for the programs.
    pub(super) fn fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        std::iter::once(self.notify.as_fd()).chain(self.outputs.iter().map(|o| o.fd.as_fd()))
    }

    /// Every notification waiting, as messages from the worker whose process group sent it.
    /// `workers` are the pids the master knows.
    pub(super) fn read(&self, workers: &[Pid], out: &mut Vec<(Pid, ToMaster)>) {
        let mut buf = [0u8; DATAGRAM];
        loop {
            let mut cmsg = nix::cmsg_space!(UnixCredentials);
            let mut iov = [IoSliceMut::new(&mut buf)];
            let (len, sender) = match socket::recvmsg::<()>(
                self.notify.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(msg) => {
                    let sender = msg.cmsgs().ok().and_then(|mut cmsgs| {
                        cmsgs.find_map(|c| match c {
                            ControlMessageOwned::ScmCredentials(creds) => {
                                Some(Pid::from_raw(creds.pid()))
                            }
                            _ => None,
                        })
                    });
                    (msg.bytes, sender)
                }
                Err(Errno::EINTR) => continue,
                Err(_) => return,
            };
            let Some(worker) = sender.and_then(|pid| worker_of(pid, workers)) else {
                debug!("ignoring a notification from a process that is no worker");
                continue;
            };
            for line in buf[..len].split(|b| *b == b'\n') {
                match line {
                    b"READY=1" => out.push((worker, ToMaster::Ready)),
                    b"WATCHDOG=1" => out.push((worker, ToMaster::Heartbeat)),
                    _ => {}
                }
            }
        }
    }

    /// Writes what the programs wrote, each line prefixed with its worker's slot.
    pub(super) fn pump_output(&mut self) {
        let mut buf = [0u8; 16 * 1024];
        self.outputs.retain_mut(|output| {
            loop {
                match nix::unistd::read(&output.fd, &mut buf) {
                    Ok(n) if n > 0 => {
                        let lines = output.take(&buf[..n]);
                        output.write(&lines);
                    }
                    Err(Errno::EINTR) => {}
                    Err(Errno::EAGAIN) => return true,
                    // The end of the output: every process holding the pipe has gone.
                    Ok(_) | Err(_) => {
                        let rest = output.rest();
                        output.write(&rest);
                        return false;
                    }
                }
            }
        });
    }
}

impl Output {
    /// The whole lines in `bytes`, prefixed, keeping the last partial one for later (unless it
    /// grew too long to keep).
    fn take(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.partial.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(end) = self.partial[start..].iter().position(|b| *b == b'\n') {
            self.prefix(&mut out);
            out.extend_from_slice(&self.partial[start..start + end + 1]);
            start += end + 1;
        }
        self.partial.drain(..start);
        if self.partial.len() > LONGEST_LINE {
            out.extend(self.rest());
        }
        out
    }

    /// What is left of a last line, ended, prefixed.
    fn rest(&mut self) -> Vec<u8> {
        if self.partial.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::new();
        self.prefix(&mut out);
        out.append(&mut self.partial);
        out.push(b'\n');
        out
    }

    fn prefix(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(format!("[worker {}] ", self.slot).as_bytes());
    }

    fn write(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        // Where the master's own output cannot be written, the programs' cannot either.
        let _ = if self.to_stderr {
            std::io::stderr().write_all(bytes)
        } else {
            std::io::stdout().write_all(bytes)
        };
    }
}

/// The worker a notification came from: the sender itself, or a process in its group (a
/// program that runs its server in a child).
fn worker_of(sender: Pid, workers: &[Pid]) -> Option<Pid> {
    if workers.contains(&sender) {
        return Some(sender);
    }
    let group = getpgid(Some(sender)).ok()?;
    workers.contains(&group).then_some(group)
}

/// A pipe for a program's output: the master's end does not block, the program's does, as a
/// terminal or a file would.
fn output_pipe() -> nix::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    fcntl(&read, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    Ok((read, write))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_prefixed_and_partial_ones_kept() {
        let (read, _write) = output_pipe().unwrap();
        let mut output = Output {
            slot: 2,
            fd: read,
            to_stderr: false,
            partial: Vec::new(),
        };
        assert_eq!(output.take(b"one\ntw"), b"[worker 2] one\n");
        assert_eq!(
            output.take(b"o\nthree\n\nfo"),
            b"[worker 2] two\n[worker 2] three\n[worker 2] \n"
        );
        assert_eq!(output.rest(), b"[worker 2] fo\n");
        assert!(output.rest().is_empty());
        let long = output.take(&vec![b'x'; LONGEST_LINE + 1]);
        assert_eq!(long.len(), "[worker 2] ".len() + LONGEST_LINE + 2);
        assert!(output.partial.is_empty(), "an overlong line is written out");
    }
}
