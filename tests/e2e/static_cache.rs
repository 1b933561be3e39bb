//! Small files are answered from the worker's memory, without the file being opened again, and
//! a file replaced or removed on disk is served new, or not at all, within the bound the docs
//! state (`prefork::app::REVALIDATE_AFTER`), never as a mix of old and new.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use prefork::app::{REVALIDATE_AFTER, SETTLED_AFTER};

use super::http::{Conn, Response};
use super::support::{Bin, Server};

/// How late past the bound the new file may be seen on a loaded machine: a request and the
/// worker's look at the file, each delayed by the scheduler.
const SLACK: Duration = Duration::from_secs(4);

fn serve(root: &Path) -> Server {
    Server::builder(Bin::Prefork, 1)
        .args(&["--root", root.to_str().unwrap()])
        .start()
}

/// Waits until the file at `path` changed [`SETTLED_AFTER`] ago: only then may a worker keep
/// it (a change within the file system's time granule could go unseen).
fn wait_settled(path: &Path) {
    let meta = fs::metadata(path).unwrap();
    let changed = SystemTime::UNIX_EPOCH
        + Duration::new(meta.ctime().try_into().unwrap(), meta.ctime_nsec() as u32);
    let settled = changed + SETTLED_AFTER + Duration::from_millis(50);
    if let Ok(left) = settled.duration_since(SystemTime::now()) {
        std::thread::sleep(left);
    }
}

/// Watches `path` for being opened (not by `O_PATH`, which is no open for reading).
fn watch_opens(path: &Path) -> Inotify {
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).unwrap();
    inotify.add_watch(path, AddWatchFlags::IN_OPEN).unwrap();
    inotify
}

/// How many times the watched file was opened since the last call.
fn opens(inotify: &Inotify) -> usize {
    let mut n = 0;
    loop {
        match inotify.read_events() {
            Ok(events) => n += events.len(),
            Err(Errno::EAGAIN) => return n,
            Err(e) => panic!("inotify: {e}"),
        }
    }
}

fn get(conn: &mut Conn, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    conn.request(method, path, headers)
        .unwrap_or_else(|e| panic!("{method} {path}: {e:?}"))
}

/// The headers a cached answer must repeat exactly.
fn validators(response: &Response) -> [Option<String>; 5] {
    [
        "etag",
        "last-modified",
        "content-type",
        "content-length",
        "vary",
    ]
    .map(|name| response.header(name).map(str::to_string))
}

#[test]
fn a_small_file_asked_for_again_is_answered_without_opening_it() {
    let root = tempfile::tempdir().unwrap();
    let page = root.path().join("page.css");
    fs::write(&page, "body { color: red }").unwrap();
    wait_settled(&page);
    let server = serve(root.path());
    let inotify = watch_opens(&page);
    let mut conn = Conn::connect(server.addr).unwrap();

    let first = get(&mut conn, "GET", "/page.css", &[]);
    assert_eq!(
        (first.status, first.text().as_str()),
        (200, "body { color: red }")
    );
    assert!(opens(&inotify) >= 1, "the first GET reads the file");
    for (method, headers) in [
        ("GET", &[][..]),
        ("GET", &[("Accept-Encoding", "gzip, br")][..]),
        ("HEAD", &[][..]),
        ("GET", &[][..]),
    ] {
        let again = get(&mut conn, method, "/page.css", headers);
        assert_eq!(again.status, 200, "{method} {headers:?}");
        assert_eq!(
            validators(&again),
            validators(&first),
            "{method} {headers:?}"
        );
        let body = if method == "HEAD" {
            &[][..]
        } else {
            &first.body[..]
        };
        assert_eq!(again.body, body, "{method} {headers:?}");
    }
    assert_eq!(opens(&inotify), 0, "answered from memory");

    // What the cache does not answer still goes to the file, and is still right.
    let etag = first.header("etag").unwrap().to_string();
    let not_modified = get(&mut conn, "GET", "/page.css", &[("If-None-Match", &etag)]);
    assert_eq!(not_modified.status, 304);
    let range = get(&mut conn, "GET", "/page.css", &[("Range", "bytes=0-3")]);
    assert_eq!((range.status, range.text().as_str()), (206, "body"));
    assert!(opens(&inotify) >= 1, "a range is read from the file");
}

#[test]
fn a_replaced_or_removed_file_is_served_new_within_the_bound() {
    let root = tempfile::tempdir().unwrap();
    let page = root.path().join("page.txt");
    fs::write(&page, "old").unwrap();
    wait_settled(&page);
    let server = serve(root.path());
    let mut conn = Conn::connect(server.addr).unwrap();
    let cached = |conn: &mut Conn, page: &Path| {
        let first = get(conn, "GET", "/page.txt", &[]);
        let inotify = watch_opens(page);
        let again = get(conn, "GET", "/page.txt", &[]);
        assert_eq!(opens(&inotify), 0, "answered from memory");
        assert_eq!(
            (&again.body, validators(&again)),
            (&first.body, validators(&first))
        );
        first
    };
    let old = cached(&mut conn, &page);
    assert_eq!(old.text(), "old");

    // Replaced whole, as deploy tools do: written beside it and renamed over it.
    fs::write(root.path().join("page.new"), "new, and longer").unwrap();
    fs::rename(root.path().join("page.new"), &page).unwrap();
    let replaced = Instant::now();
    let deadline = replaced + REVALIDATE_AFTER + SLACK;
    loop {
        let answer = get(&mut conn, "GET", "/page.txt", &[]);
        assert_eq!(answer.status, 200);
        if answer.body == old.body {
            assert_eq!(
                validators(&answer),
                validators(&old),
                "old bytes, old headers"
            );
        } else {
            assert_eq!(answer.text(), "new, and longer");
            assert_ne!(answer.header("etag"), old.header("etag"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the old file still served {:?} after it was replaced",
            replaced.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..3 {
        assert_eq!(
            get(&mut conn, "GET", "/page.txt", &[]).text(),
            "new, and longer"
        );
    }

    wait_settled(&page);
    assert_eq!(cached(&mut conn, &page).text(), "new, and longer");
    fs::remove_file(&page).unwrap();
    let removed = Instant::now();
    while get(&mut conn, "GET", "/page.txt", &[]).status != 404 {
        assert!(
            removed.elapsed() < REVALIDATE_AFTER + SLACK,
            "a removed file still served {:?} after",
            removed.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(get(&mut conn, "HEAD", "/page.txt", &[]).status, 404);
}

#[test]
fn a_precompressed_variant_is_still_sent_to_clients_that_accept_it() {
    let root = tempfile::tempdir().unwrap();
    fs::write(root.path().join("app.js"), "plain").unwrap();
    fs::write(root.path().join("app.js.gz"), "as if gzipped").unwrap();
    wait_settled(&root.path().join("app.js.gz"));
    let server = serve(root.path());
    let mut conn = Conn::connect(server.addr).unwrap();
    // Both orders, and again once the plain answer could have been kept.
    for _ in 0..3 {
        let plain = get(&mut conn, "GET", "/app.js", &[]);
        assert_eq!(
            (plain.text().as_str(), plain.header("content-encoding")),
            ("plain", None)
        );
        let zipped = get(&mut conn, "GET", "/app.js", &[("Accept-Encoding", "gzip")]);
        assert_eq!(
            (zipped.text().as_str(), zipped.header("content-encoding")),
            ("as if gzipped", Some("gzip"))
        );
    }
}
