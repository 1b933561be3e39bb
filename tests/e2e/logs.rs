//! Logs: the access log's lines, JSON output, and reopening files on SIGUSR1 for logrotate.

use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;

use super::http::Conn;
use super::support::{Bin, PATIENCE, Server, wait_for};

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits until `path` has at least `n` lines.
fn wait_lines(path: &Path, n: usize) -> Vec<String> {
    wait_for(format!("{n} lines in {}", path.display()), || {
        Some(read_lines(path)).filter(|lines| lines.len() >= n)
    })
}

#[test]
fn the_access_log_has_one_combined_line_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let access = dir.path().join("access.log");
    let server = Server::builder(Bin::Demo, 2)
        .args(&["--access-logfile", access.to_str().unwrap()])
        .start();
    let mut conn = Conn::connect(server.addr).unwrap();
    conn.request(
        "GET",
        "/sleep?ms=20",
        &[
            ("User-Agent", "probe \"1\""),
            ("Referer", "http://example/"),
        ],
    )
    .unwrap();
    conn.get("/missing").unwrap();
    conn.request("HEAD", "/", &[]).unwrap();
    let lines = wait_lines(&access, 3);
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let first = &lines[0];
    assert!(first.starts_with("127.0.0.1 - - ["), "{first}");
    assert!(
        first.contains(
            "] \"GET /sleep?ms=20 HTTP/1.1\" 200 12 \"http://example/\" \"probe \\x221\\x22\" "
        ),
        "{first}"
    );
    let seconds: f64 = first.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(
        (0.015..5.0).contains(&seconds),
        "duration {seconds} in {first}"
    );
    assert!(
        lines[1].contains("\"GET /missing HTTP/1.1\" 404 "),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].contains("\"HEAD / HTTP/1.1\" 200 "),
        "{}",
        lines[2]
    );
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let access = dir.path().join("access.log");
    let errors = dir.path().join("error.log");
    let server = Server::builder(Bin::Demo, 1)
        .args(&[
            "--log-format",
            "json",
            "--access-logfile",
            access.to_str().unwrap(),
        ])
        .log_file(&errors)
        .start();
    Conn::connect(server.addr).unwrap().get("/pid").unwrap();
    let line = wait_lines(&access, 1).remove(0);
    let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(entry["method"], "GET");
    assert_eq!(entry["uri"], "/pid");
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["remote"], "127.0.0.1");
    assert!(entry["duration"].as_f64().unwrap() >= 0.0);
    for line in read_lines(&errors) {
        let event: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(event["fields"]["message"].is_string(), "{line}");
    }
}

/// A demo server with `args` and both logs in files in `dir`, after it logged a request and
/// the files were renamed to `*.log.1`, as logrotate does. Returns the server and the paths of
/// the access log and the error log.
fn logged_then_rotated(dir: &Path, args: &[&str]) -> (Server, PathBuf, PathBuf) {
    let access = dir.join("access.log");
    let errors = dir.join("error.log");
    let server = Server::builder(Bin::Demo, 2)
        .args(args)
        .args(&["--access-logfile", access.to_str().unwrap()])
        .log_file(&errors)
        .start();
    Conn::connect(server.addr).unwrap().get("/").unwrap();
    wait_lines(&access, 1);
    std::fs::rename(&access, dir.join("access.log.1")).unwrap();
    std::fs::rename(&errors, dir.join("error.log.1")).unwrap();
    (server, access, errors)
}

/// logrotate renames the files, then sends USR1: the master and every worker reopen theirs,
/// and new lines go to the new files.
#[test]
fn usr1_reopens_the_log_files_in_master_and_workers() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, access, errors) = logged_then_rotated(dir.path(), &[]);
    server.signal(Signal::SIGUSR1);
    // Read from the rotated file itself: the master writes this line just before it reopens,
    // and the follower of the error log may already have moved on to the new file.
    wait_for("the master's reopen in the rotated error log", || {
        let old = read_lines(&dir.path().join("error.log.1"));
        old.iter()
            .any(|l| l.contains("reopening log files"))
            .then_some(())
    });
    // The workers reopen on the master's message, which they log nothing about; a request
    // after it must land anew.
    server.wait_until("an access line in the new file", || {
        Conn::connect(server.addr).unwrap().get("/").unwrap();
        (!read_lines(&access).is_empty()).then_some(())
    });
    let rotated_access = read_lines(&dir.path().join("access.log.1"));
    // Both workers write to the new error log when they drain.
    server.signal(Signal::SIGTERM);
    let (status, _) = server.expect_exit(PATIENCE);
    assert!(status.success());
    let fresh = read_lines(&errors);
    let drained = fresh.iter().filter(|l| l.contains("drained in")).count();
    assert_eq!(
        drained, 2,
        "worker lines missing from the new error log:\n{fresh:#?}"
    );
    assert!(
        fresh.iter().any(|l| l.contains("master (pid")),
        "{fresh:#?}"
    );
    let old = read_lines(&dir.path().join("error.log.1"));
    assert!(!old.iter().any(|l| l.contains("drained in")), "{old:#?}");
    assert_eq!(
        read_lines(&dir.path().join("access.log.1")),
        rotated_access,
        "lines were still written to the rotated access log"
    );
}

/// Log files in a directory only root may write, with `--user nobody`: at USR1 the master,
/// which kept root, reopens them; a worker cannot, says so once per file, and keeps writing
/// to the file it had.
#[test]
fn usr1_reopens_root_only_logs_in_the_master_and_workers_keep_theirs() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert!(
        nix::unistd::geteuid().is_root(),
        "dropping privileges needs root: run the suite as root (CI does)"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let rotated = dir.path().join("error.log.1");
    let (mut server, access, errors) =
        logged_then_rotated(dir.path(), &["--user", "nobody", "--group", "nogroup"]);
    let failures = |file: &str| {
        read_lines(&rotated)
            .iter()
            .filter(|l| l.contains("cannot reopen") && l.contains(file))
            .count()
    };
    server.signal(Signal::SIGUSR1);
    wait_for(
        "each worker's failed reopens in the rotated error log",
        || (failures("error.log") == 2 && failures("access.log") == 2).then_some(()),
    );
    assert_eq!(std::fs::metadata(&errors).unwrap().uid(), 0);
    assert_eq!(std::fs::metadata(&access).unwrap().uid(), 0);
    // A second rotation fails the same way and is not reported again. The workers read the
    // reopen request before the stop that follows it on the same channel.
    server.signal(Signal::SIGUSR1);
    wait_for("the master's second reopen", || {
        let reopens = read_lines(&errors)
            .iter()
            .filter(|l| l.contains("reopening log files"))
            .count();
        (reopens == 1).then_some(())
    });
    server.signal(Signal::SIGTERM);
    let (status, _) = server.expect_exit(PATIENCE);
    assert!(status.success());
    let old = read_lines(&rotated);
    assert_eq!(failures("error.log"), 2, "{old:#?}");
    assert_eq!(failures("access.log"), 2, "{old:#?}");
    let drained = old.iter().filter(|l| l.contains("drained in")).count();
    assert_eq!(drained, 2, "the workers left the file they had:\n{old:#?}");
    let fresh = read_lines(&errors);
    assert!(
        fresh.iter().any(|l| l.contains("master (pid")),
        "the master did not write to the reopened file:\n{fresh:#?}"
    );
}

#[test]
fn an_unwritable_log_file_is_bad_input() {
    let (status, stderr) = super::support::run(
        Bin::Prefork,
        &["serve", "--access-logfile", "/nonexistent/dir/access.log"],
        &[],
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr
            .contains("cannot open access log /nonexistent/dir/access.log (from --access-logfile)"),
        "{stderr}"
    );
}
