//! The master process: forks the workers and supervises them in a single-threaded loop that
//! never touches tokio.
//!
//! Each turn of the loop runs small idempotent steps — read signals, reap children, read worker
//! messages, kill what is hung or overdue, advance a reload, converge the worker count — and
//! then sleeps in `poll` until a signal, a worker message or the next timer. State converges
//! even when signals coalesce, because no step depends on how many signals arrived, only on
//! what is true now.

mod pidfile;
mod reload;
mod signals;
mod spawn;
mod systemd;
mod workers;

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, getpid};
use tracing::{debug, error, info, warn};

use crate::Error;
use crate::config::Config;
use crate::exit;
use crate::process::board::Board;
use crate::process::control::{self, Leave, Received, ToMaster, ToWorker};
use crate::process::listeners::{self, Listener};
use crate::process::privileges;
use crate::worker::Handoff;
use pidfile::Pidfile;
use reload::Pending;
use signals::Signals;
use systemd::Notifier;
use workers::{Slot, Worker, WorkerExit};

/// How long workers told to quit get before they are killed.
const QUICK_GRACE: Duration = Duration::from_secs(1);
/// How long after its own deadline a draining worker is killed: it cuts its connections at the
/// deadline and exits, this is only the backstop.
const KILL_SLACK: Duration = Duration::from_millis(100);
/// Workers dying before any worker was ever ready, after which the master gives up.
const MAX_BOOT_ATTEMPTS: u32 = 5;
/// The longest the loop sleeps without a reason to wake.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// A gap this much longer than the longest sleep means the master itself was suspended
/// (SIGSTOP, a frozen container): worker heartbeats were not read meanwhile, not missing.
const SUSPENDED_AFTER: Duration = Duration::from_secs(2);
/// A worker whose last heartbeat is older than this is not healthy for systemd's watchdog
/// (workers beat at least every second).
const HEARTBEAT_STALE: Duration = Duration::from_secs(3);

/// The function a forked child runs as its whole life; it returns the exit status.
pub(crate) type Boot<'a> = &'a dyn Fn(Handoff) -> u8;
/// Reads the configuration again, for a reload.
pub(crate) type Reconfigure<'a> = &'a dyn Fn() -> Result<Config, Error>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Graceful,
    Quick,
}

pub(crate) struct Master<'a> {
    config: Config,
    listeners: Vec<Listener>,
    /// Unix socket files to remove at exit.
    socket_files: Vec<PathBuf>,
    pidfile: Option<Pidfile>,
    boot: Boot<'a>,
    reconfigure: Reconfigure<'a>,
    /// `None` only in a forked child, which closes it.
    signals: Option<Signals>,
    workers: Vec<Worker>,
    /// The generation that serves; a reload starts the next one.
    generation: u32,
    pending: Option<Pending>,
    /// Restart state per slot of the serving generation; slot `n` is `slots[n - 1]`.
    slots: Vec<Slot>,
    target: usize,
    stopping: Option<Stop>,
    ever_ready: bool,
    announced_ready: bool,
    boot_failures: u32,
    boot_error: Option<Error>,
    last_turn: Instant,
    notifier: Notifier,
    board: Board,
}

impl<'a> Master<'a> {
    /// Everything before the first fork, in the order it must happen: the umask (it applies
    /// to the socket files), the pid file claimed, the sockets adopted from systemd or bound,
    /// the pid file written, root dropped, signals blocked. On failure nothing is left behind.
    pub(crate) fn start(
        config: Config,
        boot: Boot<'a>,
        reconfigure: Reconfigure<'a>,
    ) -> Result<Self, Error> {
        if let Some(mask) = config.umask {
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
        }
        let pidfile = config.pid.as_deref().map(Pidfile::claim).transpose()?;
        let activated = listeners::activated()?;
        let listeners = listeners::bind_all(&config, &activated)?;
        drop(activated);
        let started = pidfile
            .as_ref()
            .map_or(Ok(()), Pidfile::write)
            .and_then(|()| privileges::drop_to(&config.credentials))
            .and_then(|()| {
                Signals::install().map_err(|e| Error::io("cannot set up signals", e.into()))
            });
        let started = started.and_then(|signals| {
            let board =
                Board::new().map_err(|e| Error::io("cannot map the balancing board", e.into()))?;
            Ok((signals, board))
        });
        let (signals, board) = match started {
            Ok(signals) => signals,
            Err(e) => {
                listeners::remove_socket_files(&listeners::socket_files(&listeners));
                if let Some(pidfile) = &pidfile {
                    pidfile.remove();
                }
                return Err(e);
            }
        };
        Ok(Self {
            pidfile,
            target: config.workers,
            socket_files: listeners::socket_files(&listeners),
            config,
            listeners,
            boot,
            reconfigure,
            signals: Some(signals),
            workers: Vec::new(),
            generation: 0,
            pending: None,
            slots: Vec::new(),
            stopping: None,
            ever_ready: false,
            announced_ready: false,
            boot_failures: 0,
            boot_error: None,
            last_turn: Instant::now(),
            notifier: Notifier::from_env(),
            board,
        })
    }

    /// Runs until every worker is gone after a stop, or until workers fail to boot.
    pub(crate) fn run(mut self) -> Result<(), Error> {
        for listener in &self.listeners {
            info!("listening on {}", listener.describe());
        }
        info!(
            "master (pid {}) starting {} worker(s)",
            getpid(),
            self.target
        );
        loop {
            self.notice_suspension();
            self.handle_signals();
            self.reap();
            self.read_messages();
            self.kill_hung();
            self.kill_overdue();
            if let Some(err) = self.boot_error.take() {
                self.abort_workers();
                self.clean_up();
                return Err(err);
            }
            if self.stopping.is_some() && self.workers.is_empty() {
                break;
            }
            self.advance_reload();
            self.converge();
            self.notify();
            self.sleep();
        }
        self.clean_up();
        info!("master (pid {}) stopped", getpid());
        Ok(())
    }

    /// What the master created on disk goes with it.
    fn clean_up(&self) {
        listeners::remove_socket_files(&self.socket_files);
        if let Some(pidfile) = &self.pidfile {
            pidfile.remove();
        }
    }

    fn notice_suspension(&mut self) {
        let now = Instant::now();
        let gap = now - self.last_turn;
        self.last_turn = now;
        if gap > MAX_SLEEP + SUSPENDED_AFTER {
            warn!("the master did not run for {gap:.1?} (suspended?): restarting heartbeat clocks");
            for worker in &mut self.workers {
                worker.last_beat = now;
            }
        }
    }

    fn handle_signals(&mut self) {
        let Some(signals) = self.signals.as_mut() else {
            return;
        };
        let pending = signals.pending();
        let now = Instant::now();
        for sig in pending {
            match sig {
                Signal::SIGTERM => self.on_term(now),
                Signal::SIGINT | Signal::SIGQUIT => self.on_quit(now, sig),
                Signal::SIGHUP => self.on_hup(now),
                Signal::SIGUSR1 => self.on_usr1(),
                Signal::SIGTTIN => self.on_ttin(),
                Signal::SIGTTOU => self.on_ttou(),
                // Children are reaped on every turn, whatever woke the loop.
                Signal::SIGCHLD => {}
                other => info!("ignoring {other}"),
            }
        }
    }

    fn on_term(&mut self, now: Instant) {
        match self.stopping {
            None => {
                info!(
                    "SIGTERM: graceful stop, deadline in {:?}",
                    self.config.shutdown_delay + self.config.graceful_timeout
                );
                self.begin_stop(Stop::Graceful, now);
            }
            Some(Stop::Graceful) => {
                info!("second SIGTERM during a graceful stop: stopping quickly");
                self.begin_stop(Stop::Quick, now);
            }
            Some(Stop::Quick) => {}
        }
    }

    fn on_quit(&mut self, now: Instant, sig: Signal) {
        if self.stopping != Some(Stop::Quick) {
            info!("{sig}: quick stop");
            self.begin_stop(Stop::Quick, now);
        }
    }

    /// Reopen the log files, here and in every worker (logrotate's postrotate).
    fn on_usr1(&mut self) {
        info!("SIGUSR1: reopening log files");
        crate::log::reopen();
        let msg = ToWorker::ReopenLogs.encode();
        for worker in &self.workers {
            if let Some(fd) = &worker.control {
                control::send(fd, &msg);
            }
        }
    }

    fn on_ttin(&mut self) {
        if self.stopping.is_none() {
            self.target += 1;
            info!("SIGTTIN: {} worker(s) wanted", self.target);
        }
    }

    fn on_ttou(&mut self) {
        if self.stopping.is_none() && self.target > 1 {
            self.target -= 1;
            info!("SIGTTOU: {} worker(s) wanted", self.target);
        }
    }

    fn begin_stop(&mut self, kind: Stop, now: Instant) {
        self.notifier.stopping(match kind {
            Stop::Graceful => "stopping: draining",
            Stop::Quick => "stopping: closing connections",
        });
        self.stopping = Some(kind);
        if let Some(pending) = self.pending.take() {
            info!("reload abandoned: the server is stopping");
            self.abandon(pending);
        }
        // Workers hold their own copies of the listening sockets; each socket closes when the
        // last draining worker lets go of it.
        self.listeners.clear();
        let msg = match kind {
            Stop::Graceful => {
                // Load balancers get the shutdown delay to notice (health checks answer 503)
                // before the drain proper, and its graceful timeout, begin.
                let start = now + self.config.shutdown_delay;
                Leave::Drain {
                    start,
                    deadline: start + self.config.graceful_timeout,
                }
            }
            Stop::Quick => Leave::Quit,
        };
        for worker in &mut self.workers {
            tell(worker, msg, now);
        }
        // At once, not on a later turn: workers with nothing to drain may all be gone by then.
        let until = self.last_kill_at(now);
        self.notifier.extend_stop(now, until);
    }

    /// When the last worker still running is killed if it has not exited by then.
    fn last_kill_at(&self, now: Instant) -> Instant {
        let last = self.workers.iter().filter_map(|w| w.kill_at).max();
        last.unwrap_or(now)
    }

    fn reap(&mut self) {
        loop {
            let (pid, status) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, WorkerExit::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, WorkerExit::Signal(sig)),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Err(Errno::EINTR) | Ok(_) => continue,
                Err(e) => {
                    error!("waitpid failed: {e}");
                    return;
                }
            };
            self.on_exit(pid, status);
        }
    }

    fn on_exit(&mut self, pid: Pid, status: WorkerExit) {
        let Some(index) = self.workers.iter().position(|w| w.pid == pid) else {
            debug!("reaped process {pid}, not a worker");
            return;
        };
        let worker = self.workers.swap_remove(index);
        self.board.clear(worker.cell);
        let slot = worker.slot;
        if worker.leaving {
            info!("worker {slot} (pid {pid}) {status}");
            return;
        }
        error!("worker {slot} (pid {pid}) {status} unexpectedly");
        if self
            .pending
            .as_ref()
            .is_some_and(|p| p.generation == worker.generation)
        {
            let pending = self.pending.take();
            return self.reload_failed(pending, &format!("new worker {slot} {status}"));
        }
        if !worker.ready && !self.ever_ready {
            self.boot_failures += 1;
            if status == WorkerExit::Code(i32::from(exit::BOOT_FAILED)) {
                self.boot_error = Some(Error::boot(format!(
                    "worker {slot} failed to boot: the application could not be built"
                )));
            } else if self.boot_failures >= MAX_BOOT_ATTEMPTS {
                self.boot_error = Some(Error::boot(format!(
                    "{} workers died before any became ready; giving up",
                    self.boot_failures
                )));
            }
        }
        if worker.generation != self.generation {
            return;
        }
        if let Some(slot_state) = self.slots.get_mut(slot - 1) {
            let delay = slot_state.died(Instant::now() - worker.started);
            if !delay.is_zero() {
                info!("worker {slot} died soon after start: restarting it in {delay:?}");
            }
        }
    }

    fn read_messages(&mut self) {
        let now = Instant::now();
        for worker in &mut self.workers {
            while let Some(fd) = &worker.control {
                match control::recv::<ToMaster>(fd) {
                    Received::Message(ToMaster::Ready) => {
                        worker.ready = true;
                        worker.last_beat = now;
                        self.ever_ready = true;
                        info!("worker {} (pid {}) ready", worker.slot, worker.pid);
                    }
                    Received::Message(ToMaster::Heartbeat) => worker.last_beat = now,
                    Received::Message(ToMaster::Retiring) => {
                        if !worker.retiring && !worker.leaving {
                            worker.retiring = true;
                            info!(
                                "worker {} (pid {}) reached its request limit: starting its replacement",
                                worker.slot, worker.pid
                            );
                        }
                    }
                    Received::Closed => worker.control = None,
                    Received::Empty => break,
                }
            }
        }
        let ready = self.serving().filter(|w| w.ready).count();
        if !self.announced_ready && self.stopping.is_none() && ready >= self.target {
            self.announced_ready = true;
            info!("all {ready} worker(s) ready");
            let status = self.status();
            self.notifier.ready(&status);
        }
    }

    /// What `STATUS=` says while serving.
    fn status(&self) -> String {
        let ready = self.serving().filter(|w| w.ready).count();
        format!("{ready}/{} workers ready", self.target)
    }

    /// Keeps systemd informed: the status, the watchdog while every worker beats, and
    /// extensions of the stop timeout while a drain goes on.
    fn notify(&mut self) {
        if !self.notifier.enabled() {
            return;
        }
        let now = Instant::now();
        match self.stopping {
            None if self.announced_ready && self.pending.is_none() => {
                let status = self.status();
                self.notifier.status(&status);
            }
            None => {}
            Some(_) => {
                let until = self.last_kill_at(now);
                self.notifier.extend_stop(now, until);
            }
        }
        let healthy = self
            .workers
            .iter()
            .all(|w| w.killed || now - w.last_beat < HEARTBEAT_STALE);
        self.notifier.watchdog(now, healthy);
    }

    /// Workers of the serving generation that count towards the target.
    fn serving(&self) -> impl Iterator<Item = &Worker> {
        self.workers
            .iter()
            .filter(|w| w.generation == self.generation && !w.leaving && !w.retiring)
    }

    /// A worker whose runtime stopped heartbeating for `timeout` is hung (a handler blocking
    /// its thread, a deadlock): kill it so that it is replaced. Draining workers beat too.
    fn kill_hung(&mut self) {
        let timeout = self.config.timeout;
        if timeout.is_zero() {
            return;
        }
        let now = Instant::now();
        for worker in &mut self.workers {
            if !worker.killed && now - worker.last_beat > timeout {
                error!(
                    "worker {} (pid {}) sent no heartbeat for {:.1?}: killing it",
                    worker.slot,
                    worker.pid,
                    now - worker.last_beat
                );
                worker.killed = kill(worker.pid, Signal::SIGKILL).is_ok();
            }
        }
    }

    fn kill_overdue(&mut self) {
        let now = Instant::now();
        for worker in &mut self.workers {
            match worker.kill_at {
                Some(at) if now >= at && !worker.killed => {
                    warn!(
                        "worker {} (pid {}) still running at its deadline: killing it",
                        worker.slot, worker.pid
                    );
                    worker.killed = kill(worker.pid, Signal::SIGKILL).is_ok();
                }
                _ => {}
            }
        }
    }

    /// Brings the serving generation to the target: drains workers in slots above it, drains
    /// retiring workers once their replacement is ready, and starts a worker in every empty
    /// slot whose restart delay has passed.
    fn converge(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        let now = Instant::now();
        // One worker leaving changes nothing a load balancer can see: no shutdown delay.
        let drain = Leave::Drain {
            start: now,
            deadline: now + self.config.graceful_timeout,
        };
        let replaced: Vec<usize> = self.serving().filter(|w| w.ready).map(|w| w.slot).collect();
        for worker in &mut self.workers {
            if worker.generation != self.generation || worker.leaving {
                continue;
            }
            if worker.slot > self.target {
                info!(
                    "worker {} (pid {}) draining: fewer workers wanted",
                    worker.slot, worker.pid
                );
                tell(worker, drain, now);
            } else if worker.retiring && replaced.contains(&worker.slot) {
                info!(
                    "worker {} (pid {}) draining: its replacement is ready",
                    worker.slot, worker.pid
                );
                tell(worker, drain, now);
            }
        }
        if self.slots.len() < self.target {
            self.slots.resize_with(self.target, Slot::default);
        }
        for slot in 1..=self.target {
            let occupied = self.serving().any(|w| w.slot == slot);
            if !occupied && self.slots[slot - 1].due(now) {
                self.spawn(slot, self.generation);
            }
        }
    }

    fn sleep(&mut self) {
        let now = Instant::now();
        let mut wake = now + MAX_SLEEP;
        for worker in &self.workers {
            if let Some(at) = worker.kill_at.filter(|_| !worker.killed) {
                wake = wake.min(at);
            }
        }
        if let Some(at) = self.notifier.next_wake() {
            wake = wake.min(at.max(now));
        }
        if self.stopping.is_none() {
            for slot in self.slots.iter().take(self.target) {
                if let Some(at) = slot.respawn_at() {
                    wake = wake.min(at.max(now));
                }
            }
        }
        // Round up so that the loop does not wake a hair early and spin.
        let ms = wake
            .saturating_duration_since(now)
            .as_micros()
            .div_ceil(1000) as u16;
        let Some(signals) = &self.signals else {
            return;
        };
        let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        for worker in &self.workers {
            if let Some(fd) = &worker.control {
                fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
            }
        }
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => error!("poll failed: {e}"),
        }
    }

    /// Boot failed: nothing is worth draining, since no worker ever served.
    fn abort_workers(&mut self) {
        for worker in &self.workers {
            let _ = kill(worker.pid, Signal::SIGKILL);
        }
        for worker in self.workers.drain(..) {
            let _ = waitpid(worker.pid, None);
        }
    }
}

/// Sends `msg` and records that the worker is on its way out, with the moment to kill it.
fn tell(worker: &mut Worker, leave: Leave, now: Instant) {
    let (fallback, kill_at) = match leave {
        Leave::Drain { deadline, .. } => (Signal::SIGTERM, deadline + KILL_SLACK),
        Leave::Quit => (Signal::SIGQUIT, now + QUICK_GRACE),
    };
    let sent = worker
        .control
        .as_ref()
        .is_some_and(|fd| control::send(fd, &ToWorker::Leave(leave).encode()));
    if !sent {
        // The worker treats these signals as the same requests, with its own clock for the
        // deadline; the master's SIGKILL still bounds it.
        let _ = kill(worker.pid, fallback);
    }
    worker.leaving = true;
    worker.kill_at = Some(worker.kill_at.map_or(kill_at, |at| at.min(kill_at)));
}
