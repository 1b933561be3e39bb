//! Accept balancing across workers.
//!
//! Every worker waits on the same listening socket and the kernel wakes them all for each new
//! connection; the one that runs first takes it. A worker that is already running (busy, or
//! just done with a request) wins those races, so a client that opens its connections one after
//! another can land every one on the same worker, which then serves them for their lifetime
//! while its siblings idle.
//!
//! The board is a small table in memory shared by the master and its workers (mapped before
//! the first fork). Each worker publishes how many connections it holds; one that holds clearly
//! more than the average of the workers accepting sits out the accept race for a moment, and a
//! sibling — woken for the same connection — takes it. The master clears a worker's cell when
//! it reaps it, so a crash leaves no stale count behind.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use super::shared_memory::{self, AtomicTable};

use std::os::fd::{AsFd, OwnedFd};

/// More workers than this share the cells that remain, which only weakens balancing.
const CELLS: usize = 256;
/// Connections a worker may hold above the average before it steps back: small differences
/// are not worth a delay.
const SLACK: u32 = 2;

#[repr(C)]
struct Cell {
    /// Connections the worker holds.
    open: AtomicU32,
    /// 1 while the worker accepts; 0 when it is draining, gone, or the cell is free.
    accepting: AtomicU32,
    /// Connections the worker ever took (wrapping): whether a sibling is making progress.
    accepted: AtomicU32,
}

/// The shared table: a header, then the cells. The mapping is never unmapped, so copies of the
/// pointer stay valid in the master and in every worker.
#[derive(Clone, Copy)]
pub(crate) struct Board {
    table: NonNull<Table>,
}

#[repr(C)]
struct Table {
    /// One past the highest cell the master ever handed out, so that workers read only cells
    /// that can be in use (this check runs before every accept).
    high_water: AtomicUsize,
    cells: [Cell; CELLS],
}

// SAFETY: `repr(C)`, and made of atomics only.
unsafe impl AtomicTable for Table {}

// SAFETY: the board is only atomics in a mapping that lives as long as the process.
unsafe impl Send for Board {}
// SAFETY: as above; every access is an atomic operation.
unsafe impl Sync for Board {}

impl Board {
    /// Creates the table in a memory file and maps it, shared with every process forked from
    /// now on. The file is what a master hands to the image it executes on an upgrade, so that
    /// both images and every worker see the same cells.
    pub(crate) fn new() -> nix::Result<(Board, OwnedFd)> {
        let (table, file) = shared_memory::create(c"prefork-board")?;
        Ok((Board { table }, file))
    }

    /// Whether `file` holds a board of this build's layout.
    pub(crate) fn fits(file: impl AsFd) -> nix::Result<bool> {
        shared_memory::fits::<Table>(file)
    }

    /// Maps the table in `file`, made by [`Board::new`] in this master or in the image it
    /// replaced.
    pub(crate) fn map(file: &OwnedFd) -> nix::Result<Board> {
        Ok(Board {
            table: shared_memory::map(file)?,
        })
    }

    fn table(&self) -> &Table {
        // SAFETY: the mapping holds a whole table and is never unmapped.
        unsafe { self.table.as_ref() }
    }

    fn cell(&self, index: usize) -> &Cell {
        &self.table().cells[index % CELLS]
    }

    /// The master: clears a cell for a new worker, or after one is reaped.
    pub(crate) fn clear(&self, index: usize) {
        let high = (index % CELLS) + 1;
        self.table().high_water.fetch_max(high, Ordering::Relaxed);
        let cell = self.cell(index);
        cell.accepting.store(0, Ordering::Relaxed);
        cell.open.store(0, Ordering::Relaxed);
    }

    /// Connections the worker in cell `index` holds, for the metrics.
    pub(crate) fn open_in(&self, index: usize) -> u32 {
        self.cell(index).open.load(Ordering::Relaxed)
    }

    /// A worker: its place on the board.
    pub(crate) fn seat(self, index: usize) -> Seat {
        Seat {
            board: self,
            index: index % CELLS,
        }
    }
}

#[cfg(test)]
impl Board {
    /// A fresh board with the cells of two workers, and their seats.
    pub(crate) fn for_two() -> (Board, Seat, Seat) {
        let (board, _file) = Board::new().unwrap();
        board.clear(0);
        board.clear(1);
        (board, board.seat(0), board.seat(1))
    }
}

/// One worker's cell.
#[derive(Clone, Copy)]
pub(crate) struct Seat {
    board: Board,
    index: usize,
}

impl Seat {
    pub(crate) fn accepting(&self, yes: bool) {
        self.mine()
            .accepting
            .store(u32::from(yes), Ordering::Relaxed);
    }

    pub(crate) fn opened(&self) {
        let mine = self.mine();
        mine.open.fetch_add(1, Ordering::Relaxed);
        mine.accepted.fetch_add(1, Ordering::Relaxed);
    }

    /// The whole board, to read the other workers' cells.
    pub(crate) fn board(&self) -> Board {
        self.board
    }

    /// Connections this worker ever took (wrapping): a change between two looks means it
    /// accepted in between.
    pub(crate) fn accepted(&self) -> u32 {
        self.mine().accepted.load(Ordering::Relaxed)
    }

    /// Connections this worker holds.
    pub(crate) fn open(&self) -> u32 {
        self.mine().open.load(Ordering::Relaxed)
    }

    pub(crate) fn closed(&self) {
        // Never below zero, even if the master cleared the cell meanwhile.
        let _ = self
            .mine()
            .open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Whether this worker holds more than its share of the accepting workers' connections.
    pub(crate) fn overloaded(&self) -> bool {
        let (mut total, mut workers) = (0u64, 0u64);
        let high = self.board.table().high_water.load(Ordering::Relaxed);
        for cell in &self.board.table().cells[..high.min(CELLS)] {
            if cell.accepting.load(Ordering::Relaxed) == 1 {
                total += u64::from(cell.open.load(Ordering::Relaxed));
                workers += 1;
            }
        }
        let mine = u64::from(self.mine().open.load(Ordering::Relaxed));
        workers > 1 && mine * workers > total + u64::from(SLACK) * workers
    }

    /// How many connections the other workers have taken, wrapping: a change between two
    /// looks means a sibling accepted in between.
    pub(crate) fn siblings_accepted(&self) -> u32 {
        let high = self.board.table().high_water.load(Ordering::Relaxed);
        self.board.table().cells[..high.min(CELLS)]
            .iter()
            .enumerate()
            .filter(|(index, _)| *index != self.index)
            .fold(0u32, |sum, (_, cell)| {
                sum.wrapping_add(cell.accepted.load(Ordering::Relaxed))
            })
    }

    /// Whether another worker is taking connections (not full, not draining).
    pub(crate) fn siblings_accepting(&self) -> bool {
        let high = self.board.table().high_water.load(Ordering::Relaxed);
        self.board.table().cells[..high.min(CELLS)]
            .iter()
            .enumerate()
            .any(|(index, cell)| index != self.index && cell.accepting.load(Ordering::Relaxed) == 1)
    }

    fn mine(&self) -> &Cell {
        self.board.cell(self.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_the_one_other_builds_adopt() {
        // An upgrade hands the board to the new image, which refuses one of another size: a
        // change here fails every upgrade from, and rollback to, a build without it.
        assert_eq!(size_of::<Table>(), 8 + CELLS * 12);
    }

    #[test]
    fn a_worker_above_the_average_steps_back() {
        let (board, a, b) = Board::for_two();
        a.accepting(true);
        for _ in 0..5 {
            a.opened();
        }
        // Alone, a worker is never overloaded.
        assert!(!a.overloaded());
        b.accepting(true);
        assert!(a.overloaded(), "5 against 0");
        assert!(!b.overloaded());
        for _ in 0..2 {
            b.opened();
        }
        assert!(!a.overloaded(), "5 against 2 is within the slack");
        b.accepting(false);
        assert!(!a.overloaded(), "a draining worker does not count");
        board.clear(0);
        a.closed();
        assert!(!a.overloaded());
    }

    #[test]
    fn a_worker_sees_whether_a_sibling_accepts_but_not_itself() {
        let (_, a, b) = Board::for_two();
        a.accepting(true);
        assert!(!a.siblings_accepting(), "its own cell counted");
        b.accepting(true);
        assert!(a.siblings_accepting());
        b.accepting(false);
        assert!(
            !a.siblings_accepting(),
            "a full or draining sibling counted"
        );
    }

    #[test]
    fn a_worker_sees_its_siblings_accept_but_not_itself() {
        let (_, a, b) = Board::for_two();
        let before = a.siblings_accepted();
        a.opened();
        assert_eq!(
            a.siblings_accepted(),
            before,
            "its own accepts do not count"
        );
        b.opened();
        b.closed();
        assert_ne!(
            a.siblings_accepted(),
            before,
            "a sibling's accept counts after it closed"
        );
        assert_eq!(b.siblings_accepted(), 1);
    }
}
