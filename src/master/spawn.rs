//! Forking a worker: the child closes what belongs to the master, takes its generation's
//! listeners and configuration, and runs the worker until it exits.

use std::time::Instant;

use nix::unistd::{ForkResult, fork, getpid};
use tracing::{error, info};

use super::Master;
use super::workers::Worker;
use crate::process::control;
use crate::worker::Handoff;

impl Master<'_> {
    pub(super) fn spawn(&mut self, slot: usize, generation: u32) {
        let (master_end, worker_end) = match control::pair() {
            Ok(pair) => pair,
            Err(e) => {
                error!("cannot create a control channel for worker {slot}: {e}");
                self.retry_later(slot, generation);
                return;
            }
        };
        let master_pid = getpid();
        let cell = (0..)
            .find(|cell| !self.workers.iter().any(|w| w.cell == *cell))
            .expect("fewer workers than cells to number them");
        self.board.clear(cell);
        // SAFETY: the master is single-threaded (it never starts a thread and never runs
        // tokio), so the child is a faithful copy with no lock held by a vanished thread.
        match unsafe { fork() } {
            Ok(ForkResult::Parent { child }) => {
                drop(worker_end);
                info!("worker {slot} (pid {child}) spawned");
                if generation == self.generation {
                    self.slots[slot - 1].filled();
                }
                self.workers
                    .push(Worker::new(slot, generation, cell, child, master_end));
            }
            Ok(ForkResult::Child) => {
                // Master-only descriptors go first: a worker holding a sibling's control
                // channel would hide that sibling's EOF when the master dies, and one holding
                // the other generation's listeners would keep a dropped address open.
                drop(master_end);
                self.signals = None;
                self.workers.clear();
                // Nothing of the master is dropped at exit, so what is not taken is closed here.
                let current = (std::mem::take(&mut self.listeners), self.config.clone());
                let (listeners, config) = match self.pending.take() {
                    Some(p) if p.generation == generation => {
                        drop(current);
                        (p.listeners, p.config)
                    }
                    other => {
                        drop(other);
                        current
                    }
                };
                let handoff = Handoff {
                    slot,
                    seat: self.board.seat(cell),
                    master: master_pid,
                    control: worker_end,
                    listeners,
                    config,
                };
                let code = (self.boot)(handoff);
                std::process::exit(i32::from(code));
            }
            Err(e) => {
                error!("cannot fork worker {slot}: {e}");
                self.retry_later(slot, generation);
            }
        }
    }

    pub(super) fn retry_later(&mut self, slot: usize, generation: u32) {
        if generation == self.generation {
            self.slots[slot - 1].retry_later(Instant::now());
        } else {
            let pending = self.pending.take();
            self.reload_failed(pending, "a new worker could not be started");
        }
    }
}
