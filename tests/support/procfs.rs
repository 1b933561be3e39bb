//! Reading `/proc`: processes and their parents, groups and states, what a thread is blocked
//! in, CPU time, memory, sockets, and the kernel's accept queues.

use std::net::SocketAddr;
use std::time::Duration;

use nix::unistd::Pid;

/// The fields of `/proc/PID/stat` the tests and the benchmark look at.
struct Stat {
    /// `R`, `S`, `D`, `Z`, ...
    state: char,
    ppid: i32,
    pgrp: i32,
    /// utime + stime, in clock ticks.
    cpu_ticks: u64,
}

fn stat(pid: Pid) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; the fields start after the last ')'.
    let fields: Vec<&str> = text[text.rfind(')')? + 2..].split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        cpu_ticks: fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?,
    })
}

fn processes() -> impl Iterator<Item = (Pid, Stat)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .map(Pid::from_raw)
        .filter_map(|pid| Some((pid, stat(pid)?)))
}

/// Processes whose parent is `parent` and whose state `wanted` accepts, sorted.
fn children_where(parent: Pid, wanted: impl Fn(char) -> bool) -> Vec<Pid> {
    let mut out: Vec<Pid> = processes()
        .filter(|(_, s)| s.ppid == parent.as_raw() && wanted(s.state))
        .map(|(pid, _)| pid)
        .collect();
    out.sort();
    out
}

/// The live children of `parent` (a zombie is dead, only not yet reaped).
pub fn children_of(parent: Pid) -> Vec<Pid> {
    children_where(parent, |state| state != 'Z')
}

/// The children of `parent` that died and that it has not reaped.
pub fn zombies_of(parent: Pid) -> Vec<Pid> {
    children_where(parent, |state| state == 'Z')
}

/// Whether any live process is in process group `pgid`.
pub fn process_group_alive(pgid: Pid) -> bool {
    processes().any(|(_, s)| s.pgrp == pgid.as_raw() && s.state != 'Z')
}

/// Whether `pid` is alive (a zombie counts as dead).
pub fn alive(pid: Pid) -> bool {
    stat(pid).is_some_and(|s| s.state != 'Z')
}

/// Waits until none of `pids` exists, not even as a zombie: its parent has reaped it (and, for
/// a worker, the master has closed its channel). False if some still exist after `timeout`.
pub fn wait_reaped(pids: &[Pid], timeout: Duration) -> bool {
    let all_gone = || pids.iter().all(|p| stat(*p).is_none()).then_some(());
    super::poll(timeout, Duration::from_millis(10), all_gone).is_some()
}

/// Waits until none of `pids` is alive; false if some still are after `timeout`.
pub fn wait_dead(pids: &[Pid], timeout: Duration) -> bool {
    let none_alive = || pids.iter().all(|p| !alive(*p)).then_some(());
    super::poll(timeout, Duration::from_millis(10), none_alive).is_some()
}

/// Whether a thread of `pid` is blocked in the kernel function `symbol` (its wchan): how a
/// test sees a handler that holds its thread, e.g. in `nanosleep`.
pub fn blocked_in(pid: Pid, symbol: &str) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|task| {
            std::fs::read_to_string(task.path().join("wchan")).is_ok_and(|w| w.contains(symbol))
        })
}

/// How many threads of `pid` are tokio runtime threads, by their default name: `tokio-rt-worker`,
/// or in older tokio the 15 bytes the kernel keeps of `tokio-runtime-worker`.
pub fn runtime_threads(pid: Pid) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|comm| ["tokio-rt-worker", "tokio-runtime-w"].contains(&comm.trim_end()))
        })
        .count()
}

/// How many connections wait in the accept queue of the socket listening on `addr` (IPv4),
/// from `/proc/net/tcp`, where a listener's receive queue is its accept queue; `None` if
/// nothing listens there.
pub fn accept_queue(addr: SocketAddr) -> Option<usize> {
    const LISTEN: &str = "0A";
    let SocketAddr::V4(v4) = addr else {
        panic!("accept_queue reads /proc/net/tcp, for IPv4 only: {addr}");
    };
    // The address as the kernel prints it: the IPv4 address in host byte order, then the port.
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(v4.ip().octets()),
        v4.port()
    );
    std::fs::read_to_string("/proc/net/tcp")
        .ok()?
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 4 && f[1] == local && f[3] == LISTEN)
        .and_then(|f| {
            let (_, rx) = f[4].split_once(':')?;
            usize::from_str_radix(rx, 16).ok()
        })
}

/// CPU time (user + system) `pid` has used so far, every thread included. Linux reports it in
/// USER_HZ ticks, which are 1/100 s on every architecture it runs on.
pub fn cpu_time(pid: Pid) -> Duration {
    stat(pid).map_or(Duration::ZERO, |s| Duration::from_millis(s.cpu_ticks * 10))
}

/// Busy time of all the machine's CPUs so far (user, nice, system, irq, softirq and steal of
/// `/proc/stat`, in the same ticks). Unlike [`cpu_time`] it counts the kernel's interrupt work,
/// which no process is charged with: on loopback, much of a TCP transfer's work.
pub fn machine_busy() -> Duration {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: u64 = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .map_or(0, |l| {
            let fields: Vec<u64> = l
                .split_whitespace()
                .filter_map(|f| f.parse().ok())
                .collect();
            // idle (3) and iowait (4) are not busy; guest time is already in user.
            [0, 1, 2, 5, 6, 7]
                .iter()
                .filter_map(|&i| fields.get(i))
                .sum()
        });
    Duration::from_millis(ticks * 10)
}

/// CPU time this process (the load generator) has used so far.
pub fn own_cpu_time() -> Duration {
    cpu_time(nix::unistd::getpid())
}

/// How many read system calls (`read`, `recvfrom`, `sendfile` and the like) `pid` has made so
/// far, every thread included: `syscr` of `/proc/PID/io`.
pub fn read_calls(pid: Pid) -> Option<u64> {
    io_count(pid, "syscr:")
}

/// How many write system calls (`write`, `writev`, `sendto` and the like) `pid` has made so
/// far, every thread included: `syscw` of `/proc/PID/io`.
pub fn write_calls(pid: Pid) -> Option<u64> {
    io_count(pid, "syscw:")
}

/// The count after `key` in `/proc/PID/io`.
fn io_count(pid: Pid, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(key))?
        .trim()
        .parse()
        .ok()
}

/// How many sockets `pid` has open (listeners and control channels included).
pub fn sockets(pid: Pid) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| {
        dir.flatten()
            .filter(|e| {
                std::fs::read_link(e.path())
                    .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
            })
            .count()
    })
}

/// One line of `/proc/PID/status`, e.g. `Uid:`, whole.
pub fn status_line(pid: Pid, key: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(key))
        .map(str::to_string)
}

/// Memory of one process, in bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mem {
    /// Resident set size: every page mapped and in memory, shared ones counted in full.
    pub rss: u64,
    /// The anonymous part of the RSS (heap, stacks).
    pub rss_anon: u64,
    /// The file-backed part of the RSS (the executable's and the libraries' pages).
    pub rss_file: u64,
    /// Proportional set size: shared pages divided among the processes that share them.
    pub pss: u64,
    /// Unique set size: pages only this process has (private clean + private dirty).
    pub uss: u64,
}

impl Mem {
    pub fn max(self, other: Mem) -> Mem {
        Mem {
            rss: self.rss.max(other.rss),
            rss_anon: self.rss_anon.max(other.rss_anon),
            rss_file: self.rss_file.max(other.rss_file),
            pss: self.pss.max(other.pss),
            uss: self.uss.max(other.uss),
        }
    }
}

/// RSS from /proc/PID/status, PSS and USS from /proc/PID/smaps_rollup.
pub fn mem(pid: Pid) -> Option<Mem> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |text: &str, name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |kib| kib * 1024)
    };
    Some(Mem {
        rss: field(&status, "VmRSS:"),
        rss_anon: field(&status, "RssAnon:"),
        rss_file: field(&status, "RssFile:"),
        pss: field(&rollup, "Pss:"),
        uss: field(&rollup, "Private_Clean:") + field(&rollup, "Private_Dirty:"),
    })
}
