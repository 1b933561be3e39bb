//! The numbers `--metrics-bind` serves, kept in memory shared by the master and its workers.
//!
//! Like the balancing board, the table lives in a memory file mapped before the first fork, so
//! that each process adds to it with relaxed atomic operations and any worker can read all of
//! it when scraped. Counters are kept per slot, never per process: a worker replaced by another
//! (recycled, crashed, reloaded) adds to the same counters, so no total ever goes backwards.
//! Gauges (requests in flight, draining) are kept per process, in a cell of the same number as
//! the worker's on the board (whose count of open connections the metrics read too), and
//! cleared by the master when it reaps the worker, so a crash leaves nothing behind.
//!
//! The table outlives a binary: an upgrade hands it to the new image, which adopts it only if
//! it is exactly the size of its own (`shared_memory::map`), and a rollback hands it back.
//! So its layout does not change between builds. Each part keeps spare words, zero until a
//! later build gives one a meaning: a new counter or gauge takes the first spare word of its
//! part, and the old binary on the other side of an upgrade or a rollback sees it as spare.
//! A test pins the size.

use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::shared_memory::{self, AtomicTable};

/// Slots counted apart; slots beyond share the last ones (as board cells do).
pub(crate) const SLOTS: usize = 256;
/// Worker processes whose gauges are kept; as many as the board has cells.
const CELLS: usize = 256;

/// Upper bounds of the request-duration histogram, in seconds: Prometheus's default buckets.
pub(crate) const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Why a worker process ended, as the master saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExitCause {
    /// It was told to leave and exited by itself.
    Stopped,
    /// The master killed it: hung, past its deadline, or a reload given up.
    Killed,
    /// It died without being told to.
    Crashed,
}

impl ExitCause {
    pub(crate) const ALL: [ExitCause; 3] =
        [ExitCause::Stopped, ExitCause::Killed, ExitCause::Crashed];

    pub(crate) fn label(self) -> &'static str {
        match self {
            ExitCause::Stopped => "stopped",
            ExitCause::Killed => "killed",
            ExitCause::Crashed => "crashed",
        }
    }
}

/// The master's own counts.
#[repr(C)]
struct Master {
    worker_starts: AtomicU64,
    worker_exits: [AtomicU64; 3],
    reloads_completed: AtomicU64,
    reloads_failed: AtomicU64,
    generation: AtomicU64,
    /// 1 once a stop has begun.
    stopping: AtomicU64,
    /// Room for later builds' counts: see the module doc.
    _spare: [AtomicU64; 16],
}

/// What the workers of one slot have done, ever.
#[repr(C)]
struct Slot {
    connections: AtomicU64,
    /// Connections still open when a deadline or a quick stop ended the worker.
    cut: AtomicU64,
    requests: AtomicU64,
    /// Responses by status class, 1xx to 5xx.
    responses: [AtomicU64; 5],
    /// Requests by the first bucket whose bound their duration does not exceed; the last one
    /// past every bound.
    durations: [AtomicU64; BUCKETS.len() + 1],
    duration_micros: AtomicU64,
    /// Room for later builds' counts: see the module doc.
    _spare: [AtomicU64; 11],
}

/// One worker process's gauges, while it runs.
#[repr(C)]
struct Cell {
    /// The slot of the worker in the cell, 0 when free.
    slot: AtomicU64,
    in_flight: AtomicU64,
    draining: AtomicU64,
    /// Idle HTTP/1 connections parked (see `worker::parking`): the first gauge taken from
    /// the spare words, so the cell's size is the one it had without it.
    parked: AtomicU64,
    /// Room for later builds' gauges: see the module doc.
    _spare: [AtomicU64; 4],
}

#[repr(C)]
struct Table {
    master: Master,
    slots: [Slot; SLOTS],
    cells: [Cell; CELLS],
}

// SAFETY: `repr(C)`, and made of atomics only.
unsafe impl AtomicTable for Table {}

/// The shared table. The mapping is never unmapped, so copies stay valid in every process.
#[derive(Clone, Copy)]
pub(crate) struct Metrics {
    table: NonNull<Table>,
}

// SAFETY: the table is only atomics in a mapping that lives as long as the process.
unsafe impl Send for Metrics {}
// SAFETY: as above; every access is an atomic operation.
unsafe impl Sync for Metrics {}

impl Metrics {
    /// Creates the table in a memory file and maps it, shared with every process forked from
    /// now on; the file goes to the image an upgrade executes.
    pub(crate) fn new() -> nix::Result<(Metrics, OwnedFd)> {
        let (table, file) = shared_memory::create(c"prefork-metrics")?;
        Ok((Metrics { table }, file))
    }

    /// Whether `file` holds a table of this build's layout.
    pub(crate) fn fits(file: impl AsFd) -> nix::Result<bool> {
        shared_memory::fits::<Table>(file)
    }

    /// Maps the table in `file`, made by [`Metrics::new`] here or in the image this one
    /// replaced.
    pub(crate) fn map(file: &OwnedFd) -> nix::Result<Metrics> {
        Ok(Metrics {
            table: shared_memory::map(file)?,
        })
    }

    fn table(&self) -> &Table {
        // SAFETY: the mapping holds a whole table and is never unmapped.
        unsafe { self.table.as_ref() }
    }

    fn slot(&self, slot: usize) -> &Slot {
        &self.table().slots[slot.saturating_sub(1) % SLOTS]
    }

    fn cell(&self, cell: usize) -> &Cell {
        &self.table().cells[cell % CELLS]
    }

    // The master's side.

    /// A worker was forked into `cell` for `slot`.
    pub(crate) fn started(&self, cell: usize, slot: usize) {
        self.table()
            .master
            .worker_starts
            .fetch_add(1, Ordering::Relaxed);
        let cell = self.cell(cell);
        cell.in_flight.store(0, Ordering::Relaxed);
        cell.parked.store(0, Ordering::Relaxed);
        cell.draining.store(0, Ordering::Relaxed);
        cell.slot.store(slot as u64, Ordering::Relaxed);
    }

    /// The worker in `cell` was reaped.
    pub(crate) fn exited(&self, cell: usize, cause: ExitCause) {
        self.table().master.worker_exits[cause as usize].fetch_add(1, Ordering::Relaxed);
        self.cell(cell).slot.store(0, Ordering::Relaxed);
    }

    /// A reload ended: `generation` serves, or the reload was given up.
    pub(crate) fn reloaded(&self, completed: Option<u32>) {
        let master = &self.table().master;
        match completed {
            Some(generation) => {
                master.reloads_completed.fetch_add(1, Ordering::Relaxed);
                master
                    .generation
                    .store(u64::from(generation), Ordering::Relaxed);
            }
            None => {
                master.reloads_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn stopping(&self) {
        self.table().master.stopping.store(1, Ordering::Relaxed);
    }

    /// A worker's meter, for the worker in `cell` of `slot`.
    pub(crate) fn meter(self, cell: usize, slot: usize) -> Meter {
        Meter {
            metrics: self,
            cell: cell % CELLS,
            slot,
        }
    }

    // Reading, for a scrape.

    /// Everything, with the connections open in each cell from `open` (the board's count).
    pub(crate) fn read(&self, open: impl Fn(usize) -> u64) -> Reading {
        let table = self.table();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let master = &table.master;
        let mut workers: Vec<WorkerReading> = Vec::new();
        for (index, cell) in table.cells.iter().enumerate() {
            let slot = load(&cell.slot) as usize;
            if slot == 0 {
                continue;
            }
            let draining = load(&cell.draining) != 0;
            let entry = match workers.iter_mut().find(|w| w.slot == slot) {
                Some(entry) => entry,
                None => {
                    workers.push(WorkerReading {
                        slot,
                        ..WorkerReading::default()
                    });
                    workers.last_mut().expect("just pushed")
                }
            };
            entry.processes += 1;
            entry.draining += usize::from(draining);
            entry.open += open(index);
            entry.in_flight += load(&cell.in_flight);
            entry.parked += load(&cell.parked);
        }
        workers.sort_by_key(|w| w.slot);
        let slots = table
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| load(&s.connections) != 0 || load(&s.requests) != 0)
            .map(|(i, s)| SlotReading {
                slot: i + 1,
                connections: load(&s.connections),
                cut: load(&s.cut),
                requests: load(&s.requests),
                responses: s.responses.each_ref().map(load),
                durations: s.durations.each_ref().map(load),
                duration: Duration::from_micros(load(&s.duration_micros)),
            })
            .collect();
        Reading {
            worker_starts: load(&master.worker_starts),
            worker_exits: master.worker_exits.each_ref().map(load),
            reloads_completed: load(&master.reloads_completed),
            reloads_failed: load(&master.reloads_failed),
            generation: load(&master.generation),
            stopping: load(&master.stopping) != 0,
            slots,
            workers,
        }
    }
}

/// What one worker adds to the table.
#[derive(Clone, Copy)]
pub(crate) struct Meter {
    metrics: Metrics,
    cell: usize,
    slot: usize,
}

impl Meter {
    /// The whole table, to serve it.
    pub(crate) fn metrics(&self) -> Metrics {
        self.metrics
    }

    fn slot(&self) -> &Slot {
        self.metrics.slot(self.slot)
    }

    fn cell(&self) -> &Cell {
        self.metrics.cell(self.cell)
    }

    pub(crate) fn accepted(&self) {
        self.slot().connections.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection was parked (`true`) or taken out of its parking (`false`).
    pub(crate) fn parked(&self, parked: bool) {
        let gauge = &self.cell().parked;
        if parked {
            gauge.fetch_add(1, Ordering::Relaxed);
        } else {
            gauge.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// A request arrived: in flight until the guard is answered or dropped.
    pub(crate) fn request(&self) -> Measured {
        self.cell().in_flight.fetch_add(1, Ordering::Relaxed);
        Measured {
            meter: *self,
            began: Instant::now(),
            answered: false,
        }
    }

    /// A request ended: answered with `status` after `took`, or given up (the client went
    /// away before the response) with `None`.
    fn request_ended(&self, answered: Option<(u16, Duration)>) {
        self.cell().in_flight.fetch_sub(1, Ordering::Relaxed);
        let Some((status, took)) = answered else {
            return;
        };
        let slot = self.slot();
        slot.requests.fetch_add(1, Ordering::Relaxed);
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        slot.responses[class].fetch_add(1, Ordering::Relaxed);
        slot.durations[bucket(took)].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        slot.duration_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub(crate) fn draining(&self) {
        self.cell().draining.store(1, Ordering::Relaxed);
    }

    /// `n` connections were cut: still open at the deadline, or at a quick stop.
    pub(crate) fn cut(&self, n: usize) {
        self.slot().cut.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// The histogram bucket of a request that took `took`: the first whose bound it does not
/// exceed, or the one past every bound.
fn bucket(took: Duration) -> usize {
    let seconds = took.as_secs_f64();
    BUCKETS
        .iter()
        .position(|bound| seconds <= *bound)
        .unwrap_or(BUCKETS.len())
}

/// A request in flight, counted as answered with [`Measured::answered`] or as given up when
/// dropped without.
pub(crate) struct Measured {
    meter: Meter,
    began: Instant,
    answered: bool,
}

impl Measured {
    pub(crate) fn answered(mut self, status: u16) {
        self.answered = true;
        self.meter
            .request_ended(Some((status, self.began.elapsed())));
    }
}

impl Drop for Measured {
    fn drop(&mut self) {
        if !self.answered {
            self.meter.request_ended(None);
        }
    }
}

/// The table as one scrape reads it.
#[derive(Debug, Default)]
pub(crate) struct Reading {
    pub(crate) worker_starts: u64,
    /// By [`ExitCause`], in the order of [`ExitCause::ALL`].
    pub(crate) worker_exits: [u64; 3],
    pub(crate) reloads_completed: u64,
    pub(crate) reloads_failed: u64,
    pub(crate) generation: u64,
    pub(crate) stopping: bool,
    /// Slots that ever had a connection.
    pub(crate) slots: Vec<SlotReading>,
    /// Slots with a worker process now.
    pub(crate) workers: Vec<WorkerReading>,
}

#[derive(Debug, Default)]
pub(crate) struct SlotReading {
    pub(crate) slot: usize,
    pub(crate) connections: u64,
    pub(crate) cut: u64,
    pub(crate) requests: u64,
    pub(crate) responses: [u64; 5],
    pub(crate) durations: [u64; BUCKETS.len() + 1],
    pub(crate) duration: Duration,
}

#[derive(Debug, Default)]
pub(crate) struct WorkerReading {
    pub(crate) slot: usize,
    /// Processes in the slot: two while a reload or a recycling overlaps them.
    pub(crate) processes: usize,
    pub(crate) draining: usize,
    pub(crate) open: u64,
    pub(crate) in_flight: u64,
    pub(crate) parked: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_the_one_other_builds_adopt() {
        // A table of another size fails an upgrade's adoption, and a rollback's: a new metric
        // takes a spare word of its part instead of growing the table.
        assert_eq!(size_of::<Master>(), 24 * 8);
        assert_eq!(size_of::<Slot>(), 32 * 8);
        assert_eq!(size_of::<Cell>(), 8 * 8);
        assert_eq!(size_of::<Table>(), 82_112);
    }

    #[test]
    fn parked_connections_are_a_gauge_of_their_worker() {
        let (metrics, _file) = Metrics::new().unwrap();
        metrics.started(3, 1);
        let meter = metrics.meter(3, 1);
        meter.parked(true);
        meter.parked(true);
        meter.parked(false);
        assert_eq!(metrics.read(|_| 0).workers[0].parked, 1);
        // A worker that crashed leaves nothing behind: the next one in its cell starts at 0.
        metrics.exited(3, ExitCause::Crashed);
        metrics.started(3, 1);
        assert_eq!(metrics.read(|_| 0).workers[0].parked, 0);
    }

    #[test]
    fn durations_fall_in_the_first_bucket_that_holds_them() {
        assert_eq!(bucket(Duration::ZERO), 0);
        assert_eq!(
            bucket(Duration::from_millis(5)),
            0,
            "a bound holds its own value"
        );
        assert_eq!(bucket(Duration::from_millis(7)), 1);
        assert_eq!(bucket(Duration::from_secs(10)), BUCKETS.len() - 1);
        assert_eq!(
            bucket(Duration::from_secs(30)),
            BUCKETS.len(),
            "past every bound"
        );
    }

    #[test]
    fn counters_outlive_the_worker_and_gauges_do_not() {
        let (metrics, _file) = Metrics::new().unwrap();
        metrics.started(3, 1);
        let meter = metrics.meter(3, 1);
        meter.accepted();
        let _in_flight = meter.request();
        meter.request().answered(200);
        meter.request().answered(503);
        drop(meter.request());
        let open = |cell| if cell == 3 { 1 } else { 0 };
        let reading = metrics.read(open);
        assert_eq!(reading.workers.len(), 1);
        assert_eq!(
            (reading.workers[0].open, reading.workers[0].in_flight),
            (1, 1)
        );
        let slot = &reading.slots[0];
        assert_eq!((slot.slot, slot.requests, slot.connections), (1, 2, 1));
        assert_eq!(
            slot.responses,
            [0, 1, 0, 0, 1],
            "one given up, not answered"
        );
        assert_eq!(
            slot.durations[0], 2,
            "answered at once: in the first bucket"
        );

        // The worker crashes; its replacement in another cell counts on.
        metrics.exited(3, ExitCause::Crashed);
        metrics.started(4, 1);
        metrics.meter(4, 1).accepted();
        let reading = metrics.read(open);
        assert_eq!(reading.workers.len(), 1);
        assert_eq!(
            reading.workers[0].in_flight, 0,
            "the crashed worker's gauge went with it"
        );
        assert_eq!(reading.slots[0].connections, 2);
        assert_eq!(reading.worker_starts, 2);
        assert_eq!(reading.worker_exits, [0, 0, 1]);
    }
}
