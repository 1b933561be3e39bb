//! The master process: forks the workers and supervises them in a single-threaded loop that
//! never touches tokio.
//!
//! The decisions are [`core`]'s, a state machine without I/O. This module is the shell around
//! it: each turn it reads signals, reaps children and reads worker messages, hands each as an
//! event to the core together with a tick, carries out the actions the core returns (fork,
//! send, kill, notify), and then sleeps in `poll` until a signal, a worker message or the next
//! timer.

mod core;
mod descriptors;
mod handover;
mod pidfile;
mod programs;
mod signals;
mod systemd;
mod upgrade;
mod workers;

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::Instant;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, getpid};
use tracing::{error, info, warn};

use self::core::{Action, Core, Event, Notice, Settings};
use crate::Error;
use crate::config::Config;
use crate::process::board::Board;
use crate::process::control::{self, Leave, Received, ToMaster, ToWorker};
use crate::process::handoff::Handoff;
use crate::process::listeners::{self, Listener};
use crate::process::metrics::Metrics;
use crate::process::spawn::{Forked, spawn};
use pidfile::Pidfile;
use programs::Programs;
use signals::Signals;
use systemd::Notifier;
use upgrade::{Preflight, Upgrade};
use workers::WorkerExit;

/// Reads the configuration again, for a reload.
pub(crate) type Reconfigure<'a> = &'a dyn Fn() -> Result<Config, Error>;

/// How [`Master::run`] returns, in the master or in a new worker.
pub(crate) enum Ran {
    /// The master stopped: after a graceful or quick stop, or because no worker could boot.
    Stopped(Result<(), Error>),
    /// This is a newly forked worker: what it serves with. Everything else of the master's
    /// has been closed.
    Worker(Box<Handoff>),
}

/// The generation a reload prepares: its configuration and listeners, until it serves.
struct Next {
    generation: u32,
    config: Config,
    listeners: Vec<Listener>,
}

/// The master's side of one worker's channel.
pub(super) struct Channel {
    pid: Pid,
    /// `None` once the worker closed its end.
    fd: Option<OwnedFd>,
    /// The worker's cell on the accept-balancing board.
    cell: usize,
}

pub(crate) struct Master<'a> {
    core: Core,
    /// The serving generation's configuration and listeners.
    config: Config,
    listeners: Vec<Listener>,
    next: Option<Next>,
    /// Unix socket files to remove at exit.
    socket_files: Vec<PathBuf>,
    pidfile: Option<Pidfile>,
    reconfigure: Reconfigure<'a>,
    signals: Signals,
    channels: Vec<Channel>,
    notifier: Notifier,
    board: Board,
    /// The memory file behind the board, handed to a new image on an upgrade.
    board_file: OwnedFd,
    /// What `--metrics-bind` serves, and its memory file, kept across upgrades too.
    metrics: Metrics,
    metrics_file: OwnedFd,
    /// How to execute the binary on disk; `None` for a library that did not give prefork its
    /// command line, whose reloads fork the running image.
    upgrade: Option<Upgrade>,
    /// The check of a new binary, while it runs.
    preflight: Option<Preflight>,
    /// In an image that took over from the previous one: the new generation's configuration
    /// and listeners, or why they could not be had, for the first turn.
    taken_over: Option<Result<Next, String>>,
    /// For `prefork run`: the workers are programs, told and watched differently.
    programs: Option<Programs>,
}

impl<'a> Master<'a> {
    /// Everything before the first fork, in the order it must happen: the umask (it applies
    /// to the socket files), the pid file claimed, the sockets adopted from systemd or bound,
    /// the pid file written, signals blocked. On failure nothing is left behind. The master
    /// keeps its privileges; each worker drops them after the fork (and whether it can was
    /// checked with the configuration).
    ///
    /// With `upgrade` (the command line), a reload executes the binary on disk; and if this
    /// image was so executed, it takes over the listeners and the workers of the previous one
    /// instead of binding and starting afresh.
    pub(crate) fn start(
        config: Config,
        reconfigure: Reconfigure<'a>,
        upgrade: Option<Vec<OsString>>,
    ) -> Result<Self, Error> {
        let upgrade = upgrade
            .map(Upgrade::new)
            .transpose()
            .map_err(|e| Error::io("cannot find the running executable", e))?;
        let record = match upgrade.is_some().then(upgrade::handed_over).flatten() {
            Some(Ok(record)) => Some(record),
            Some(Err(why)) => return Err(Error::boot(why)),
            None => None,
        };
        let programs = config
            .program
            .is_some()
            .then(|| Programs::new(&config))
            .transpose()
            .map_err(|e| Error::io("cannot bind the programs' notification socket", e.into()))?;
        if let Some(mask) = config.umask {
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
        }
        let pidfile = config.pid.as_deref().map(Pidfile::claim).transpose()?;
        let inherited = record.as_ref().map(upgrade::inherit).transpose();
        let mut inherited =
            inherited.map_err(|e| Error::io("cannot take over from the previous master", e))?;
        let listeners = match &mut inherited {
            Some(inherited) => std::mem::take(&mut inherited.listeners),
            None => {
                let activated = listeners::activated()?;
                listeners::bind_all(&config, &activated)?
            }
        };
        // An image that took over finds its pid file written: it has the same pid.
        let started = match (&inherited, &pidfile) {
            (None, Some(pidfile)) => pidfile.write(),
            _ => Ok(()),
        }
        .and_then(|()| {
            Signals::install().map_err(|e| Error::io("cannot set up signals", e.into()))
        });
        let signals = match started {
            Ok(signals) => signals,
            Err(e) => {
                if inherited.is_none() {
                    listeners::remove_socket_files(&listeners::socket_files(&listeners));
                }
                if let Some(pidfile) = &pidfile {
                    pidfile.remove();
                }
                return Err(e);
            }
        };
        let notifier = Notifier::from_env();
        let now = Instant::now();
        let settings = Settings::of(&config);
        let metrics = match inherited.as_mut().and_then(|i| i.metrics.take()) {
            Some(metrics) => metrics,
            None => {
                Metrics::new().map_err(|e| Error::io("cannot map the metrics table", e.into()))?
            }
        };
        let (core, board, channels, next) = match inherited {
            Some(inherited) => {
                let next = listeners::bind_all(&config, &listeners)
                    .map(|listeners| Next {
                        generation: inherited.snapshot.generation + 1,
                        config: config.clone(),
                        listeners,
                    })
                    .map_err(|e| e.to_string());
                let core = Core::adopt(settings, inherited.snapshot, notifier.enabled(), now);
                (core, inherited.board, inherited.channels, Some(next))
            }
            None => {
                let board = Board::new()
                    .map_err(|e| Error::io("cannot map the balancing board", e.into()))?;
                let core = Core::new(settings, notifier.enabled(), upgrade.is_some(), now);
                (core, board, Vec::new(), None)
            }
        };
        Ok(Self {
            core,
            socket_files: listeners::socket_files(&listeners),
            config,
            listeners,
            next: None,
            taken_over: next,
            pidfile,
            reconfigure,
            signals,
            channels,
            notifier,
            board: board.0,
            board_file: board.1,
            metrics: metrics.0,
            metrics_file: metrics.1,
            upgrade,
            preflight: None,
            programs,
        })
    }

    /// Runs until every worker is gone after a stop, or until workers fail to boot; in a
    /// forked worker, returns at once with what the worker needs.
    pub(crate) fn run(mut self) -> Ran {
        descriptors::raise(self.config.workers, self.config.worker_connections);
        for listener in &self.listeners {
            info!("listening on {}", listener.describe());
        }
        if let Some(next) = self.taken_over.take() {
            info!(
                "master (pid {}) took over {} worker(s) from the previous binary",
                getpid(),
                self.channels.len()
            );
            // The reload the previous image began goes on here, with this image's code.
            let prepared = next.map(|next| {
                let settings = Settings::of(&next.config);
                self.next = Some(next);
                settings
            });
            if let Some(ran) = self.step(Event::ReloadPrepared(prepared)) {
                return ran;
            }
        } else {
            info!(
                "master (pid {}) starting {} worker(s)",
                getpid(),
                self.config.workers
            );
        }
        loop {
            let mut events: Vec<Event> = self
                .signals
                .pending()
                .into_iter()
                .map(Event::Signal)
                .collect();
            self.reap(&mut events);
            self.read_messages(&mut events);
            events.push(Event::Tick);
            for event in events {
                if let Some(ran) = self.step(event) {
                    return ran;
                }
            }
            let now = Instant::now();
            if let Some(programs) = &mut self.programs {
                programs.signal_due(now);
            }
            let core = &self.core;
            self.notifier.watchdog(now, || core.healthy(now));
            self.sleep();
        }
    }

    /// Hands `event` to the core and carries out what it decides, with the events that the
    /// actions themselves produce (a fork's outcome, a prepared reload).
    fn step(&mut self, event: Event) -> Option<Ran> {
        let mut queue = VecDeque::from([event]);
        while let Some(event) = queue.pop_front() {
            let now = Instant::now();
            for action in self.core.handle(event, now) {
                match self.execute(action, now) {
                    Done::Next => {}
                    Done::Then(event) => queue.push_back(event),
                    Done::Return(ran) => return Some(ran),
                }
            }
        }
        None
    }

    fn execute(&mut self, action: Action, now: Instant) -> Done {
        match action {
            Action::Spawn { slot, generation } => return self.spawn(slot, generation),
            Action::Tell { pid, leave } => self.tell(pid, leave, now),
            Action::Kill { pid } => match &self.programs {
                Some(programs) => programs.kill(pid),
                None => {
                    let _ = kill(pid, Signal::SIGKILL);
                }
            },
            Action::ReopenLogs => {
                crate::log::reopen();
                self.broadcast(ToWorker::ReopenLogs);
            }
            Action::PrepareReload { generation } => {
                return Done::Then(Event::ReloadPrepared(self.prepare_reload(generation)));
            }
            Action::Preflight => return Done::Then(Event::Preflight(self.preflight())),
            Action::Exec => return Done::Then(Event::ExecFailed(self.exec())),
            Action::CommitReload { generation } => {
                self.metrics.reloaded(Some(generation));
                self.commit_reload(generation);
            }
            Action::AbandonReload { generation } => {
                self.metrics.reloaded(None);
                self.abandon_reload(generation);
            }
            // Workers hold their own copies of the listening sockets; each socket closes when
            // the last draining worker lets go of it.
            Action::CloseListeners => {
                self.metrics.stopping();
                self.listeners.clear();
            }
            Action::Notify(notice) => self.notify(notice, now),
            Action::Exit => {
                self.clean_up();
                info!("master (pid {}) stopped", getpid());
                return Done::Return(Ran::Stopped(Ok(())));
            }
            Action::Abort(message) => {
                self.abort_workers();
                self.clean_up();
                return Done::Return(Ran::Stopped(Err(Error::boot(message))));
            }
        }
        Done::Next
    }

    fn spawn(&mut self, slot: usize, generation: u32) -> Done {
        let cell = (0..)
            .find(|cell| !self.channels.iter().any(|c| c.cell == *cell))
            .expect("fewer workers than cells to number them");
        self.board.clear(cell);
        let master = getpid();
        let program = match self.programs.as_ref().map(Programs::prepare).transpose() {
            Ok(program) => program,
            Err(e) => {
                error!("cannot start worker {slot}: {e}");
                return Done::Then(Event::SpawnFailed { slot, generation });
            }
        };
        // SAFETY: the master is single-threaded: it never starts a thread and never runs tokio.
        match unsafe { spawn() } {
            Ok(Forked::Parent { child, control }) => {
                self.metrics.started(cell, slot);
                if let (Some(programs), Some((side, readers))) = (&mut self.programs, program) {
                    // The program's ends of its pipes are its own.
                    drop(side);
                    programs.spawned(child, slot, readers);
                }
                self.channels.push(Channel {
                    pid: child,
                    fd: Some(control),
                    cell,
                });
                Done::Then(Event::Spawned {
                    slot,
                    generation,
                    pid: child,
                })
            }
            Ok(Forked::Child { control }) => {
                // What the worker does not take is closed as the master is dropped: a worker
                // holding a sibling's channel would hide that sibling's EOF when the master
                // dies, and one holding the other generation's listeners would keep a dropped
                // address open.
                let (listeners, config) = match self.next.take() {
                    Some(next) if next.generation == generation => (next.listeners, next.config),
                    _ => (std::mem::take(&mut self.listeners), self.config.clone()),
                };
                Done::Return(Ran::Worker(Box::new(Handoff {
                    slot,
                    seat: self.board.seat(cell),
                    meter: self.metrics.meter(cell, slot),
                    master,
                    control,
                    listeners,
                    config,
                    program: program.map(|(side, _readers)| side),
                })))
            }
            Err(e) => {
                error!("cannot start worker {slot}: {e}");
                Done::Then(Event::SpawnFailed { slot, generation })
            }
        }
    }

    /// Sends the worker its orders; without a channel, a signal it treats the same way, with
    /// its own clock for the deadline (the core's SIGKILL still bounds it). A program gets its
    /// stop signal.
    fn tell(&mut self, pid: Pid, leave: Leave, now: Instant) {
        if let Some(programs) = &mut self.programs {
            return programs.tell(pid, leave, now);
        }
        let sent = self
            .channel(pid)
            .is_some_and(|fd| control::send(fd, &ToWorker::Leave(leave).encode()));
        if !sent {
            let fallback = match leave {
                Leave::Drain { .. } => Signal::SIGTERM,
                Leave::Quit => Signal::SIGQUIT,
            };
            let _ = kill(pid, fallback);
        }
    }

    fn channel(&self, pid: Pid) -> Option<&OwnedFd> {
        let channel = self.channels.iter().find(|c| c.pid == pid)?;
        channel.fd.as_ref()
    }

    fn broadcast(&self, msg: ToWorker) {
        let msg = msg.encode();
        for fd in self.channels.iter().filter_map(|c| c.fd.as_ref()) {
            control::send(fd, &msg);
        }
    }

    /// Reads the configuration again and binds any new address, keeping the sockets of
    /// addresses that stay.
    fn prepare_reload(&mut self, generation: u32) -> Result<Settings, String> {
        let config = (self.reconfigure)().map_err(|e| e.to_string())?;
        for warning in config.warnings() {
            warn!("{warning}");
        }
        let listeners = listeners::bind_all(&config, &self.listeners).map_err(|e| e.to_string())?;
        let settings = Settings::of(&config);
        self.next = Some(Next {
            generation,
            config,
            listeners,
        });
        Ok(settings)
    }

    fn preflight(&mut self) -> Result<Pid, String> {
        let upgrade = self.upgrade.as_ref().ok_or("no command line to check")?;
        let preflight = upgrade.preflight()?;
        let pid = preflight.pid;
        self.preflight = Some(preflight);
        Ok(pid)
    }

    /// Executes the binary on disk in this pid; returns only why that failed.
    fn exec(&mut self) -> String {
        let Some(upgrade) = &self.upgrade else {
            return "no command line to execute".to_string();
        };
        let (record, keep) = upgrade::record(
            &self.core.snapshot(),
            &self.channels,
            &self.listeners,
            &self.board_file,
            &self.metrics_file,
        );
        upgrade.exec(&record, &keep)
    }

    fn commit_reload(&mut self, generation: u32) {
        let Some(next) = self.next.take_if(|next| next.generation == generation) else {
            return;
        };
        for gone in self
            .listeners
            .iter()
            .filter(|old| !next.listeners.iter().any(|new| new.addr == old.addr))
        {
            info!("reload: no longer listening on {}", gone.describe());
            if let Some(path) = gone.socket_path() {
                let _ = std::fs::remove_file(path);
            }
        }
        for added in next
            .listeners
            .iter()
            .filter(|new| !self.listeners.iter().any(|old| old.addr == new.addr))
        {
            info!("reload: listening on {}", added.describe());
        }
        self.listeners = next.listeners;
        self.socket_files = listeners::socket_files(&self.listeners);
        if let Some(programs) = &mut self.programs {
            programs.reconfigure(&next.config);
        }
        self.config = next.config;
        // Logged here, once the dropped addresses are closed, not where the core decided it.
        info!("reload complete: generation {generation} serving, the old workers draining");
    }

    /// Removes the socket files a failed reload created for addresses that were new.
    fn abandon_reload(&mut self, generation: u32) {
        let Some(next) = self.next.take_if(|next| next.generation == generation) else {
            return;
        };
        for new in &next.listeners {
            let added = !self.listeners.iter().any(|old| old.addr == new.addr);
            if let Some(path) = new.socket_path().filter(|_| added) {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    fn notify(&mut self, notice: Notice, now: Instant) {
        match notice {
            Notice::Ready(status) => self.notifier.ready(&status),
            Notice::Status(status) => self.notifier.status(&status),
            Notice::Reloading => self.notifier.reloading(),
            Notice::Stopping(status) => self.notifier.stopping(status),
            Notice::ExtendStop { until } => self.notifier.extend_stop(now, until),
        }
    }

    /// Every child that exited, as events; a worker's channel and board cell go with it.
    fn reap(&mut self, events: &mut Vec<Event>) {
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
            if let Some(mut preflight) = self.preflight.take_if(|p| p.pid == pid) {
                let output = preflight.output();
                events.push(Event::PreflightDone { status, output });
                continue;
            }
            if let Some(index) = self.channels.iter().position(|c| c.pid == pid) {
                let channel = self.channels.swap_remove(index);
                self.board.clear(channel.cell);
                if let Some(cause) = self.core.exit_cause(pid) {
                    self.metrics.exited(channel.cell, cause);
                }
                if let Some(programs) = &mut self.programs {
                    programs.reaped(pid);
                }
            }
            events.push(Event::Exited { pid, status });
        }
    }

    fn read_messages(&mut self, events: &mut Vec<Event>) {
        for channel in &mut self.channels {
            while let Some(fd) = &channel.fd {
                match control::recv::<ToMaster>(fd) {
                    Received::Message(msg) => events.push(Event::Message {
                        pid: channel.pid,
                        msg,
                    }),
                    Received::Closed => channel.fd = None,
                    Received::Empty => break,
                }
            }
        }
        if let Some(programs) = &mut self.programs {
            let workers: Vec<Pid> = self.channels.iter().map(|c| c.pid).collect();
            let mut notes = Vec::new();
            programs.read(&workers, &mut notes);
            events.extend(
                notes
                    .into_iter()
                    .map(|(pid, msg)| Event::Message { pid, msg }),
            );
            programs.pump_output();
        }
    }

    fn sleep(&mut self) {
        let now = Instant::now();
        let mut wake = self.core.next_wake(now);
        let programs_wake = self.programs.as_ref().and_then(Programs::next_wake);
        for at in [self.notifier.next_wake(), programs_wake]
            .into_iter()
            .flatten()
        {
            wake = wake.min(at.max(now));
        }
        // Round up so that the loop does not wake a hair early and spin.
        let ms = wake
            .saturating_duration_since(now)
            .as_micros()
            .div_ceil(1000)
            .min(u128::from(u16::MAX)) as u16;
        let mut fds = vec![PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
        for fd in self.channels.iter().filter_map(|c| c.fd.as_ref()) {
            fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
        }
        for fd in self.programs.iter().flat_map(Programs::fds) {
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => error!("poll failed: {e}"),
        }
    }

    /// Boot failed: nothing is worth draining, since no worker ever served.
    fn abort_workers(&mut self) {
        for channel in &self.channels {
            let _ = kill(channel.pid, Signal::SIGKILL);
        }
        for channel in self.channels.drain(..) {
            let _ = waitpid(channel.pid, None);
        }
    }

    /// What the master created on disk goes with it.
    fn clean_up(&self) {
        listeners::remove_socket_files(&self.socket_files);
        if let Some(pidfile) = &self.pidfile {
            pidfile.remove();
        }
    }
}

/// What carrying out one action led to.
enum Done {
    Next,
    /// An event for the core: the outcome of the action.
    Then(Event),
    /// Leave the loop: the master stops, or this is a new worker.
    Return(Ran),
}
