//! Reload (SIGHUP): a new generation of workers starts beside the serving one, with the
//! configuration read again and any new address bound; the old generation drains only once
//! every new worker is ready. If anything fails, the new workers are killed and the old ones
//! serve on.

use std::time::Instant;

use nix::sys::signal::{Signal, kill};
use tracing::{error, info};

use super::{Master, tell};
use crate::config::Config;
use crate::process::control::Leave;
use crate::process::listeners::{self, Listener};

/// A reload under way: a new generation of workers starting beside the old one.
pub(super) struct Pending {
    pub(super) generation: u32,
    pub(super) config: Config,
    pub(super) listeners: Vec<Listener>,
    pub(super) deadline: Instant,
}

impl Master<'_> {
    /// Reload: read the configuration again, bind any new address, and start a new generation
    /// of workers; the old one drains only once every new worker is ready.
    pub(super) fn on_hup(&mut self, now: Instant) {
        if self.stopping.is_some() {
            return;
        }
        if self.pending.is_some() {
            info!("SIGHUP: a reload is already under way");
            return;
        }
        self.notifier.reloading();
        let config = match (self.reconfigure)() {
            Ok(config) => config,
            Err(e) => return self.reload_failed(None, &e.to_string()),
        };
        let listeners = match listeners::bind_all(&config, &self.listeners) {
            Ok(listeners) => listeners,
            Err(e) => return self.reload_failed(None, &e.to_string()),
        };
        let generation = self.generation + 1;
        info!(
            "SIGHUP: reloading, starting {} worker(s) of generation {generation}",
            config.workers
        );
        self.pending = Some(Pending {
            generation,
            deadline: now + config.reload_timeout,
            config,
            listeners,
        });
    }

    /// Starts the new generation's workers, gives up on them at the reload timeout, and once
    /// every one is ready makes it the serving generation and drains the old one.
    pub(super) fn advance_reload(&mut self) {
        let Some(pending) = &self.pending else {
            return;
        };
        let now = Instant::now();
        if now >= pending.deadline {
            let why = format!(
                "new workers not ready within {:?}",
                pending.config.reload_timeout
            );
            let pending = self.pending.take();
            return self.reload_failed(pending, &why);
        }
        let (generation, wanted) = (pending.generation, pending.config.workers);
        for slot in 1..=wanted {
            if !self
                .workers
                .iter()
                .any(|w| w.generation == generation && w.slot == slot)
            {
                self.spawn(slot, generation);
            }
        }
        let ready = self
            .workers
            .iter()
            .filter(|w| w.generation == generation && w.ready)
            .count();
        if ready < wanted {
            return;
        }
        let pending = self.pending.take().expect("checked at the top");
        for gone in self
            .listeners
            .iter()
            .filter(|old| !pending.listeners.iter().any(|new| new.addr == old.addr))
        {
            info!("reload: no longer listening on {}", gone.describe());
            if let Some(path) = gone.socket_path() {
                let _ = std::fs::remove_file(path);
            }
        }
        for added in pending
            .listeners
            .iter()
            .filter(|new| !self.listeners.iter().any(|old| old.addr == new.addr))
        {
            info!("reload: listening on {}", added.describe());
        }
        self.listeners = pending.listeners;
        self.socket_files = listeners::socket_files(&self.listeners);
        self.config = pending.config;
        self.target = self.config.workers;
        self.generation = generation;
        self.slots.clear();
        let drain = Leave::Drain {
            start: now,
            deadline: now + self.config.graceful_timeout,
        };
        for worker in &mut self.workers {
            if worker.generation != generation && !worker.leaving {
                tell(worker, drain, now);
            }
        }
        info!("reload complete: generation {generation} serving, the old workers draining");
        let status = self.status();
        self.notifier.ready(&status);
    }

    /// A reload did not work out: the running workers stay, and systemd hears that the
    /// reload is over, and why it failed.
    pub(super) fn reload_failed(&mut self, pending: Option<Pending>, why: &str) {
        error!("reload failed, keeping the running workers: {why}");
        if let Some(pending) = pending {
            self.abandon(pending);
        }
        let status = format!("reload failed: {why}; {}", self.status());
        self.notifier.ready(&status);
    }

    /// Gives up a reload's new workers: they never served, so they are killed, not drained.
    pub(super) fn abandon(&mut self, pending: Pending) {
        for worker in &mut self.workers {
            if worker.generation == pending.generation && !worker.killed {
                worker.leaving = true;
                worker.killed = kill(worker.pid, Signal::SIGKILL).is_ok();
            }
        }
        for new in &pending.listeners {
            let added = !self.listeners.iter().any(|old| old.addr == new.addr);
            if let Some(path) = new.socket_path().filter(|_| added) {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}
