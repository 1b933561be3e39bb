//! Storms of signals and deaths: the master stays up, the worker count converges, no zombie and
//! no descriptor is left behind, and only requests inside a killed worker can fail.

use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::load::Load;
use super::support::procfs::{alive, wait_reaped, zombies_of};
use super::support::{Bin, PATIENCE, Server};

fn open_fds(pid: Pid) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Waits until every reload begun has ended, one way or the other. (A HUP still pending may
/// begin another; what follows waits on states that such a reload also reaches.)
fn reloads_settled(server: &Server) {
    server.wait_until("every reload ended", || {
        let begun = server.count_log("checking the binary on disk");
        let ended = server.count_log("reload complete") + server.count_log("reload failed");
        (begun > 0 && begun == ended).then_some(())
    });
}

#[test]
fn two_hundred_hups_in_five_seconds_converge_and_lose_nothing() {
    let server = Server::start(Bin::Demo, 2);
    let master = server.pid();
    let load = Load::keepalive(server.addr, 16, "/");
    load.wait_each_served();
    // One reload first, so that the descriptors counted are those of a master that has
    // executed itself once (the first image holds none of the handover's), once the old
    // workers, and their channels, are gone.
    let old = server.workers();
    server.signal(Signal::SIGHUP);
    server.wait_log("reload complete", PATIENCE);
    assert!(wait_reaped(&old, PATIENCE));
    let fds = open_fds(master);
    let start = Instant::now();
    for _ in 0..200 {
        server.signal(Signal::SIGHUP);
        // The storm's pace: 200 signals spread over 5 s.
        thread::sleep(Duration::from_millis(25));
    }
    assert!(start.elapsed() < Duration::from_secs(10));
    reloads_settled(&server);
    server.wait_workers(2, &[]);
    assert!(alive(master));
    assert_eq!(zombies_of(master), [], "zombies left");
    let listing = || {
        let links = std::fs::read_dir(format!("/proc/{master}/fd")).unwrap();
        let links = links.map(|e| std::fs::read_link(e.unwrap().path()).unwrap_or_default());
        links.map(|l| l.display().to_string()).collect::<Vec<_>>()
    };
    let first = listing();
    server.wait_until(
        format_args!("the master's descriptors back to {fds}, from {first:?}"),
        || (open_fds(master) == fds).then_some(()),
    );
    load.wait_served(load.served() + 100);
    load.finish().assert_none_refused_or_lost("200 HUPs");
}

#[test]
fn fifty_ttin_then_fifty_ttou_come_back_to_the_start() {
    let server = Server::start(Bin::Demo, 2);
    let master = server.pid();
    let load = Load::keepalive(server.addr, 16, "/");
    load.wait_each_served();
    for _ in 0..50 {
        server.signal(Signal::SIGTTIN);
    }
    // Signals of one kind coalesce while pending: wait for them to be seen before the TTOUs,
    // or the count would not rise at all.
    server.wait_log("SIGTTIN:", PATIENCE);
    for _ in 0..50 {
        server.signal(Signal::SIGTTOU);
    }
    // A marker the master logs once every TTOU sent before it is handled: the signalfd hands
    // out pending signals lowest number first, and SIGWINCH (28) comes after SIGTTOU (22).
    // Without it the log could be read between two TTOUs.
    server.signal(Signal::SIGWINCH);
    server.wait_log("ignoring SIGWINCH", PATIENCE);
    // However many of each arrived, the last logged target is what the master converges to.
    let wanted = server
        .log()
        .lines()
        .rev()
        .find_map(|l| {
            l.split("SIGTT")
                .nth(1)?
                .split(": ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .expect("a logged target");
    server.wait_workers(wanted, &[]);
    assert_eq!(zombies_of(master), [], "zombies left");
    load.wait_served(load.served() + 100);
    load.finish().assert_none_refused_or_lost("TTIN/TTOU storm");
}

#[test]
fn term_once_the_new_image_took_over_stops_within_the_graceful_timeout() {
    let mut server = Server::builder(Bin::Demo, 2)
        .args(&["--graceful-timeout", "2s"])
        .start();
    let load = Load::keepalive(server.addr, 16, "/");
    load.wait_each_served();
    server.signal(Signal::SIGHUP);
    server.wait_log("took over", PATIENCE);
    server.signal(Signal::SIGTERM);
    load.signalled();
    let (status, took) = server.expect_exit(PATIENCE);
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(4), "took {took:?}");
    load.finish().assert_nothing_lost("TERM during a reload");
}

#[test]
fn a_worker_killed_every_200_ms_for_5_s_only_loses_what_it_held() {
    const CLIENTS: usize = 16;
    let server = Server::start(Bin::Demo, 2);
    let master = server.pid();
    let load = Load::keepalive(server.addr, CLIENTS, "/");
    load.wait_each_served();
    let mut kills = 0;
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        if let Some(victim) = server.workers().into_iter().nth(kills % 2)
            && kill(victim, Signal::SIGKILL).is_ok()
        {
            kills += 1;
        }
        // The storm's pace.
        thread::sleep(Duration::from_millis(200));
    }
    // A slot whose workers die young waits longer each time (from 100 ms, doubling), so there
    // is not always a worker to kill.
    assert!(kills >= 8, "only {kills} kills");
    assert!(alive(master));
    // Slots that died young back off (at most 10 s), then converge.
    server.wait_workers(2, &[]);
    assert_eq!(zombies_of(master), [], "zombies left");
    load.wait_served(load.served() + 100);
    let tally = load.finish();
    eprintln!("tally: kill storm: {kills} kills, {tally:?}");
    assert!(tally.ok > 0);
    // A killed worker can take with it at most one request per client it held.
    assert!(
        tally.lost <= (kills * CLIENTS) as u64,
        "{} lost for {kills} kills: {:#?}",
        tally.lost,
        tally.losses
    );
}
