//! The load-and-signal tool: real HTTP/1.1 clients hammering a server while a test signals it,
//! counting every request as served, refused, or lost.
//!
//! A request is **lost** when the server had it and failed it: a reset, an empty reply or a
//! truncated body on a connection that was opened before the signal (the server accepted it,
//! or it sat in the accept queue, which a drain must serve) or that had already been answered
//! on. A connection opened after the signal that is refused or reset before any answer was
//! never accepted: that is **refused**, the expected fate of new clients of a stopping server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Instant;

use super::http::{Conn, Failure};
use super::support::wait_for;

/// What a run of clients saw.
#[derive(Debug, Default)]
pub struct Tally {
    pub ok: u64,
    pub refused: u64,
    pub lost: u64,
    /// One line per lost request, for the failure message.
    pub losses: Vec<String>,
}

impl Tally {
    pub fn add(&mut self, other: Tally) {
        self.ok += other.ok;
        self.refused += other.refused;
        self.lost += other.lost;
        self.losses.extend(other.losses);
    }

    fn lose(&mut self, what: String) {
        self.lost += 1;
        self.losses.push(what);
    }

    /// Fails the test if anything was lost; also requires that something was served. Prints
    /// the counts (`cargo test -- --nocapture` shows them).
    pub fn assert_nothing_lost(&self, context: &str) {
        eprintln!(
            "tally: {context}: {} served, {} refused after the signal, {} lost",
            self.ok, self.refused, self.lost
        );
        assert!(self.ok > 0, "{context}: no request was served: {self:?}");
        assert_eq!(self.lost, 0, "{context}: lost requests: {:#?}", self.losses);
    }

    /// Like [`Tally::assert_nothing_lost`], for a load no signal was meant to stop: no
    /// connection may be refused either.
    pub fn assert_none_refused_or_lost(&self, context: &str) {
        self.assert_nothing_lost(context);
        assert_eq!(self.refused, 0, "{context}: connections refused: {self:?}");
    }
}

/// What the clients have been answered so far, for a test to wait on while they run.
#[derive(Default)]
struct Progress {
    /// Requests answered with 200.
    served: AtomicU64,
    /// Clients answered at least once.
    clients_served: AtomicUsize,
}

/// Clients running in threads until the server refuses them after the signal.
pub struct Load {
    stop: Arc<AtomicBool>,
    signalled: Arc<OnceLock<Instant>>,
    progress: Arc<Progress>,
    clients: Vec<JoinHandle<Tally>>,
}

impl Load {
    /// `n` clients, each sending `GET path` on a keep-alive connection as fast as it can and
    /// reconnecting when the server closes it.
    pub fn keepalive(addr: SocketAddr, n: usize, path: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let signalled = Arc::new(OnceLock::new());
        let progress = Arc::new(Progress::default());
        let clients = (0..n)
            .map(|_| {
                let stop = Arc::clone(&stop);
                let signalled = Arc::clone(&signalled);
                let progress = Arc::clone(&progress);
                let path = path.to_string();
                std::thread::spawn(move || client(addr, &path, &stop, &signalled, &progress))
            })
            .collect();
        Load {
            stop,
            signalled,
            progress,
            clients,
        }
    }

    /// Requests answered with 200 so far.
    pub fn served(&self) -> u64 {
        self.progress.served.load(Ordering::Relaxed)
    }

    /// Waits until `n` requests in all have been answered with 200.
    pub fn wait_served(&self, n: u64) {
        wait_for(format!("{n} requests served"), || {
            (self.served() >= n).then_some(())
        });
    }

    /// Waits until every client has been answered at least once: the load is flowing on every
    /// connection, each client holding one its server has answered on.
    pub fn wait_each_served(&self) {
        let n = self.clients.len();
        wait_for(format!("each of {n} clients served"), || {
            (self.progress.clients_served.load(Ordering::Relaxed) == n).then_some(())
        });
    }

    /// Records that the signal was sent now. Call it right after sending: connections opened
    /// before this moment must be served.
    pub fn signalled(&self) {
        let _ = self.signalled.set(Instant::now());
    }

    /// Stops the clients (each finishes its current request, bounded by the client timeouts)
    /// and adds up what they saw.
    pub fn finish(mut self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Tally::default();
        for client in std::mem::take(&mut self.clients) {
            total.add(client.join().expect("a load client panicked"));
        }
        total
    }
}

impl Drop for Load {
    /// A test that fails before `finish` leaves no client retrying a stopped server for the
    /// rest of the suite.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct Open {
    conn: Conn,
    opened: Instant,
    answered: u32,
}

fn client(
    addr: SocketAddr,
    path: &str,
    stop: &AtomicBool,
    signalled: &OnceLock<Instant>,
    progress: &Progress,
) -> Tally {
    let mut tally = Tally::default();
    let mut open: Option<Open> = None;
    while !stop.load(Ordering::Relaxed) {
        let mut current = match open.take() {
            Some(current) => current,
            None => {
                let opened = Instant::now();
                match Conn::connect(addr) {
                    Ok(conn) => Open {
                        conn,
                        opened,
                        answered: 0,
                    },
                    // A reset here is a handshake the kernel completed into the queue of a
                    // listener that then closed: never accepted either.
                    Err(Failure::Refused | Failure::Reset) if signalled.get().is_some() => {
                        tally.refused += 1;
                        break;
                    }
                    Err(Failure::Refused) => {
                        tally.refused += 1;
                        // Pacing: a server not listening yet is asked again, not hammered.
                        std::thread::sleep(std::time::Duration::from_millis(1));
                        continue;
                    }
                    Err(f) => {
                        tally.lose(format!("connect failed: {f:?}"));
                        continue;
                    }
                }
            }
        };
        match current.conn.get(path) {
            Ok(response) if response.status == 200 => {
                if tally.ok == 0 {
                    progress.clients_served.fetch_add(1, Ordering::Relaxed);
                }
                progress.served.fetch_add(1, Ordering::Relaxed);
                tally.ok += 1;
                current.answered += 1;
                if !response.closes() {
                    open = Some(current);
                }
            }
            Ok(response) => tally.lose(format!("status {}", response.status)),
            Err(failure) => {
                let after_signal = signalled.get().is_some_and(|at| current.opened > *at);
                let never_accepted = current.answered == 0
                    && after_signal
                    && matches!(failure, Failure::Empty | Failure::Reset);
                if never_accepted {
                    tally.refused += 1;
                } else {
                    tally.lose(format!(
                        "{failure:?} after {} answers on a connection opened {} the signal",
                        current.answered,
                        if after_signal { "after" } else { "before" }
                    ));
                }
            }
        }
    }
    tally
}
