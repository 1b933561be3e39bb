//! The master's decisions, without I/O: which workers to start, replace, drain or kill, what a
//! reload or a stop does next, and when systemd hears what.
//!
//! [`Core::handle`] takes one [`Event`] (a signal, a child's exit, a worker's message, a tick
//! of the loop, or the outcome of an earlier action) with the time it is handled at, and
//! returns the [`Action`]s the shell in `mod.rs` carries out: fork, send, kill, notify. Time
//! comes only from that argument, so the tests below drive the master through crashes, reloads
//! and stops on a clock of their own, without forking anything.
//!
//! Every step looks at what is true now, not at how many signals arrived, so the state
//! converges even when signals coalesce (gunicorn's arbiter works the same way).

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tracing::{debug, error, info, warn};

use super::workers::{Slot, Worker, WorkerExit};
use crate::config::Config;
use crate::exit;
use crate::process::control::{Leave, ToMaster};
use crate::process::metrics::ExitCause;

/// How long workers told to quit get before they are killed.
const QUICK_GRACE: Duration = Duration::from_secs(1);
/// How long after its own deadline a draining worker is killed: it cuts its connections at the
/// deadline and exits, this is only the backstop.
const KILL_SLACK: Duration = Duration::from_millis(100);
/// Workers dying before any worker was ever ready, after which the master gives up.
const MAX_BOOT_ATTEMPTS: u32 = 5;
/// The longest the loop sleeps without a reason to wake.
pub(super) const MAX_SLEEP: Duration = Duration::from_secs(1);
/// A gap this much longer than the longest sleep means the master itself was suspended
/// (SIGSTOP, a frozen container): worker heartbeats were not read meanwhile, not missing.
const SUSPENDED_AFTER: Duration = Duration::from_secs(2);
/// A worker whose last heartbeat is older than this is not healthy for systemd's watchdog
/// (workers beat at least every second).
const HEARTBEAT_STALE: Duration = Duration::from_secs(3);

/// What the core needs of a configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Settings {
    pub(crate) workers: usize,
    pub(crate) graceful_timeout: Duration,
    pub(crate) shutdown_delay: Duration,
    /// Heartbeat timeout; zero turns the check off.
    pub(crate) timeout: Duration,
    pub(crate) reload_timeout: Duration,
    /// A worker that has not said it is ready this long after it started is taken as ready:
    /// programs that never notify (`prefork run`). `None`: only its message makes a worker
    /// ready.
    pub(crate) ready_after: Option<Duration>,
    /// Whether workers beat from their start, as prefork's own do. A program is watched only
    /// once it sends its first `WATCHDOG=1`.
    pub(crate) watch_from_start: bool,
}

impl Settings {
    pub(crate) fn of(config: &Config) -> Self {
        let programs = config.program.is_some();
        Self {
            workers: config.workers,
            graceful_timeout: config.graceful_timeout,
            shutdown_delay: config.shutdown_delay,
            timeout: config.timeout,
            reload_timeout: config.reload_timeout,
            ready_after: Some(config.ready_after).filter(|after| programs && !after.is_zero()),
            watch_from_start: !programs,
        }
    }
}

/// Something that happened, for the core to decide on.
#[derive(Debug)]
pub(crate) enum Event {
    /// One turn of the loop: check deadlines, advance a reload, converge the worker count.
    Tick,
    Signal(Signal),
    /// A child was reaped (not necessarily a worker: as PID 1 the master reaps orphans too).
    Exited {
        pid: Pid,
        status: WorkerExit,
    },
    Message {
        pid: Pid,
        msg: ToMaster,
    },
    /// The outcome of [`Action::Spawn`].
    Spawned {
        slot: usize,
        generation: u32,
        pid: Pid,
    },
    SpawnFailed {
        slot: usize,
        generation: u32,
    },
    /// The outcome of [`Action::PrepareReload`]: the new configuration read and its addresses
    /// bound, or why not.
    ReloadPrepared(Result<Settings, String>),
    /// The outcome of [`Action::Preflight`]: the check of the new binary runs as this child, or
    /// could not be started.
    Preflight(Result<Pid, String>),
    /// The check of the new binary ended, with the first line it wrote to standard error.
    PreflightDone {
        status: WorkerExit,
        output: String,
    },
    /// [`Action::Exec`] returned: the new binary could not be executed.
    ExecFailed(String),
}

/// Something for the shell to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Fork a worker into `slot` of `generation`; answer with [`Event::Spawned`] or
    /// [`Event::SpawnFailed`].
    Spawn {
        slot: usize,
        generation: u32,
    },
    /// Tell a worker to leave, over its channel or else by signal.
    Tell {
        pid: Pid,
        leave: Leave,
    },
    Kill {
        pid: Pid,
    },
    /// Reopen the log files here and in every worker.
    ReopenLogs,
    /// Read the configuration again and bind its new addresses for `generation`; answer with
    /// [`Event::ReloadPrepared`].
    PrepareReload {
        generation: u32,
    },
    /// Run the binary at the path the master started from in `check` mode; answer with
    /// [`Event::Preflight`], then [`Event::PreflightDone`] once it ends.
    Preflight,
    /// Execute the new binary in this pid, handing the workers and listeners over; only
    /// returns, with [`Event::ExecFailed`], if that failed.
    Exec,
    /// `generation` serves now: its configuration and listeners replace the old ones.
    CommitReload {
        generation: u32,
    },
    /// Forget what was prepared for `generation`.
    AbandonReload {
        generation: u32,
    },
    /// A stop began: the master lets go of the listening sockets (workers hold their copies).
    CloseListeners,
    Notify(Notice),
    /// Every worker is gone after a stop: clean up and exit.
    Exit,
    /// No worker could boot: kill what is left, clean up and fail with this message.
    Abort(String),
}

/// What systemd is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Notice {
    /// `READY=1` with a status: at start, and at the end of a reload (also a failed one).
    Ready(String),
    Status(String),
    Reloading,
    Stopping(&'static str),
    /// Ask for the stop timeout to last until the last worker is killed.
    ExtendStop {
        until: Instant,
    },
}

/// Where the master is in its life.
#[derive(Debug)]
enum State {
    /// No worker has been ready yet: one dying counts as a failure to boot.
    Booting {
        failures: u32,
    },
    /// A worker was ready, not yet all of them: systemd has not heard `READY=1`.
    Starting,
    Serving,
    /// A new generation starts beside the serving one.
    Reloading(Reload),
    /// Every worker was told to leave this way; the master exits when the last one is gone.
    Stopping(Leave),
}

/// A reload under way.
#[derive(Debug)]
struct Reload {
    generation: u32,
    /// Whether every worker was ready before: where a failed reload returns to.
    was_serving: bool,
    phase: Phase,
}

#[derive(Debug)]
enum Phase {
    /// The new binary is checked before it replaces this image (an upgrade); `pid` is the
    /// check's, once started.
    Checking { pid: Option<Pid>, deadline: Instant },
    /// The new configuration is being read.
    Preparing,
    /// The new generation starts.
    Starting {
        settings: Settings,
        deadline: Instant,
    },
}

/// Where a master was, for the image that replaces it on an upgrade.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub(crate) generation: u32,
    pub(crate) target: usize,
    /// `workers` as the serving generation's configuration said.
    pub(crate) configured: usize,
    pub(crate) was_serving: bool,
    pub(crate) workers: Vec<Worker>,
}

pub(crate) struct Core {
    state: State,
    settings: Settings,
    /// Workers wanted in the serving generation (TTIN/TTOU move it).
    target: usize,
    /// The generation that serves; a reload starts the next one.
    generation: u32,
    workers: Vec<Worker>,
    /// Restart state per slot of the serving generation; slot `n` is `slots[n - 1]`.
    slots: Vec<Slot>,
    /// Whether systemd listens: only then are status and stop extensions worth computing.
    systemd: bool,
    /// Whether a reload executes the binary on disk (the master knows its command line).
    upgrade: bool,
    last_tick: Instant,
}

impl Core {
    pub(crate) fn new(settings: Settings, systemd: bool, upgrade: bool, now: Instant) -> Self {
        Self {
            state: State::Booting { failures: 0 },
            target: settings.workers,
            settings,
            generation: 0,
            workers: Vec::new(),
            slots: Vec::new(),
            systemd,
            upgrade,
            last_tick: now,
        }
    }

    /// The core of a master image that an upgrade executed: it serves with the workers of
    /// `snapshot`, and is reloading; the shell answers at once with [`Event::ReloadPrepared`].
    /// `settings` are the new configuration's.
    pub(crate) fn adopt(
        settings: Settings,
        snapshot: Snapshot,
        systemd: bool,
        now: Instant,
    ) -> Self {
        let mut workers = snapshot.workers;
        for worker in &mut workers {
            // Heartbeats were not read while the image changed; they are not missing.
            worker.last_beat = now;
        }
        Self {
            state: State::Reloading(Reload {
                generation: snapshot.generation + 1,
                was_serving: snapshot.was_serving,
                phase: Phase::Preparing,
            }),
            settings: Settings {
                workers: snapshot.configured,
                ..settings
            },
            target: snapshot.target,
            generation: snapshot.generation,
            workers,
            slots: Vec::new(),
            systemd,
            upgrade: true,
            last_tick: now,
        }
    }

    /// Where this master is, for the image an upgrade executes.
    pub(crate) fn snapshot(&self) -> Snapshot {
        Snapshot {
            generation: self.generation,
            target: self.target,
            configured: self.settings.workers,
            was_serving: match &self.state {
                State::Reloading(reload) => reload.was_serving,
                state => matches!(state, State::Serving),
            },
            workers: self.workers.clone(),
        }
    }

    /// Decides on `event`, which happened at `now`.
    pub(crate) fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Tick => self.tick(now, &mut out),
            Event::Signal(sig) => self.on_signal(sig, now, &mut out),
            Event::Exited { pid, status } => self.on_exit(pid, status, now, &mut out),
            Event::Message { pid, msg } => self.on_message(pid, msg, now),
            Event::Spawned {
                slot,
                generation,
                pid,
            } => {
                if generation == self.generation {
                    self.slots[slot - 1].filled();
                }
                info!("worker {slot} (pid {pid}) spawned");
                let mut worker = Worker::new(slot, generation, pid, now);
                worker.watched = self.settings.watch_from_start;
                self.workers.push(worker);
            }
            Event::SpawnFailed { slot, generation } => {
                if generation == self.generation {
                    self.slots[slot - 1].retry_later(now);
                } else {
                    self.reload_failed("a new worker could not be started", &mut out);
                }
            }
            Event::ReloadPrepared(result) => self.on_reload_prepared(result, now, &mut out),
            Event::Preflight(result) => self.on_preflight(result, &mut out),
            Event::PreflightDone { status, output } => {
                self.on_preflight_done(status, &output, &mut out);
            }
            Event::ExecFailed(why) => {
                if self.checking().is_some() {
                    self.reload_failed(&format!("cannot execute the new binary: {why}"), &mut out);
                }
            }
        }
        out
    }

    /// When the loop must wake at the latest, for a kill, a restart or its regular turn.
    pub(crate) fn next_wake(&self, now: Instant) -> Instant {
        let mut wake = now + MAX_SLEEP;
        for worker in self.workers.iter().filter(|w| !w.killed) {
            if let Some(at) = worker.kill_at {
                wake = wake.min(at);
            }
        }
        if let State::Reloading(Reload {
            phase: Phase::Checking { deadline, .. } | Phase::Starting { deadline, .. },
            ..
        }) = &self.state
        {
            wake = wake.min(*deadline);
        }
        if let Some(after) = self.settings.ready_after {
            for worker in self.workers.iter().filter(|w| !w.ready && !w.leaving) {
                wake = wake.min(worker.started + after);
            }
        }
        if !matches!(self.state, State::Stopping(_)) {
            for slot in self.slots.iter().take(self.target) {
                if let Some(at) = slot.respawn_at() {
                    wake = wake.min(at);
                }
            }
        }
        wake.max(now)
    }

    /// How the worker `pid` ended, as far as the master had a hand in it; `None` for a process
    /// that is no worker. Asked before the exit is handed to [`Core::handle`].
    pub(crate) fn exit_cause(&self, pid: Pid) -> Option<ExitCause> {
        let worker = self.workers.iter().find(|w| w.pid == pid)?;
        Some(if worker.killed {
            ExitCause::Killed
        } else if worker.leaving {
            ExitCause::Stopped
        } else {
            ExitCause::Crashed
        })
    }

    /// Whether every worker beats, for systemd's watchdog: a master whose workers hang should
    /// be restarted.
    pub(crate) fn healthy(&self, now: Instant) -> bool {
        self.workers
            .iter()
            .all(|w| w.killed || !w.watched || now - w.last_beat < HEARTBEAT_STALE)
    }

    fn on_signal(&mut self, sig: Signal, now: Instant, out: &mut Vec<Action>) {
        match sig {
            Signal::SIGTERM => self.on_term(now, out),
            Signal::SIGINT | Signal::SIGQUIT => self.on_quit(sig, now, out),
            Signal::SIGHUP | Signal::SIGUSR2 => self.on_hup(sig, now, out),
            Signal::SIGUSR1 => {
                info!("SIGUSR1: reopening log files");
                out.push(Action::ReopenLogs);
            }
            Signal::SIGTTIN => self.on_ttin(),
            Signal::SIGTTOU => self.on_ttou(),
            // Children are reaped on every turn, whatever woke the loop.
            Signal::SIGCHLD => {}
            other => info!("ignoring {other}"),
        }
    }

    fn on_term(&mut self, now: Instant, out: &mut Vec<Action>) {
        match self.state {
            State::Stopping(Leave::Quit) => {}
            State::Stopping(Leave::Drain { .. }) => {
                info!("second SIGTERM during a graceful stop: stopping quickly");
                self.begin_stop(Leave::Quit, now, out);
            }
            _ => {
                info!(
                    "SIGTERM: graceful stop, deadline in {:?}",
                    self.settings.shutdown_delay + self.settings.graceful_timeout
                );
                // Load balancers get the shutdown delay to notice (health checks answer 503)
                // before the drain proper, and its graceful timeout, begin.
                let start = now + self.settings.shutdown_delay;
                let leave = Leave::Drain {
                    start,
                    deadline: start + self.settings.graceful_timeout,
                };
                self.begin_stop(leave, now, out);
            }
        }
    }

    fn on_quit(&mut self, sig: Signal, now: Instant, out: &mut Vec<Action>) {
        if !matches!(self.state, State::Stopping(Leave::Quit)) {
            info!("{sig}: quick stop");
            self.begin_stop(Leave::Quit, now, out);
        }
    }

    fn on_ttin(&mut self) {
        if !matches!(self.state, State::Stopping(_)) {
            self.target += 1;
            info!("SIGTTIN: {} worker(s) wanted", self.target);
        }
    }

    fn on_ttou(&mut self) {
        if !matches!(self.state, State::Stopping(_)) && self.target > 1 {
            self.target -= 1;
            info!("SIGTTOU: {} worker(s) wanted", self.target);
        }
    }

    /// Reload: with an upgrade, the binary on disk is checked and executed in this pid first,
    /// and the new image goes on from here; then the configuration is read again and any new
    /// address bound, a new generation starts, and the old one drains only once every new
    /// worker is ready.
    fn on_hup(&mut self, sig: Signal, now: Instant, out: &mut Vec<Action>) {
        match self.state {
            State::Stopping(_) => return,
            State::Reloading(_) => {
                info!("{sig}: a reload is already under way");
                return;
            }
            State::Booting { .. } => {
                // No worker could be built yet; the boot either succeeds or ends the master.
                info!("{sig}: ignored until a worker has booted");
                return;
            }
            State::Starting | State::Serving => {}
        }
        let generation = self.generation + 1;
        let phase = if self.upgrade {
            Phase::Checking {
                pid: None,
                deadline: now + self.settings.reload_timeout,
            }
        } else {
            Phase::Preparing
        };
        self.state = State::Reloading(Reload {
            generation,
            was_serving: matches!(self.state, State::Serving),
            phase,
        });
        out.push(Action::Notify(Notice::Reloading));
        if self.upgrade {
            info!("{sig}: checking the binary on disk before executing it");
            out.push(Action::Preflight);
        } else {
            out.push(Action::PrepareReload { generation });
        }
    }

    /// The check of the new binary, while it runs: its pid slot and deadline.
    fn checking(&mut self) -> Option<(&mut Option<Pid>, Instant)> {
        match &mut self.state {
            State::Reloading(Reload {
                phase: Phase::Checking { pid, deadline },
                ..
            }) => Some((pid, *deadline)),
            _ => None,
        }
    }

    fn on_preflight(&mut self, result: Result<Pid, String>, out: &mut Vec<Action>) {
        let Some((slot, _)) = self.checking() else {
            return;
        };
        match result {
            Ok(pid) => *slot = Some(pid),
            Err(why) => self.reload_failed(&format!("cannot run the new binary: {why}"), out),
        }
    }

    fn on_preflight_done(&mut self, status: WorkerExit, output: &str, out: &mut Vec<Action>) {
        if self.checking().is_none() {
            return;
        }
        if status == WorkerExit::Code(0) {
            info!("the new binary accepts the configuration: executing it");
            return out.push(Action::Exec);
        }
        let why = if output.is_empty() {
            format!("the new binary's check {status}")
        } else {
            format!("the new binary's check {status}: {output}")
        };
        self.reload_failed(&why, out);
    }

    fn on_reload_prepared(
        &mut self,
        result: Result<Settings, String>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let State::Reloading(reload) = &mut self.state else {
            return;
        };
        match result {
            Ok(mut settings) => {
                // Workers added or removed by TTIN/TTOU stay, unless the configuration
                // changed the count itself.
                if settings.workers == self.settings.workers {
                    settings.workers = self.target;
                }
                info!(
                    "reloading: starting {} worker(s) of generation {}",
                    settings.workers, reload.generation
                );
                reload.phase = Phase::Starting {
                    deadline: now + settings.reload_timeout,
                    settings,
                };
            }
            Err(why) => self.reload_failed(&why, out),
        }
    }

    /// Starts the new generation's workers, gives up on them at the reload timeout, and once
    /// every one is ready makes it the serving generation and drains the old one.
    fn advance_reload(&mut self, now: Instant, out: &mut Vec<Action>) {
        let State::Reloading(Reload {
            generation,
            phase: Phase::Starting { settings, deadline },
            ..
        }) = &self.state
        else {
            return;
        };
        let (generation, settings) = (*generation, *settings);
        if now >= *deadline {
            let why = format!("new workers not ready within {:?}", settings.reload_timeout);
            return self.reload_failed(&why, out);
        }
        for slot in 1..=settings.workers {
            if !self
                .workers
                .iter()
                .any(|w| w.generation == generation && w.slot == slot)
            {
                out.push(Action::Spawn { slot, generation });
            }
        }
        let ready = self
            .workers
            .iter()
            .filter(|w| w.generation == generation && w.ready)
            .count();
        if ready < settings.workers {
            return;
        }
        out.push(Action::CommitReload { generation });
        self.settings = settings;
        self.target = settings.workers;
        self.generation = generation;
        self.slots.clear();
        self.state = State::Serving;
        let drain = self.single_drain(now);
        for worker in &mut self.workers {
            if worker.generation != generation && !worker.leaving {
                tell(worker, drain, now, out);
            }
        }
        out.push(Action::Notify(Notice::Ready(self.status())));
    }

    /// A reload did not work out: the running workers stay, and systemd hears that the
    /// reload is over, and why it failed.
    fn reload_failed(&mut self, why: &str, out: &mut Vec<Action>) {
        error!("reload failed, keeping the running workers: {why}");
        if let State::Reloading(reload) = &self.state {
            let (generation, was_serving) = (reload.generation, reload.was_serving);
            self.abandon(generation, out);
            self.state = if was_serving {
                State::Serving
            } else {
                State::Starting
            };
        }
        let status = format!("reload failed: {why}; {}", self.status());
        out.push(Action::Notify(Notice::Ready(status)));
    }

    /// Gives up a reload: its check of the new binary, and its new workers (they never served,
    /// so they are killed, not drained).
    fn abandon(&mut self, generation: u32, out: &mut Vec<Action>) {
        if let Some((Some(pid), _)) = self.checking() {
            out.push(Action::Kill { pid: *pid });
        }
        for worker in &mut self.workers {
            if worker.generation == generation && !worker.killed {
                worker.leaving = true;
                worker.killed = true;
                out.push(Action::Kill { pid: worker.pid });
            }
        }
        out.push(Action::AbandonReload { generation });
    }

    fn begin_stop(&mut self, leave: Leave, now: Instant, out: &mut Vec<Action>) {
        out.push(Action::Notify(Notice::Stopping(match leave {
            Leave::Drain { .. } => "stopping: draining",
            Leave::Quit => "stopping: closing connections",
        })));
        if let State::Reloading(reload) = &self.state {
            info!("reload abandoned: the server is stopping");
            let generation = reload.generation;
            self.abandon(generation, out);
        }
        self.state = State::Stopping(leave);
        out.push(Action::CloseListeners);
        for worker in &mut self.workers {
            tell(worker, leave, now, out);
        }
        // At once, not on a later turn: workers with nothing to drain may all be gone by then.
        out.push(Action::Notify(Notice::ExtendStop {
            until: self.last_kill_at(now),
        }));
    }

    /// When the last worker still running is killed if it has not exited by then.
    fn last_kill_at(&self, now: Instant) -> Instant {
        let last = self.workers.iter().filter_map(|w| w.kill_at).max();
        last.unwrap_or(now)
    }

    fn on_exit(&mut self, pid: Pid, status: WorkerExit, now: Instant, out: &mut Vec<Action>) {
        let Some(index) = self.workers.iter().position(|w| w.pid == pid) else {
            debug!("reaped process {pid}, not a worker");
            return;
        };
        let worker = self.workers.swap_remove(index);
        let slot = worker.slot;
        if worker.leaving {
            info!("worker {slot} (pid {pid}) {status}");
            return;
        }
        error!("worker {slot} (pid {pid}) {status} unexpectedly");
        if let State::Reloading(reload) = &self.state
            && reload.generation == worker.generation
        {
            return self.reload_failed(&format!("new worker {slot} {status}"), out);
        }
        if let State::Booting { failures } = &mut self.state {
            *failures += 1;
            if status == WorkerExit::Code(i32::from(exit::BOOT_FAILED)) {
                // A program's own "cannot start" (uvicorn's and gunicorn's status 3) too.
                return out.push(Action::Abort(format!(
                    "worker {slot} failed to boot (exit status {}): the application could not \
                     be built or started",
                    exit::BOOT_FAILED
                )));
            }
            if *failures >= MAX_BOOT_ATTEMPTS {
                return out.push(Action::Abort(format!(
                    "{failures} workers died before any became ready; giving up"
                )));
            }
        }
        if worker.generation != self.generation {
            return;
        }
        if let Some(slot_state) = self.slots.get_mut(slot - 1) {
            let delay = slot_state.died(now - worker.started, now);
            if !delay.is_zero() {
                info!("worker {slot} died soon after start: restarting it in {delay:?}");
            }
        }
    }

    fn on_message(&mut self, pid: Pid, msg: ToMaster, now: Instant) {
        let Some(worker) = self.workers.iter_mut().find(|w| w.pid == pid) else {
            return;
        };
        match msg {
            ToMaster::Ready => {
                if worker.ready {
                    return;
                }
                worker.ready = true;
                worker.last_beat = now;
                info!("worker {} (pid {pid}) ready", worker.slot);
                self.booted();
            }
            ToMaster::Heartbeat => {
                worker.last_beat = now;
                worker.watched = true;
            }
            ToMaster::Retiring => {
                if !worker.retiring && !worker.leaving {
                    worker.retiring = true;
                    info!(
                        "worker {} (pid {pid}) reached its request limit: starting its replacement",
                        worker.slot
                    );
                }
            }
        }
    }

    /// A worker was ready: from now on, one dying is no failure to boot.
    fn booted(&mut self) {
        if let State::Booting { .. } = self.state {
            self.state = State::Starting;
        }
    }

    /// Programs that never said they are ready, still running `ready_after` after their start,
    /// are taken as ready (einhorn's timer acknowledgement).
    fn ready_by_timer(&mut self, now: Instant) {
        let Some(after) = self.settings.ready_after else {
            return;
        };
        let mut any = false;
        for worker in &mut self.workers {
            if !worker.ready && !worker.leaving && now - worker.started >= after {
                worker.ready = true;
                any = true;
                info!(
                    "worker {} (pid {}) ready: running for {after:?} without a READY=1",
                    worker.slot, worker.pid
                );
            }
        }
        if any {
            self.booted();
        }
    }

    fn tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.notice_suspension(now);
        self.ready_by_timer(now);
        self.kill_hung(now, out);
        self.kill_overdue(now, out);
        if let State::Stopping(_) = self.state {
            if self.workers.is_empty() {
                out.push(Action::Exit);
            } else if self.systemd {
                out.push(Action::Notify(Notice::ExtendStop {
                    until: self.last_kill_at(now),
                }));
            }
            return;
        }
        self.announce_ready(out);
        if let Some((_, deadline)) = self.checking()
            && now >= deadline
        {
            let why = format!(
                "the new binary's check did not finish within {:?}",
                self.settings.reload_timeout
            );
            self.reload_failed(&why, out);
        }
        self.advance_reload(now, out);
        self.converge(now, out);
        if self.systemd && matches!(self.state, State::Serving) {
            out.push(Action::Notify(Notice::Status(self.status())));
        }
    }

    /// Once every worker wanted is ready (TTOU can make that so without a new worker),
    /// systemd hears `READY=1`.
    fn announce_ready(&mut self, out: &mut Vec<Action>) {
        let ready = self.serving().filter(|w| w.ready).count();
        if matches!(self.state, State::Starting) && ready >= self.target {
            self.state = State::Serving;
            info!("all {ready} worker(s) ready");
            out.push(Action::Notify(Notice::Ready(self.status())));
        }
    }

    /// A master that did not run for a while (SIGSTOP, a frozen container) did not read the
    /// heartbeats meanwhile: they are not missing, and the clocks start again.
    fn notice_suspension(&mut self, now: Instant) {
        let gap = now.saturating_duration_since(self.last_tick);
        self.last_tick = now;
        if gap > MAX_SLEEP + SUSPENDED_AFTER {
            warn!("the master did not run for {gap:.1?} (suspended?): restarting heartbeat clocks");
            for worker in &mut self.workers {
                worker.last_beat = now;
            }
        }
    }

    /// A worker whose runtime stopped heartbeating for `timeout` is hung (a handler blocking
    /// its thread, a deadlock): kill it so that it is replaced. Draining workers beat too.
    fn kill_hung(&mut self, now: Instant, out: &mut Vec<Action>) {
        let timeout = self.settings.timeout;
        if timeout.is_zero() {
            return;
        }
        for worker in &mut self.workers {
            if worker.watched && !worker.killed && now - worker.last_beat > timeout {
                error!(
                    "worker {} (pid {}) sent no heartbeat for {:.1?}: killing it",
                    worker.slot,
                    worker.pid,
                    now - worker.last_beat
                );
                worker.killed = true;
                out.push(Action::Kill { pid: worker.pid });
            }
        }
    }

    fn kill_overdue(&mut self, now: Instant, out: &mut Vec<Action>) {
        for worker in &mut self.workers {
            if worker.kill_at.is_some_and(|at| now >= at) && !worker.killed {
                warn!(
                    "worker {} (pid {}) still running at its deadline: killing it",
                    worker.slot, worker.pid
                );
                worker.killed = true;
                out.push(Action::Kill { pid: worker.pid });
            }
        }
    }

    /// Brings the serving generation to the target: drains workers in slots above it, drains
    /// retiring workers once their replacement is ready, and starts a worker in every empty
    /// slot whose restart delay has passed.
    fn converge(&mut self, now: Instant, out: &mut Vec<Action>) {
        let drain = self.single_drain(now);
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
                tell(worker, drain, now, out);
            } else if worker.retiring && replaced.contains(&worker.slot) {
                info!(
                    "worker {} (pid {}) draining: its replacement is ready",
                    worker.slot, worker.pid
                );
                tell(worker, drain, now, out);
            }
        }
        if self.slots.len() < self.target {
            self.slots.resize_with(self.target, Slot::default);
        }
        for slot in 1..=self.target {
            let occupied = self.serving().any(|w| w.slot == slot);
            if !occupied && self.slots[slot - 1].due(now) {
                out.push(Action::Spawn {
                    slot,
                    generation: self.generation,
                });
            }
        }
    }

    /// How one worker leaves while the server goes on: no shutdown delay, since one worker
    /// leaving changes nothing a load balancer can see.
    fn single_drain(&self, now: Instant) -> Leave {
        Leave::Drain {
            start: now,
            deadline: now + self.settings.graceful_timeout,
        }
    }

    /// Workers of the serving generation that count towards the target.
    fn serving(&self) -> impl Iterator<Item = &Worker> {
        self.workers
            .iter()
            .filter(|w| w.generation == self.generation && !w.leaving && !w.retiring)
    }

    /// What `STATUS=` says while serving.
    fn status(&self) -> String {
        let ready = self.serving().filter(|w| w.ready).count();
        format!("{ready}/{} workers ready", self.target)
    }
}

/// Tells `worker` to leave and records that it is on its way out, with the moment to kill it.
fn tell(worker: &mut Worker, leave: Leave, now: Instant, out: &mut Vec<Action>) {
    let kill_at = match leave {
        Leave::Drain { deadline, .. } => deadline + KILL_SLACK,
        Leave::Quit => now + QUICK_GRACE,
    };
    out.push(Action::Tell {
        pid: worker.pid,
        leave,
    });
    worker.leaving = true;
    worker.kill_at = Some(worker.kill_at.map_or(kill_at, |at| at.min(kill_at)));
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn settings(workers: usize) -> Settings {
        Settings {
            workers,
            graceful_timeout: Duration::from_secs(30),
            shutdown_delay: Duration::ZERO,
            timeout: Duration::from_secs(30),
            reload_timeout: Duration::from_secs(30),
            ready_after: None,
            watch_from_start: true,
        }
    }

    /// The core with a stand-in for the shell: forks succeed with made-up pids (unless told
    /// otherwise), a reload reads `reload_to`, and the clock moves only when a test moves it.
    struct Sim {
        core: Core,
        now: Instant,
        next_pid: i32,
        fork_fails: bool,
        reload_to: Result<Settings, String>,
    }

    /// The pid the shell gives the check of a new binary.
    const CHECK: i32 = 900;

    impl Sim {
        fn new(workers: usize) -> Self {
            let now = Instant::now();
            Self {
                core: Core::new(settings(workers), true, false, now),
                now,
                next_pid: 100,
                fork_fails: false,
                reload_to: Ok(settings(workers)),
            }
        }

        /// A started server: every worker forked and ready.
        fn serving(workers: usize) -> Self {
            let mut sim = Self::new(workers);
            let spawned = sim.tick_spawned();
            for pid in spawned {
                sim.send(Event::Message {
                    pid,
                    msg: ToMaster::Ready,
                });
            }
            assert!(ready_notice(&sim.tick()).is_some(), "never announced ready");
            sim
        }

        /// A started server whose reloads execute the binary on disk.
        fn upgrading(workers: usize) -> Self {
            let mut sim = Self::serving(workers);
            sim.core.upgrade = true;
            sim
        }

        /// What an `exec` does: the core of the new image, from this one's snapshot, given
        /// the new configuration.
        fn exec(&mut self) {
            let snapshot = self.core.snapshot();
            self.core = Core::adopt(settings(snapshot.configured), snapshot, true, self.now);
            let prepared = self.reload_to.clone();
            self.send(Event::ReloadPrepared(prepared));
        }

        fn check_ends(&mut self, status: WorkerExit, output: &str) -> Vec<Action> {
            self.send(Event::PreflightDone {
                status,
                output: output.to_string(),
            })
        }

        fn advance(&mut self, by: Duration) {
            self.now += by;
        }

        fn tick(&mut self) -> Vec<Action> {
            self.send(Event::Tick)
        }

        fn signal(&mut self, sig: Signal) -> Vec<Action> {
            self.send(Event::Signal(sig))
        }

        /// Handles `event` and the events the shell would answer the actions with; returns
        /// every action, in order.
        fn send(&mut self, event: Event) -> Vec<Action> {
            let mut all = Vec::new();
            let mut queue = vec![event];
            while let Some(event) = queue.pop() {
                for action in self.core.handle(event, self.now) {
                    match &action {
                        Action::Spawn { slot, generation } if self.fork_fails => {
                            queue.insert(
                                0,
                                Event::SpawnFailed {
                                    slot: *slot,
                                    generation: *generation,
                                },
                            );
                        }
                        Action::Spawn { slot, generation } => {
                            self.next_pid += 1;
                            queue.insert(
                                0,
                                Event::Spawned {
                                    slot: *slot,
                                    generation: *generation,
                                    pid: Pid::from_raw(self.next_pid),
                                },
                            );
                        }
                        Action::PrepareReload { .. } => {
                            queue.insert(0, Event::ReloadPrepared(self.reload_to.clone()));
                        }
                        Action::Preflight => {
                            queue.insert(0, Event::Preflight(Ok(Pid::from_raw(CHECK))));
                        }
                        _ => {}
                    }
                    all.push(action);
                }
            }
            all
        }

        /// The pids the core knows under `Spawned`, for the spawns in `actions`.
        fn spawned(&self, actions: &[Action]) -> Vec<Pid> {
            let spawns = actions
                .iter()
                .filter(|a| matches!(a, Action::Spawn { .. }))
                .count();
            let last = self.next_pid;
            (last - spawns as i32 + 1..=last)
                .map(Pid::from_raw)
                .collect()
        }

        /// A tick, and the pids of the workers it forked.
        fn tick_spawned(&mut self) -> Vec<Pid> {
            let actions = self.tick();
            self.spawned(&actions)
        }

        fn ready(&mut self, pids: &[Pid]) -> Vec<Action> {
            let mut all = Vec::new();
            for pid in pids {
                all.extend(self.send(Event::Message {
                    pid: *pid,
                    msg: ToMaster::Ready,
                }));
            }
            all.extend(self.tick());
            all
        }

        fn exit(&mut self, pid: Pid, status: WorkerExit) -> Vec<Action> {
            let mut actions = self.send(Event::Exited { pid, status });
            actions.extend(self.tick());
            actions
        }

        fn live(&self) -> Vec<Pid> {
            self.core.workers.iter().map(|w| w.pid).collect()
        }

        fn generation_of(&self, pid: Pid) -> u32 {
            let worker = self.core.workers.iter().find(|w| w.pid == pid);
            worker.expect("a live worker").generation
        }
    }

    fn spawns(actions: &[Action]) -> Vec<(usize, u32)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Spawn { slot, generation } => Some((*slot, *generation)),
                _ => None,
            })
            .collect()
    }

    fn told(actions: &[Action]) -> Vec<(Pid, Leave)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Tell { pid, leave } => Some((*pid, *leave)),
                _ => None,
            })
            .collect()
    }

    fn killed(actions: &[Action]) -> Vec<Pid> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Kill { pid } => Some(*pid),
                _ => None,
            })
            .collect()
    }

    fn ready_notice(actions: &[Action]) -> Option<&str> {
        actions.iter().find_map(|a| match a {
            Action::Notify(Notice::Ready(status)) => Some(status.as_str()),
            _ => None,
        })
    }

    #[test]
    fn start_forks_every_slot_and_announces_ready_once_all_are() {
        let mut sim = Sim::new(3);
        let first = sim.tick();
        assert_eq!(spawns(&first), [(1, 0), (2, 0), (3, 0)]);
        let pids = sim.spawned(&first);
        assert!(spawns(&sim.tick()).is_empty(), "a slot was filled twice");
        assert_eq!(ready_notice(&sim.ready(&pids[..2])), None);
        assert_eq!(
            ready_notice(&sim.ready(&pids[2..])),
            Some("3/3 workers ready")
        );
        assert_eq!(ready_notice(&sim.tick()), None, "READY=1 sent twice");
    }

    #[test]
    fn a_crashing_slot_backs_off_and_the_others_keep_serving() {
        let mut sim = Sim::serving(2);
        let victim = sim.live()[0];
        let actions = sim.exit(victim, WorkerExit::Signal(Signal::SIGSEGV));
        assert!(
            spawns(&actions).is_empty(),
            "restarted at once after a quick death"
        );
        assert_eq!(
            sim.core.next_wake(sim.now),
            sim.now + Duration::from_millis(100)
        );
        sim.advance(Duration::from_millis(100));
        let respawn = sim.tick();
        assert_eq!(spawns(&respawn), [(1, 0)]);
        // It dies quickly again: the delay doubles.
        let again = sim.spawned(&respawn)[0];
        sim.exit(again, WorkerExit::Code(1));
        sim.advance(Duration::from_millis(100));
        assert!(spawns(&sim.tick()).is_empty());
        sim.advance(Duration::from_millis(100));
        assert_eq!(spawns(&sim.tick()), [(1, 0)]);
        assert_eq!(sim.live().len(), 2);
    }

    #[test]
    fn a_worker_that_fails_to_boot_ends_the_master() {
        let mut sim = Sim::new(2);
        let pids = sim.tick_spawned();
        let actions = sim.exit(pids[0], WorkerExit::Code(i32::from(exit::BOOT_FAILED)));
        let abort = actions.iter().find_map(|a| match a {
            Action::Abort(message) => Some(message),
            _ => None,
        });
        assert!(
            abort.is_some_and(|m| m.contains("failed to boot")),
            "{actions:?}"
        );
    }

    #[test]
    fn workers_dying_before_any_is_ready_give_up_after_a_few_attempts() {
        let mut sim = Sim::new(1);
        sim.tick();
        for attempt in 1..=MAX_BOOT_ATTEMPTS {
            let pid = *sim.live().last().expect("a worker");
            let actions = sim.exit(pid, WorkerExit::Signal(Signal::SIGABRT));
            let aborted = actions.iter().any(|a| matches!(a, Action::Abort(_)));
            assert_eq!(aborted, attempt == MAX_BOOT_ATTEMPTS, "attempt {attempt}");
            sim.advance(MAX_DELAY_FOR_TESTS);
            sim.tick();
        }
    }

    /// Longer than any restart delay.
    const MAX_DELAY_FOR_TESTS: Duration = Duration::from_secs(11);

    #[test]
    fn a_crash_after_boot_is_not_a_boot_failure() {
        let mut sim = Sim::serving(1);
        for _ in 0..MAX_BOOT_ATTEMPTS + 1 {
            let pid = sim.live()[0];
            let actions = sim.exit(pid, WorkerExit::Code(i32::from(exit::BOOT_FAILED)));
            assert!(!actions.iter().any(|a| matches!(a, Action::Abort(_))));
            sim.advance(MAX_DELAY_FOR_TESTS);
            sim.tick();
        }
    }

    #[test]
    fn reload_drains_the_old_generation_only_once_the_new_one_is_ready() {
        let mut sim = Sim::serving(2);
        let old = sim.live();
        let hup = sim.signal(Signal::SIGHUP);
        assert_eq!(hup[0], Action::Notify(Notice::Reloading));
        assert_eq!(hup[1], Action::PrepareReload { generation: 1 });
        let started = sim.tick();
        assert_eq!(spawns(&started), [(1, 1), (2, 1)]);
        let new = sim.spawned(&started);
        assert!(told(&sim.ready(&new[..1])).is_empty(), "drained too early");
        let done = sim.ready(&new[1..]);
        assert!(done.contains(&Action::CommitReload { generation: 1 }));
        let drained: Vec<Pid> = told(&done).into_iter().map(|(pid, _)| pid).collect();
        assert_eq!(drained, old);
        assert_eq!(ready_notice(&done), Some("2/2 workers ready"));
        // The old workers exit; nothing is restarted in their slots.
        for pid in old {
            assert!(spawns(&sim.exit(pid, WorkerExit::Code(0))).is_empty());
        }
        assert!(new.iter().all(|pid| sim.generation_of(*pid) == 1));
    }

    #[test]
    fn a_reload_whose_config_is_bad_keeps_the_workers() {
        let mut sim = Sim::serving(2);
        sim.reload_to = Err("invalid value 'x' for workers".to_string());
        let actions = sim.signal(Signal::SIGHUP);
        let status = ready_notice(&actions).expect("systemd hears the reload is over");
        assert!(
            status.starts_with("reload failed: invalid value"),
            "{status}"
        );
        assert!(spawns(&sim.tick()).is_empty());
        // The next HUP is a new attempt, not "already under way".
        sim.reload_to = Ok(settings(2));
        assert!(
            sim.signal(Signal::SIGHUP)
                .contains(&Action::PrepareReload { generation: 1 })
        );
    }

    #[test]
    fn a_new_worker_crashing_abandons_the_reload() {
        let mut sim = Sim::serving(2);
        let old = sim.live();
        sim.signal(Signal::SIGHUP);
        let new = sim.tick_spawned();
        sim.ready(&new[..1]);
        let actions = sim.exit(new[1], WorkerExit::Code(1));
        assert_eq!(killed(&actions), [new[0]]);
        assert!(actions.contains(&Action::AbandonReload { generation: 1 }));
        assert!(ready_notice(&actions).is_some_and(|s| s.contains("reload failed")));
        assert!(
            told(&actions).is_empty(),
            "the old workers were told to leave"
        );
        let serving: Vec<Pid> = sim.core.serving().map(|w| w.pid).collect();
        assert_eq!(serving, old);
    }

    #[test]
    fn a_reload_that_is_not_ready_in_time_is_abandoned() {
        let mut sim = Sim::serving(1);
        sim.signal(Signal::SIGHUP);
        let new = sim.tick_spawned();
        sim.advance(Duration::from_secs(29));
        assert!(killed(&sim.tick()).is_empty());
        sim.advance(SECOND);
        let actions = sim.tick();
        assert_eq!(killed(&actions), new);
        assert!(ready_notice(&actions).is_some_and(|s| s.contains("not ready within 30s")));
    }

    #[test]
    fn a_failed_fork_during_a_reload_abandons_it() {
        let mut sim = Sim::serving(1);
        sim.signal(Signal::SIGHUP);
        sim.fork_fails = true;
        let actions = sim.tick();
        assert!(actions.contains(&Action::AbandonReload { generation: 1 }));
        assert!(ready_notice(&actions).is_some_and(|s| s.contains("could not be started")));
    }

    #[test]
    fn a_failed_fork_is_retried_later() {
        let mut sim = Sim::new(1);
        sim.fork_fails = true;
        assert_eq!(spawns(&sim.tick()), [(1, 0)]);
        assert!(spawns(&sim.tick()).is_empty(), "retried at once");
        sim.fork_fails = false;
        sim.advance(SECOND);
        assert_eq!(spawns(&sim.tick()), [(1, 0)]);
    }

    #[test]
    fn ttin_and_ttou_during_a_reload_move_the_serving_generation_only() {
        let mut sim = Sim::serving(2);
        sim.signal(Signal::SIGHUP);
        let new = sim.tick_spawned();
        // TTIN adds a worker to the generation that serves now.
        assert_eq!(
            spawns(&{
                let mut a = sim.signal(Signal::SIGTTIN);
                a.extend(sim.tick());
                a
            }),
            [(3, 0)]
        );
        // TTOU drains it again.
        let mut actions = sim.signal(Signal::SIGTTOU);
        actions.extend(sim.tick());
        assert_eq!(told(&actions).len(), 1);
        // The new generation comes up with its own configured count.
        let done = sim.ready(&new);
        assert!(done.contains(&Action::CommitReload { generation: 1 }));
        assert_eq!(sim.core.target, 2);
    }

    #[test]
    fn ttou_never_goes_below_one_worker() {
        let mut sim = Sim::serving(1);
        let mut actions = sim.signal(Signal::SIGTTOU);
        actions.extend(sim.tick());
        assert!(told(&actions).is_empty());
        assert_eq!(sim.core.target, 1);
    }

    #[test]
    fn stop_during_a_reload_kills_the_new_workers_and_drains_the_old() {
        let mut sim = Sim::serving(2);
        let old = sim.live();
        sim.signal(Signal::SIGHUP);
        let new = sim.tick_spawned();
        let actions = sim.signal(Signal::SIGTERM);
        assert_eq!(killed(&actions), new);
        assert!(actions.contains(&Action::AbandonReload { generation: 1 }));
        assert!(actions.contains(&Action::CloseListeners));
        let drained: Vec<Pid> = told(&actions)
            .into_iter()
            .filter(|(_, leave)| matches!(leave, Leave::Drain { .. }))
            .map(|(pid, _)| pid)
            .collect();
        assert!(old.iter().all(|pid| drained.contains(pid)));
        // A HUP now is ignored; once every worker is gone, the master exits.
        assert!(sim.signal(Signal::SIGHUP).is_empty());
        for pid in sim.live() {
            sim.exit(pid, WorkerExit::Code(0));
        }
        assert_eq!(sim.tick().last(), Some(&Action::Exit));
    }

    #[test]
    fn graceful_stop_has_a_deadline_and_a_second_term_quits() {
        let mut sim = Sim::serving(1);
        let worker = sim.live()[0];
        let actions = sim.signal(Signal::SIGTERM);
        let deadline = sim.now + Duration::from_secs(30);
        assert_eq!(
            told(&actions),
            [(
                worker,
                Leave::Drain {
                    start: sim.now,
                    deadline
                }
            )]
        );
        assert!(actions.contains(&Action::Notify(Notice::ExtendStop {
            until: deadline + KILL_SLACK
        })));
        assert!(
            spawns(&sim.tick()).is_empty(),
            "a stopping master started a worker"
        );
        let quit = sim.signal(Signal::SIGTERM);
        assert_eq!(told(&quit), [(worker, Leave::Quit)]);
        // Quitting brings the kill closer: the quick grace, not the drain deadline.
        sim.advance(QUICK_GRACE);
        assert_eq!(killed(&sim.tick()), [worker]);
    }

    #[test]
    fn a_worker_past_its_drain_deadline_is_killed() {
        let mut sim = Sim::serving(1);
        let worker = sim.live()[0];
        sim.signal(Signal::SIGTERM);
        sim.advance(Duration::from_secs(30));
        assert!(killed(&sim.tick()).is_empty(), "killed before the slack");
        assert_eq!(sim.core.next_wake(sim.now), sim.now + KILL_SLACK);
        sim.advance(KILL_SLACK);
        assert_eq!(killed(&sim.tick()), [worker]);
        assert!(killed(&sim.tick()).is_empty(), "killed twice");
    }

    #[test]
    fn shutdown_delay_postpones_the_drain_and_its_deadline() {
        let mut sim = Sim::new(1);
        sim.core.settings.shutdown_delay = Duration::from_secs(5);
        let pids = sim.tick_spawned();
        sim.ready(&pids);
        let actions = sim.signal(Signal::SIGTERM);
        let start = sim.now + Duration::from_secs(5);
        assert_eq!(
            told(&actions),
            [(
                pids[0],
                Leave::Drain {
                    start,
                    deadline: start + Duration::from_secs(30)
                }
            )]
        );
    }

    /// A master of programs (`prefork run`) with `ready_after`.
    fn programs(workers: usize, ready_after: Option<Duration>) -> Sim {
        let mut sim = Sim::new(workers);
        sim.core.settings.ready_after = ready_after;
        sim.core.settings.watch_from_start = false;
        sim.reload_to = Ok(sim.core.settings);
        sim
    }

    #[test]
    fn a_program_is_ready_when_it_says_so_or_at_the_timer() {
        let mut sim = programs(2, Some(SECOND));
        let [early, silent] = sim.tick_spawned()[..] else {
            panic!("two workers");
        };
        assert_eq!(sim.core.next_wake(sim.now), sim.now + SECOND);
        sim.advance(Duration::from_millis(300));
        assert!(ready_notice(&sim.ready(&[early])).is_none(), "one of two");
        sim.advance(Duration::from_millis(699));
        assert!(ready_notice(&sim.tick()).is_none(), "before the timer");
        sim.advance(Duration::from_millis(1));
        assert!(ready_notice(&sim.tick()).is_some(), "at the timer");
        assert!(
            sim.core.workers.iter().all(|w| w.ready),
            "{silent} not ready"
        );
    }

    #[test]
    fn without_a_timer_a_late_ready_gates_the_reload() {
        let mut sim = programs(1, None);
        let first = sim.tick_spawned();
        sim.advance(SECOND * 20);
        assert!(ready_notice(&sim.tick()).is_none(), "ready without READY=1");
        sim.ready(&first);
        sim.signal(Signal::SIGHUP);
        let new = sim.tick_spawned();
        sim.advance(SECOND * 20);
        assert!(
            told(&sim.tick()).is_empty(),
            "the old program stopped early"
        );
        let actions = sim.ready(&new);
        assert_eq!(told(&actions).len(), 1, "the old program kept");
        assert_eq!(told(&actions)[0].0, first[0]);
    }

    #[test]
    fn a_program_that_exits_before_its_timer_fails_the_reload() {
        let mut sim = programs(1, Some(SECOND));
        let first = sim.tick_spawned();
        sim.advance(SECOND);
        sim.tick();
        sim.signal(Signal::SIGHUP);
        let new = sim.tick_spawned();
        sim.advance(Duration::from_millis(100));
        let actions = sim.exit(new[0], WorkerExit::Code(1));
        assert!(told(&actions).is_empty(), "the old program was stopped");
        assert_eq!(sim.live(), first, "the old program serves on");
        assert!(ready_notice(&actions).is_some_and(|s| s.contains("reload failed")));
    }

    #[test]
    fn a_program_is_watched_only_once_it_beats() {
        let mut sim = programs(1, Some(SECOND));
        let pids = sim.tick_spawned();
        sim.advance(SECOND * 100);
        assert!(killed(&sim.tick()).is_empty(), "killed for never beating");
        assert!(sim.core.healthy(sim.now));
        sim.send(Event::Message {
            pid: pids[0],
            msg: ToMaster::Heartbeat,
        });
        sim.tick();
        // In steps: a master that sleeps much longer than its longest sleep was suspended.
        for _ in 0..30 {
            sim.advance(SECOND);
            assert!(killed(&sim.tick()).is_empty());
        }
        sim.advance(SECOND);
        assert!(!sim.core.healthy(sim.now));
        assert_eq!(killed(&sim.tick()), pids, "a program that stopped beating");
    }

    #[test]
    fn a_hung_worker_is_killed_and_replaced_and_the_watchdog_waits() {
        let mut sim = Sim::serving(2);
        let [hung, alive] = sim.live()[..] else {
            panic!("two workers");
        };
        for _ in 0..29 {
            sim.advance(SECOND);
            sim.send(Event::Message {
                pid: alive,
                msg: ToMaster::Heartbeat,
            });
            assert!(killed(&sim.tick()).is_empty());
        }
        assert!(
            !sim.core.healthy(sim.now),
            "the watchdog was fed for a hung worker"
        );
        sim.advance(Duration::from_millis(1001));
        assert_eq!(killed(&sim.tick()), [hung]);
        assert!(
            sim.core.healthy(sim.now),
            "a killed worker still counts against health"
        );
        // Its replacement starts at once: it had been up long enough.
        assert_eq!(
            spawns(&sim.exit(hung, WorkerExit::Signal(Signal::SIGKILL))),
            [(1, 0)]
        );
    }

    #[test]
    fn a_suspended_master_does_not_kill_workers_for_its_own_gap() {
        let mut sim = Sim::serving(1);
        sim.advance(Duration::from_secs(60));
        let actions = sim.tick();
        assert!(killed(&actions).is_empty(), "{actions:?}");
        assert!(sim.core.healthy(sim.now));
    }

    #[test]
    fn a_retiring_worker_drains_once_its_replacement_is_ready() {
        let mut sim = Sim::serving(1);
        let old = sim.live()[0];
        sim.send(Event::Message {
            pid: old,
            msg: ToMaster::Retiring,
        });
        let started = sim.tick();
        assert_eq!(spawns(&started), [(1, 0)]);
        assert!(
            told(&started).is_empty(),
            "drained before its replacement was ready"
        );
        let new = sim.spawned(&started);
        let actions = sim.ready(&new);
        assert_eq!(
            told(&actions).iter().map(|(p, _)| *p).collect::<Vec<_>>(),
            [old]
        );
        assert!(spawns(&sim.exit(old, WorkerExit::Code(0))).is_empty());
    }

    #[test]
    fn usr1_reopens_logs_and_unknown_children_are_ignored() {
        let mut sim = Sim::serving(1);
        assert_eq!(sim.signal(Signal::SIGUSR1), [Action::ReopenLogs]);
        // An orphan reaped as PID 1 is no worker of ours.
        let actions = sim.send(Event::Exited {
            pid: Pid::from_raw(1),
            status: WorkerExit::Code(0),
        });
        assert!(actions.is_empty());
        assert_eq!(sim.live().len(), 1);
    }

    #[test]
    fn hup_before_any_worker_booted_is_ignored() {
        let mut sim = Sim::new(1);
        sim.tick();
        assert!(sim.signal(Signal::SIGHUP).is_empty());
    }

    #[test]
    fn an_upgrade_checks_the_binary_then_the_new_image_finishes_the_reload() {
        let mut sim = Sim::upgrading(2);
        let old = sim.live();
        let hup = sim.signal(Signal::SIGUSR2);
        assert_eq!(hup, [Action::Notify(Notice::Reloading), Action::Preflight]);
        assert!(
            spawns(&sim.tick()).is_empty(),
            "workers started before the check"
        );
        assert_eq!(sim.check_ends(WorkerExit::Code(0), ""), [Action::Exec]);
        sim.exec();
        // The new image serves with the adopted workers and starts its own generation.
        assert_eq!(sim.live(), old);
        let started = sim.tick();
        assert_eq!(spawns(&started), [(1, 1), (2, 1)]);
        let new = sim.spawned(&started);
        let done = sim.ready(&new);
        assert!(done.contains(&Action::CommitReload { generation: 1 }));
        let drained: Vec<Pid> = told(&done).into_iter().map(|(pid, _)| pid).collect();
        assert_eq!(drained, old);
        assert_eq!(ready_notice(&done), Some("2/2 workers ready"));
    }

    #[test]
    fn a_binary_that_fails_its_check_is_not_executed() {
        let mut sim = Sim::upgrading(1);
        sim.signal(Signal::SIGHUP);
        let actions = sim.check_ends(WorkerExit::Code(2), "invalid value 'x' for workers");
        assert!(!actions.contains(&Action::Exec));
        assert_eq!(
            ready_notice(&actions),
            Some(
                "reload failed: the new binary's check exited with status 2: invalid value 'x' \
                 for workers; 1/1 workers ready"
            )
        );
        let missing = {
            let mut sim = Sim::upgrading(1);
            sim.core.handle(Event::Signal(Signal::SIGHUP), sim.now);
            sim.send(Event::Preflight(Err("/srv/app: No such file".into())))
        };
        assert!(ready_notice(&missing).is_some_and(|s| s.contains("cannot run the new binary")));
    }

    #[test]
    fn a_check_that_hangs_is_killed_at_the_reload_timeout() {
        let mut sim = Sim::upgrading(1);
        sim.signal(Signal::SIGHUP);
        assert_eq!(sim.core.next_wake(sim.now), sim.now + SECOND);
        sim.advance(Duration::from_secs(30));
        let actions = sim.tick();
        assert_eq!(killed(&actions), [Pid::from_raw(CHECK)]);
        assert!(ready_notice(&actions).is_some_and(|s| s.contains("did not finish within 30s")));
        // Its exit, reaped later, starts nothing.
        assert!(
            sim.check_ends(WorkerExit::Signal(Signal::SIGKILL), "")
                .is_empty()
        );
    }

    #[test]
    fn a_failed_exec_keeps_the_workers_and_the_next_hup_tries_again() {
        let mut sim = Sim::upgrading(1);
        sim.signal(Signal::SIGHUP);
        sim.check_ends(WorkerExit::Code(0), "");
        let actions = sim.send(Event::ExecFailed("/srv/app: ENOENT".into()));
        assert!(ready_notice(&actions).is_some_and(|s| s.contains("cannot execute")));
        assert_eq!(sim.signal(Signal::SIGHUP)[1], Action::Preflight);
    }

    #[test]
    fn term_during_the_check_kills_it_and_stops() {
        let mut sim = Sim::upgrading(1);
        let worker = sim.live()[0];
        sim.signal(Signal::SIGHUP);
        let actions = sim.signal(Signal::SIGTERM);
        assert_eq!(killed(&actions), [Pid::from_raw(CHECK)]);
        assert!(matches!(told(&actions)[..], [(pid, Leave::Drain { .. })] if pid == worker));
        assert!(
            !sim.check_ends(WorkerExit::Code(0), "")
                .contains(&Action::Exec)
        );
    }

    #[test]
    fn a_reload_keeps_ttin_and_ttou_unless_the_configuration_changed_the_count() {
        let mut sim = Sim::serving(2);
        sim.signal(Signal::SIGTTIN);
        sim.tick();
        sim.signal(Signal::SIGHUP);
        assert_eq!(spawns(&sim.tick()).len(), 3, "TTIN was forgotten");
        let mut sim = Sim::serving(2);
        sim.signal(Signal::SIGTTIN);
        sim.tick();
        sim.reload_to = Ok(settings(4));
        sim.signal(Signal::SIGHUP);
        assert_eq!(
            spawns(&sim.tick()).len(),
            4,
            "the configured count was ignored"
        );
    }

    #[test]
    fn an_image_that_took_over_during_start_up_keeps_its_draining_workers() {
        let mut sim = Sim::new(2);
        sim.core.upgrade = true;
        let pids = sim.tick_spawned();
        sim.ready(&pids[..1]);
        // One worker drains (say it was recycled) with its deadline; the other is not ready.
        sim.core.workers[0].leaving = true;
        sim.core.workers[0].kill_at = Some(sim.now + SECOND);
        sim.signal(Signal::SIGHUP);
        sim.check_ends(WorkerExit::Code(0), "");
        sim.reload_to = Err("bad config".into());
        sim.exec();
        assert_eq!(sim.core.workers[0].kill_at, Some(sim.now + SECOND));
        assert!(
            matches!(sim.core.state, State::Starting),
            "{:?}",
            sim.core.state
        );
    }
}
