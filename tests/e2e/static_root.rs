//! The static root cannot be escaped: `prefork serve --root DIR` serves regular files beneath
//! DIR and answers 404 for everything else — links leading out, hidden files, FIFOs — and
//! bad paths get a 4xx, never a 500 or a redirect to another host.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::{Duration, Instant};

use super::http::{self, Conn, Response};
use super::support::{Bin, Server};

/// What only the files outside the root contain: no response may carry it.
const SECRET: &str = "outside the root";
const FILE: &str = "0123456789abcdefghij";
/// A directory whose name a browser would read as a host after a leading `/`: a plain name on
/// Linux.
const BACKSLASHED: &str = "\\host";

/// A site and, beside it, a directory it must not reach:
///
/// ```text
/// outside/secret
/// root/file.txt  sub/index.html  \host/index.html  empty/  .env  .git/config  sub/.hidden
///      .well-known/x  fifo
/// root/inside -> file.txt    root/sub/up -> ../file.txt       (beneath the root)
/// root/etc -> /…/outside     root/up -> ../outside             (out of it)
/// ```
fn site() -> tempfile::TempDir {
    let site = tempfile::tempdir().unwrap();
    let (outside, root) = (site.path().join("outside"), site.path().join("root"));
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), SECRET).unwrap();
    for dir in ["sub", "empty", ".git", ".well-known", BACKSLASHED] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    fs::write(root.join("file.txt"), FILE).unwrap();
    fs::write(root.join("sub/index.html"), "<p>sub</p>").unwrap();
    fs::write(root.join(BACKSLASHED).join("index.html"), "<p>host</p>").unwrap();
    fs::write(root.join(".env"), SECRET).unwrap();
    fs::write(root.join(".git/config"), SECRET).unwrap();
    fs::write(root.join("sub/.hidden"), SECRET).unwrap();
    fs::write(root.join(".well-known/x"), "known").unwrap();
    nix::unistd::mkfifo(&root.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    symlink("file.txt", root.join("inside")).unwrap();
    symlink("../file.txt", root.join("sub/up")).unwrap();
    symlink(&outside, root.join("etc")).unwrap();
    symlink("../outside", root.join("up")).unwrap();
    site
}

fn serve(site: &tempfile::TempDir, flags: &[&str]) -> Server {
    let root = site.path().join("root");
    Server::builder(Bin::Prefork, 1)
        .args(&["--root", root.to_str().unwrap()])
        .args(flags)
        .start()
}

/// `path` as sent, on a connection of its own: a 400 from hyper closes the connection.
fn get(server: &Server, path: &str) -> Response {
    get_with(server, path, &[])
}

fn get_with(server: &Server, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut conn = Conn::connect(server.addr).unwrap();
    let response = conn
        .request("GET", path, headers)
        .unwrap_or_else(|e| panic!("GET {path}: {e:?}"));
    assert!(
        !response.text().contains(SECRET),
        "GET {path} answered what lies outside the root: {response:?}"
    );
    response
}

fn status(server: &Server, path: &str) -> u16 {
    get(server, path).status
}

/// Each of `paths` answers 200 with `body`.
fn assert_served(server: &Server, paths: &[&str], body: &str) {
    let mut conn = Conn::connect(server.addr).unwrap();
    for path in paths {
        let answer = conn.get(path).unwrap();
        assert_eq!(
            (answer.status, answer.text().as_str()),
            (200, body),
            "{path}"
        );
    }
}

#[test]
fn symlinks_out_of_the_root_are_not_followed() {
    let site = site();
    let server = serve(&site, &[]);
    assert_eq!(status(&server, "/etc/secret"), 404, "absolute link out");
    assert_eq!(status(&server, "/up/secret"), 404, "relative link out");
    assert_eq!(status(&server, "/etc/"), 404);
    // A relative link, and one whose ../ stays beneath the root.
    assert_served(&server, &["/inside", "/sub/up"], FILE);
}

#[test]
fn follow_symlinks_follows_them_anywhere() {
    let site = site();
    let server = serve(&site, &["--follow-symlinks"]);
    assert_served(&server, &["/etc/secret", "/up/secret"], SECRET);
    assert_eq!(status(&server, "/.env"), 404, "hidden files stay hidden");
}

#[test]
fn hidden_files_are_not_found_except_well_known() {
    let site = site();
    let server = serve(&site, &[]);
    for path in [
        "/.env",
        "/.git/config",
        "/.git/",
        "/.git",
        "/sub/.hidden",
        "/%2eenv",
        "/%2Egit/config",
        "/.well-known/../.env",
        "/.env?x=1",
    ] {
        assert_eq!(status(&server, path), 404, "{path}");
    }
    assert_served(&server, &["/.well-known/x"], "known");
}

#[test]
fn serve_hidden_serves_them() {
    let site = site();
    let server = serve(&site, &["--serve-hidden"]);
    assert_served(&server, &["/.env", "/.git/config", "/sub/.hidden"], SECRET);
}

#[test]
fn a_fifo_is_not_found_at_once_and_the_worker_serves_on() {
    let site = site();
    let server = serve(&site, &[]);
    let mut conn = Conn::connect(server.addr).unwrap();
    for method in ["GET", "HEAD"] {
        let started = Instant::now();
        let fifo = conn.request(method, "/fifo", &[]).unwrap();
        assert_eq!(fifo.status, 404, "{method}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{method} /fifo took {:?}",
            started.elapsed()
        );
    }
    // One worker: the one that was asked for the FIFO answers.
    assert_eq!(conn.get("/file.txt").unwrap().text(), FILE);
}

#[test]
fn traversal_attempts_stay_beneath_the_root() {
    let site = site();
    let server = serve(&site, &[]);
    for path in [
        "/../outside/secret",
        "/../../../../etc/passwd",
        "/sub/../../outside/secret",
        "/%2e%2e/outside/secret",
        "/%2E%2E/%2E%2E/etc/passwd",
        "/..%2foutside/secret",
        "/..%2Foutside%2Fsecret",
        "/sub/..%2f..%2foutside/secret",
        "//outside/secret",
        "///etc/passwd",
        "/%2F%2Fetc/passwd",
        "/..\\outside\\secret",
        "/%5C..%5Coutside%5Csecret",
        "/file.txt%00.html",
        "/%00",
        "/sub/%2e%2e%00/secret",
        "/%c0%ae%c0%ae/outside/secret",
        "/up%2fsecret",
        "/file.txt/",
        "/file.txt/x",
    ] {
        let answer = http::try_get(server.addr, path);
        let Ok(answer) = answer else {
            panic!("GET {path}: {answer:?}");
        };
        assert!(
            !answer.text().contains(SECRET),
            "GET {path} answered what lies outside the root"
        );
        assert!(
            [400, 404].contains(&answer.status),
            "GET {path}: {}",
            answer.status
        );
    }
    assert_eq!(
        get(&server, "/file.txt").text(),
        FILE,
        "the worker serves on"
    );
}

#[test]
fn a_segment_too_long_for_the_file_system_is_not_found() {
    let site = site();
    let server = serve(&site, &[]);
    let long = "a".repeat(300);
    for path in [
        format!("/{long}"),
        format!("/sub/{long}/x"),
        format!("/{long}/"),
        format!("/{}", ["b"; 2100].join("/")),
    ] {
        let answer = status(&server, &path);
        assert!(
            [404, 414].contains(&answer),
            "{} bytes: {answer}",
            path.len()
        );
    }
}

#[test]
fn a_directory_redirect_never_names_another_host() {
    let site = site();
    let server = serve(&site, &[]);
    for (path, location) in [
        ("/sub", "/sub/"),
        ("//sub", "/sub/"),
        ("///sub?x=1", "/sub/?x=1"),
        // A directory named `\host`: browsers read `/\host/` as `//host/`.
        ("/\\host", "/%5Chost/"),
        ("/%5Chost", "/%5Chost/"),
    ] {
        let redirect = get(&server, path);
        assert!(
            (300..400).contains(&redirect.status),
            "GET {path}: {}",
            redirect.status
        );
        assert_eq!(redirect.header("location"), Some(location), "GET {path}");
    }
    assert_eq!(get(&server, "//sub/").text(), "<p>sub</p>");
}

#[test]
fn a_directory_without_an_index_is_not_found() {
    let site = site();
    let server = serve(&site, &[]);
    // Not a redirect from /empty to a 404 at /empty/: one answer, as for any missing path.
    for path in ["/empty/", "/empty", "//empty"] {
        assert_eq!(status(&server, path), 404, "{path}");
    }
    let head = Conn::connect(server.addr)
        .unwrap()
        .request("HEAD", "/empty", &[])
        .unwrap();
    assert_eq!(head.status, 404);
    assert!(!Path::new(&site.path().join("root/empty/index.html")).exists());
}

#[test]
fn several_ranges_or_another_unit_get_the_whole_file() {
    let site = site();
    let server = serve(&site, &[]);
    for range in [
        "bytes=0-1,5-6",
        "bytes=0-0,0-0,0-0,0-0",
        "bytes=0-1, 9999-",
        "lines=0-1",
        "items=0-1,2-3",
        "0-1",
    ] {
        let whole = get_with(&server, "/file.txt", &[("Range", range)]);
        assert_eq!(whole.status, 200, "Range: {range}");
        assert_eq!(whole.text(), FILE, "Range: {range}");
        assert_eq!(whole.header("content-range"), None, "Range: {range}");
    }
    let one = get_with(&server, "/file.txt", &[("Range", "bytes=2-4")]);
    assert_eq!((one.status, one.text().as_str()), (206, "234"));
    let past = get_with(&server, "/file.txt", &[("Range", "bytes=100-")]);
    assert_eq!(past.status, 416, "one range past the end is unsatisfiable");
}
