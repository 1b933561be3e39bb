//! Small files answered from memory: each worker keeps, for the paths asked for most recently,
//! the whole response ServeDir gave — its headers and, for a file of at most [`FILE_MAX`]
//! bytes, its body — and answers the next plain `GET` or `HEAD` of the same path with them,
//! without opening the file, reading its attributes, or allocating ServeDir's read buffer.
//! nginx's `open_file_cache` and h2o's file cache save the same work.
//!
//! An entry is served only while what its path resolves to is the file it was filled from: the
//! path is looked up again, as a request's would be, at most [`REVALIDATE_AFTER`] after the last
//! look, and the entry dropped if the file's inode, size, modification or change time differ.
//! So a file replaced, rewritten or removed on disk is served new, or not at all, at most
//! [`REVALIDATE_AFTER`] later; until then, its old bytes whole, with its old `ETag`. A path
//! that stopped being servable (a link now leading out of the root, a file made unreadable)
//! is refused by that look as a request would be.
//!
//! Only what ServeDir would answer the same for every client is kept: a `200` to a `GET` with
//! no `Range` and no conditional header, for a path of plain characters (no `%`, no segment
//! starting with `.`, so that the path is the file's name beneath the root, and hidden files
//! never have an entry). A request with `Accept-Encoding` is answered from an entry only when
//! the file has neither a `.br` nor a `.gz` variant beside it (checked at each look). Anything
//! else goes to ServeDir, as before.
//!
//! For a regular file larger than [`FILE_MAX`], an entry keeps only its attributes, looked up
//! again on the same terms: its requests, ranges and conditional ones included, are answered
//! by ServeDir, told what the path names so that it opens the file without looking the path up
//! first. Such an entry is made by a plain `GET` or `HEAD`, or by a range request.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, header};
use tower_http::services::fs::Metadata;

use super::cache_first::{CacheFirst, Stat};

/// How long an entry is served before its path is looked up again: 1 s. It bounds how long a
/// file replaced or removed on disk may still be served as it was. nginx's
/// `open_file_cache_valid` is 60 s; h2o keeps open files for one turn of its event loop, and
/// opens them again in the next.
pub const REVALIDATE_AFTER: Duration = Duration::from_secs(1);
/// The largest file whose body is kept: 32 KiB. Larger files are read as they are sent.
pub const FILE_MAX: u64 = 32 * 1024;
/// The most entries a worker keeps: 1024.
const ENTRIES_MAX: usize = 1024;
/// The most body bytes a worker keeps, all entries together: 4 MiB.
const BYTES_MAX: usize = 4 * 1024 * 1024;

/// A worker's entries, shared by its connections.
#[derive(Debug, Default)]
pub struct SmallFiles {
    entries: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    by_path: HashMap<String, Entry>,
    /// The bodies' bytes, all entries together.
    bytes: usize,
}

#[derive(Debug)]
struct Entry {
    /// The headers and body ServeDir answered with; `None` for a file too large to keep, of
    /// which only its attributes are kept, so that its requests need not look its path up
    /// again before ServeDir does (see [`Hit::Large`]).
    answer: Option<(HeaderMap, Bytes)>,
    version: Version,
    /// When `version` was last found to be what the path names.
    checked: Instant,
}

impl Entry {
    fn bytes(&self) -> usize {
        self.answer.as_ref().map_or(0, |(_, body)| body.len())
    }
}

/// What the cache holds for a request.
#[derive(Debug)]
pub enum Hit {
    /// The whole answer, headers and body.
    Answer(HeaderMap, Bytes),
    /// The path names a regular file larger than [`FILE_MAX`], with these attributes: ServeDir
    /// answers, told them for its look at the path ([`CacheFirst::for_request`]).
    Large(Stat),
}

/// What a key's path names now, as far as the cache goes (see [`Version::of`]).
#[derive(Debug)]
pub enum Found {
    /// A small regular file, settled: its answer may be kept.
    Small(Version),
    /// A regular file larger than [`FILE_MAX`].
    Large(Stat),
}

/// A request this cache may answer: its path, which names a file beneath the root. Borrowed
/// from the request, so that a hit allocates nothing; owned ([`Key::into_owned`]) to outlive it.
#[derive(Debug)]
pub struct Key<'a> {
    path: Cow<'a, str>,
    /// Whether the request has `Accept-Encoding`: then it may only be answered from an entry
    /// of a file without precompressed variants.
    pub negotiates: bool,
    /// Whether the request has a `Range` or a conditional header: ServeDir answers it, and an
    /// entry serves it only with a large file's attributes ([`Hit::Large`]).
    pub conditional: bool,
}

impl<'a> Key<'a> {
    /// The key of `req`, or `None` when ServeDir must answer it (see the module's doc).
    pub fn of<B>(req: &'a Request<B>) -> Option<Key<'a>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return None;
        }
        let path = req.uri().path();
        if !path.starts_with('/') || !plain(path) {
            return None;
        }
        // One pass over the names: cheaper than a lookup (a hash) of each of the seven.
        let (mut conditional, mut negotiates) = (false, false);
        for name in req.headers().keys() {
            if name == header::ACCEPT_ENCODING {
                negotiates = true;
            } else if CONDITIONAL.contains(name) {
                conditional = true;
            }
        }
        Some(Key {
            path: Cow::Borrowed(path),
            negotiates,
            conditional,
        })
    }

    /// The key, its path copied out of the request.
    pub fn into_owned(self) -> Key<'static> {
        Key {
            path: Cow::Owned(self.path.into_owned()),
            ..self
        }
    }

    /// The file the path names, relative to the root.
    pub fn rel(&self) -> PathBuf {
        let mut rel = PathBuf::from(&self.path[1..]);
        // ServeDir serves a path ending in `/` by its directory's index.
        if self.path.ends_with('/') {
            rel.push(super::cache_first::INDEX);
        }
        rel
    }

    /// The precompressed variants ServeDir would look for: `NAME.br` and `NAME.gz`.
    pub fn variants(&self) -> [PathBuf; 2] {
        let rel = self.rel();
        [".br", ".gz"].map(|suffix| {
            let mut variant = rel.as_os_str().to_os_string();
            variant.push(suffix);
            variant.into()
        })
    }
}

/// The fields that make a request conditional, a range included (see [`Key::conditional`]).
const CONDITIONAL: [header::HeaderName; 6] = [
    header::RANGE,
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
];

/// Whether a path is only letters, digits and `/-_.~`, with no segment starting with a dot:
/// one that cannot be read two ways, and names no hidden file.
fn plain(path: &str) -> bool {
    let mut segment_start = false;
    path.bytes().all(|b| {
        let allowed = b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~');
        let hidden = segment_start && b == b'.';
        segment_start = b == b'/';
        allowed && !hidden
    })
}

/// Which file a path names: its attributes, and whether it has precompressed variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Version {
    stat: Stat,
    pub variants: Variants,
}

/// Whether `NAME.br` or `NAME.gz` exists beside a file, as far as the kernel's caches tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variants {
    /// Neither exists: `Accept-Encoding` changes nothing.
    Absent,
    /// At least one exists (or cannot be looked up).
    Present,
    /// Not known until looked up ([`CacheFirst::look_up`]): neither is in the dentry cache.
    Unknown,
}

impl Version {
    /// The small regular file the key's path names beneath the root at `now`, or `None` when
    /// it is not one (see [`Version::found`]).
    pub fn of(files: &CacheFirst, key: &Key, now: Now) -> Option<Version> {
        match Version::found(files, key, now)? {
            Found::Small(version) => Some(version),
            Found::Large(_) => None,
        }
    }

    /// The regular file the key's path names beneath the root at `now`, or `None` when it is
    /// not one, is small but changed too recently to be kept, or the kernel would have to wait
    /// on storage to tell.
    pub fn found(files: &CacheFirst, key: &Key, now: Now) -> Option<Found> {
        let stat = files.current(&key.rel())?.ok()?;
        if !stat.is_file() {
            return None;
        }
        if stat.len() > FILE_MAX {
            return Some(Found::Large(stat));
        }
        if !now.settled(stat.changed()) {
            return None;
        }
        let variant = |variant: &PathBuf| match files.current(variant) {
            Some(Err(e)) if e.kind() == io::ErrorKind::NotFound => Variants::Absent,
            Some(_) => Variants::Present,
            None => Variants::Unknown,
        };
        let [br, gz] = key.variants().map(|path| variant(&path));
        let variants = if br == Variants::Present || gz == Variants::Present {
            Variants::Present
        } else if br == Variants::Unknown || gz == Variants::Unknown {
            Variants::Unknown
        } else {
            Variants::Absent
        };
        Some(Found::Small(Version { stat, variants }))
    }

    /// A large file's version: only its attributes count; its variants are not looked up.
    fn large(stat: Stat) -> Version {
        Version {
            stat,
            variants: Variants::Unknown,
        }
    }

    /// The size of the file, in bytes.
    pub fn len(&self) -> u64 {
        self.stat.len()
    }
}

/// How long ago a file must have last changed to be kept: 2 s. A file system keeps times to a
/// granule (a clock tick, or up to 2 s on some), and a file written again within the same
/// granule as it was read would show the same times: its change would go unseen.
pub const SETTLED_AFTER: Duration = Duration::from_secs(2);

/// When a request is answered, by both clocks: the monotonic one ages entries, the wall clock
/// is what file times are read against.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    pub instant: Instant,
    pub wall: SystemTime,
}

impl Now {
    pub fn new() -> Now {
        Now {
            instant: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// Whether a file last changed at `changed` did so [`SETTLED_AFTER`] ago or more; a change
    /// time in the future (the clock set back) is not.
    fn settled(self, changed: SystemTime) -> bool {
        self.wall
            .duration_since(changed)
            .is_ok_and(|age| age >= SETTLED_AFTER)
    }
}

impl SmallFiles {
    /// What an entry holds for `key`, if the path still names its file (looked up again once
    /// the entry is [`REVALIDATE_AFTER`] old at `now`, the time of the request). A stale entry
    /// is dropped; one of a large file that changed but is still large is renewed.
    pub fn get(&self, key: &Key, files: &CacheFirst, now: Now) -> Option<Hit> {
        let mut entries = self.lock();
        let entry = entries.by_path.get_mut(key.path.as_ref())?;
        if key.conditional && entry.answer.is_some() {
            return None;
        }
        if now.instant.saturating_duration_since(entry.checked) >= REVALIDATE_AFTER {
            let version = match (&entry.answer, Version::found(files, key, now)) {
                (Some(_), Some(Found::Small(version))) if version == entry.version => version,
                (None, Some(Found::Large(stat))) => Version::large(stat),
                _ => {
                    entries.remove(&key.path);
                    return None;
                }
            };
            entry.version = version;
            entry.checked = now.instant;
        }
        let Some((headers, body)) = &entry.answer else {
            return Some(Hit::Large(entry.version.stat));
        };
        if key.negotiates && entry.version.variants != Variants::Absent {
            return None;
        }
        Some(Hit::Answer(headers.clone(), body.clone()))
    }

    /// Keeps the attributes of the large regular file `key` names, found at `now`.
    pub fn insert_large(&self, key: &Key, stat: Stat, now: Now) {
        let mut entries = self.lock();
        entries.make_room(0);
        let entry = Entry {
            answer: None,
            version: Version::large(stat),
            checked: now.instant,
        };
        if let Some(old) = entries.by_path.insert(key.path.to_string(), entry) {
            entries.bytes -= old.bytes();
        }
    }

    /// Keeps ServeDir's answer to `key` (`headers`, the whole `body`), read while the path named
    /// `version`, to which the caller found it unchanged afterwards. Older entries make room
    /// when the bounds would be passed.
    pub fn insert(
        &self,
        key: Key,
        version: Version,
        mut headers: HeaderMap,
        body: Bytes,
        now: Now,
    ) {
        if body.len() as u64 != version.len() || body.len() > BYTES_MAX {
            return;
        }
        // Room for the `date` field hyper adds over HTTP/2. A clone keeps the size of the
        // map's table, so each answer's insert then fits; with six fields the table was full
        // and every answer rebuilt it (about 1 500 instructions per request).
        headers.reserve(1);
        let mut entries = self.lock();
        entries.remove(&key.path);
        entries.make_room(body.len());
        entries.bytes += body.len();
        let entry = Entry {
            answer: Some((headers, body)),
            version,
            checked: now.instant,
        };
        entries.by_path.insert(key.path.into_owned(), entry);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // Entries are updated by plain assignments that cannot panic halfway: after a panic
        // elsewhere while the lock was held, they are still consistent.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Entries {
    fn remove(&mut self, path: &str) {
        if let Some(entry) = self.by_path.remove(path) {
            self.bytes -= entry.bytes();
        }
    }

    /// Drops the oldest entries until one more, with a body of `bytes`, fits the bounds.
    fn make_room(&mut self, bytes: usize) {
        while self.by_path.len() >= ENTRIES_MAX || self.bytes + bytes > BYTES_MAX {
            if !self.remove_oldest() {
                break;
            }
        }
    }

    /// Drops the entry checked longest ago, stale ones first; false when there is none.
    /// Finding it walks every entry, at most [`ENTRIES_MAX`], once per miss of a full cache:
    /// far less than the miss costs.
    fn remove_oldest(&mut self) -> bool {
        let oldest = self
            .by_path
            .iter()
            .min_by_key(|(_, entry)| entry.checked)
            .map(|(path, _)| path.clone());
        oldest.is_some_and(|path| {
            self.remove(&path);
            true
        })
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;

    use super::*;

    fn key(path: &str) -> Key<'static> {
        Key::of(&Request::get(path).body(()).unwrap())
            .expect("a key")
            .into_owned()
    }

    /// A time at which every file a test writes has settled: an hour from now.
    fn later() -> Now {
        Now {
            instant: Instant::now(),
            wall: SystemTime::now() + Duration::from_secs(3600),
        }
    }

    /// `now`, `by` later on the monotonic clock.
    fn after(now: Now, by: Duration) -> Now {
        Now {
            instant: now.instant + by,
            ..now
        }
    }

    /// Keeps `path` of `files` as read now, with a header that tells the entry apart.
    fn fill(cache: &SmallFiles, files: &CacheFirst, root: &Path, path: &str, now: Now) {
        let key = key(path);
        key.variants()
            .iter()
            .for_each(|variant| files.look_up(variant));
        let version = Version::of(files, &key, now).expect("a small settled file");
        let body = Bytes::from(fs::read(root.join(key.rel())).unwrap());
        let mut headers = HeaderMap::new();
        headers.insert(header::ETAG, path.parse().unwrap());
        cache.insert(key, version, headers, body, now);
    }

    /// The attributes of the large file `key` names.
    fn large(files: &CacheFirst, key: &Key, now: Now) -> Stat {
        match Version::found(files, key, now) {
            Some(Found::Large(stat)) => stat,
            other => panic!("not a large file: {other:?}"),
        }
    }

    fn body(cache: &SmallFiles, files: &CacheFirst, path: &str, now: Now) -> Option<Bytes> {
        match cache.get(&key(path), files, now)? {
            Hit::Answer(_, body) => Some(body),
            Hit::Large(_) => None,
        }
    }

    fn site() -> (tempfile::TempDir, CacheFirst) {
        let dir = tempfile::tempdir().unwrap();
        let files = CacheFirst::new(dir.path(), false, false).unwrap();
        (dir, files)
    }

    #[test]
    fn a_replaced_file_is_served_new_once_revalidated() {
        let (dir, files) = site();
        let path = dir.path().join("f");
        fs::write(&path, b"old").unwrap();
        let (cache, now) = (SmallFiles::default(), later());
        fill(&cache, &files, dir.path(), "/f", now);
        assert_eq!(
            body(&cache, &files, "/f", now).as_deref(),
            Some(&b"old"[..])
        );
        // Replaced by a rename, with the same size: another inode.
        fs::write(dir.path().join("new"), b"new").unwrap();
        fs::rename(dir.path().join("new"), &path).unwrap();
        let soon = after(now, REVALIDATE_AFTER / 2);
        assert_eq!(
            body(&cache, &files, "/f", soon).as_deref(),
            Some(&b"old"[..]),
            "served whole, as it was, until the next look"
        );
        let due = after(now, REVALIDATE_AFTER);
        assert_eq!(body(&cache, &files, "/f", due), None);
        fill(&cache, &files, dir.path(), "/f", due);
        assert_eq!(
            body(&cache, &files, "/f", due).as_deref(),
            Some(&b"new"[..])
        );
        // Rewritten in place to another size: the same inode.
        fs::write(&path, b"newer").unwrap();
        let due = after(due, REVALIDATE_AFTER);
        assert_eq!(body(&cache, &files, "/f", due), None);
    }

    #[test]
    fn an_unchanged_file_stays_and_a_removed_one_goes() {
        let (dir, files) = site();
        fs::write(dir.path().join("f"), b"bytes").unwrap();
        let (cache, now) = (SmallFiles::default(), later());
        fill(&cache, &files, dir.path(), "/f", now);
        for looks in 1..4 {
            let due = after(now, REVALIDATE_AFTER * looks);
            assert!(body(&cache, &files, "/f", due).is_some(), "look {looks}");
        }
        fs::remove_file(dir.path().join("f")).unwrap();
        let due = after(now, REVALIDATE_AFTER * 4);
        assert_eq!(body(&cache, &files, "/f", due), None);
        assert!(cache.lock().by_path.is_empty());
        assert_eq!(cache.lock().bytes, 0);
    }

    #[test]
    fn a_large_file_is_kept_as_its_attributes_until_it_is_no_longer_large() {
        let (dir, files) = site();
        let path = dir.path().join("big");
        fs::write(&path, vec![1; FILE_MAX as usize + 1]).unwrap();
        let (cache, now) = (SmallFiles::default(), later());
        let key = key("/big");
        let stat = large(&files, &key, now);
        cache.insert_large(&key, stat, now);
        let kept = |at: Now| match cache.get(&key, &files, at) {
            Some(Hit::Large(stat)) => Some(stat.len()),
            Some(Hit::Answer(..)) => panic!("a large file answered from memory"),
            None => None,
        };
        assert_eq!(kept(now), Some(FILE_MAX + 1));
        assert_eq!(cache.lock().bytes, 0, "no bytes kept");
        // Rewritten larger: still large, with its new attributes once looked up again.
        fs::write(&path, vec![2; FILE_MAX as usize + 2]).unwrap();
        assert_eq!(kept(after(now, REVALIDATE_AFTER / 2)), Some(FILE_MAX + 1));
        assert_eq!(kept(after(now, REVALIDATE_AFTER)), Some(FILE_MAX + 2));
        // Small now: the entry goes, and the file is kept as a small one on its next answer.
        fs::write(&path, b"small").unwrap();
        assert_eq!(kept(after(now, REVALIDATE_AFTER * 2)), None);
        assert!(cache.lock().by_path.is_empty());
        cache.insert_large(&key, stat, now);
        fs::remove_file(&path).unwrap();
        assert_eq!(kept(after(now, REVALIDATE_AFTER)), None, "removed");
    }

    #[test]
    fn entries_and_bytes_stay_bounded_and_the_newest_are_kept() {
        let (dir, files) = site();
        let (cache, now) = (SmallFiles::default(), later());
        let whole = vec![b'x'; FILE_MAX as usize];
        let big = BYTES_MAX / whole.len() + 8;
        for i in 0..big {
            fs::write(dir.path().join(format!("big{i}")), &whole).unwrap();
            fill(
                &cache,
                &files,
                dir.path(),
                &format!("/big{i}"),
                after(now, Duration::from_millis(i as u64)),
            );
            assert!(cache.lock().bytes <= BYTES_MAX);
        }
        let last = after(now, Duration::from_millis(big as u64));
        assert!(body(&cache, &files, &format!("/big{}", big - 1), last).is_some());
        assert_eq!(
            body(&cache, &files, "/big0", last),
            None,
            "the oldest made room"
        );
        for i in 0..ENTRIES_MAX + 8 {
            fs::write(dir.path().join(format!("small{i}")), b"s").unwrap();
            let at = after(last, Duration::from_millis(i as u64 + 1));
            fill(&cache, &files, dir.path(), &format!("/small{i}"), at);
            assert!(cache.lock().by_path.len() <= ENTRIES_MAX);
        }
        let entries = cache.lock();
        assert_eq!(entries.by_path.len(), ENTRIES_MAX);
        assert_eq!(
            entries.bytes,
            entries.by_path.values().map(Entry::bytes).sum::<usize>()
        );
        assert!(
            entries
                .by_path
                .contains_key(&format!("/small{}", ENTRIES_MAX + 7))
        );
    }

    #[test]
    fn only_small_settled_regular_files_are_kept() {
        let (dir, files) = site();
        fs::write(dir.path().join("f"), b"f").unwrap();
        fs::write(dir.path().join("large"), vec![0; FILE_MAX as usize + 1]).unwrap();
        fs::create_dir(dir.path().join("d")).unwrap();
        fs::write(dir.path().join("d/index.html"), b"index").unwrap();
        let now = later();
        assert!(Version::of(&files, &key("/f"), now).is_some());
        assert!(Version::of(&files, &key("/d/"), now).is_some(), "the index");
        let just_written = Now::new();
        assert!(Version::of(&files, &key("/f"), just_written).is_none());
        for path in ["/large", "/d", "/missing"] {
            assert!(Version::of(&files, &key(path), now).is_none(), "{path}");
        }
    }

    #[test]
    fn a_file_with_a_precompressed_variant_is_not_served_to_a_negotiating_client() {
        let (dir, files) = site();
        fs::write(dir.path().join("f"), b"plain").unwrap();
        fs::write(dir.path().join("g"), b"plain").unwrap();
        fs::write(dir.path().join("g.gz"), b"zipped").unwrap();
        let (cache, now) = (SmallFiles::default(), later());
        fill(&cache, &files, dir.path(), "/f", now);
        fill(&cache, &files, dir.path(), "/g", now);
        let negotiating = |path: &str| {
            let req = Request::get(path)
                .header(header::ACCEPT_ENCODING, "gzip")
                .body(())
                .unwrap();
            cache.get(&Key::of(&req).unwrap(), &files, now).is_some()
        };
        assert!(negotiating("/f"), "no variant: the same answer for all");
        assert!(!negotiating("/g"));
        assert!(body(&cache, &files, "/g", now).is_some());
        // A variant added later is seen at the next look.
        fs::write(dir.path().join("f.br"), b"brotli").unwrap();
        let due = after(now, REVALIDATE_AFTER);
        assert_eq!(body(&cache, &files, "/f", due), None);
    }

    #[test]
    fn only_plain_requests_for_plain_paths_have_a_key() {
        let keyed = |method: &str, path: &str, header: Option<(&str, &str)>| {
            let mut req = Request::builder().method(method).uri(path);
            if let Some((name, value)) = header {
                req = req.header(name, value);
            }
            Key::of(&req.body(()).unwrap()).map(|key| key.rel())
        };
        assert_eq!(keyed("GET", "/a/b.css", None), Some("a/b.css".into()));
        assert_eq!(
            keyed("HEAD", "/a-b_c~1.js?v=2", None),
            Some("a-b_c~1.js".into())
        );
        assert_eq!(keyed("GET", "/", None), Some("index.html".into()));
        assert_eq!(keyed("GET", "/d/", None), Some("d/index.html".into()));
        assert_eq!(keyed("GET", "/a./b.", None), Some("a./b.".into()));
        for path in [
            "/%61",
            "/.env",
            "/a/.b",
            "/a/../b",
            "/.well-known/x",
            "/a+b",
            "/a:b",
        ] {
            assert_eq!(keyed("GET", path, None), None, "{path}");
        }
        assert_eq!(keyed("POST", "/f", None), None);
        let conditional = |header: Option<(&str, &str)>| {
            let mut req = Request::get("/f");
            if let Some((name, value)) = header {
                req = req.header(name, value);
            }
            Key::of(&req.body(()).unwrap()).map(|key| key.conditional)
        };
        assert_eq!(conditional(None), Some(false));
        for name in [
            "range",
            "if-none-match",
            "if-modified-since",
            "if-match",
            "if-unmodified-since",
            "if-range",
        ] {
            assert_eq!(conditional(Some((name, "x"))), Some(true), "{name}");
        }
        assert_eq!(conditional(Some(("accept-encoding", "gzip"))), Some(false));
        let negotiates = |name: &str| {
            let req = Request::get("/f")
                .header("x-other", "1")
                .header(name, "gzip");
            Key::of(&req.body(()).unwrap()).map(|key| key.negotiates)
        };
        assert_eq!(negotiates("accept-encoding"), Some(true));
        assert_eq!(negotiates("accept-language"), Some(false));
    }

    #[test]
    fn a_conditional_request_is_served_a_large_files_attributes_but_no_kept_answer() {
        let (dir, files) = site();
        fs::write(dir.path().join("small"), b"small").unwrap();
        fs::write(dir.path().join("big"), vec![1; FILE_MAX as usize + 1]).unwrap();
        let (cache, now) = (SmallFiles::default(), later());
        fill(&cache, &files, dir.path(), "/small", now);
        let big = key("/big");
        cache.insert_large(&big, large(&files, &big, now), now);
        let ranged = |path: &str| {
            let req = Request::get(path).header("range", "bytes=0-1");
            Key::of(&req.body(()).unwrap()).unwrap().into_owned()
        };
        assert!(cache.get(&ranged("/small"), &files, now).is_none());
        assert!(matches!(
            cache.get(&ranged("/big"), &files, now),
            Some(Hit::Large(_))
        ));
    }
}
