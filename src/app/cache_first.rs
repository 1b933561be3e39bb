//! A file-system [`Backend`] for `ServeDir` that answers from the kernel's caches on the
//! calling thread, and goes to tokio's blocking pool only when storage would be waited for.
//!
//! tokio::fs runs every call on the blocking pool. For a 1 KiB file ServeDir makes five
//! (metadata, open, attributes, two reads), and each hand-off to a pool thread and back costs
//! more than serving the request. Here each call is first made in a form the kernel refuses
//! rather than wait: path lookup with `RESOLVE_CACHED` (from the dentry cache only, Linux
//! 5.12), attributes with `AT_STATX_DONT_SYNC` (no network round trip), reads with
//! `RWF_NOWAIT` (from the page cache only). When the kernel refuses, or cannot make the call
//! at all (an older kernel, a seccomp filter, a file system without `RWF_NOWAIT`), the same
//! call runs on the blocking pool, as tokio::fs would have. So a worker never stalls its
//! other connections on a cold disk or a slow network file system.
//!
//! Every path is also resolved beneath the served directory, opened once (`openat2` from its
//! descriptor, with `RESOLVE_BENEATH` unless symbolic links may lead anywhere), and only
//! regular files are opened to be served: what the request's path cannot reach by the
//! directory tree, or should not be sent, is not found.

use std::ffi::CStr;
use std::fs;
use std::future::{Future, Ready, ready};
use std::io::{self, SeekFrom};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use tokio::io::{AsyncRead, AsyncSeek, ReadBuf};
use tokio::task::JoinHandle;
use tower_http::services::fs::{Backend, File, Metadata};

/// The backend: the served directory, opened once, from which every path is resolved. Cloned
/// into every connection; clones share the directory.
#[derive(Clone, Debug)]
pub struct CacheFirst {
    root: Arc<Root>,
    /// Where the files this backend opens are noted, for a backend made for one request.
    opened: Option<Arc<Opened>>,
    /// What one path was known to be when a backend was made for one request: its
    /// attributes answer that path's metadata without a lookup.
    known: Option<Arc<Known>>,
}

/// A path beneath the root and the attributes it was found with, recently (see
/// `super::small_files`, which keeps them for at most its revalidation interval).
pub(super) type Known = (PathBuf, Stat);

/// The file a request's ServeDir opened to answer it (the last one, should it open several),
/// and that file's length when opened: the very file whose attributes made the response's
/// headers, so that its bytes can be sent by the kernel instead (see `super::sent_file`).
pub(super) type Opened = Mutex<Option<(Arc<fs::File>, u64)>>;

/// The served directory and what may be served from it.
#[derive(Debug)]
struct Root {
    /// Opened with `O_PATH`: a handle to resolve from, never read.
    dir: OwnedFd,
    /// How a path is resolved beneath `dir` (see [`CacheFirst::new`]).
    resolve: ResolveFlag,
    serve_hidden: bool,
}

impl CacheFirst {
    /// Serves what lies beneath the directory `root`, which is opened now: a path given later
    /// is resolved from this directory, never from the working directory, so renaming or
    /// replacing `root` does not change what is served until the next start.
    ///
    /// Unless `follow_symlinks`, a symbolic link is followed only while it stays beneath
    /// `root` (`RESOLVE_BENEATH`): a link to anything outside, or to an absolute path (even one
    /// that leads back inside), is not found. With it, links are followed anywhere, as nginx
    /// does by default. Magic links (`/proc/PID/fd/N`, `/proc/PID/root`) are never followed.
    /// Unless `serve_hidden`, a path with a segment that starts with `.` is not found, except
    /// under `.well-known/` (RFC 8615).
    ///
    /// The backend expects paths as [`ServeDir`](tower_http::services::ServeDir) builds them
    /// from the base `/` ([`BASE`]): the request's path, decoded, without `..`.
    pub fn new(root: &Path, follow_symlinks: bool, serve_hidden: bool) -> io::Result<Self> {
        let dir = nix::fcntl::open(
            root,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        let resolve = if follow_symlinks {
            ResolveFlag::RESOLVE_NO_MAGICLINKS
        } else {
            ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS
        };
        let root = Root {
            dir,
            resolve,
            serve_hidden,
        };
        // Without openat2 (Linux 5.6), or with a seccomp filter refusing it, no path could be
        // kept beneath the root: say so once, at start, rather than answer every request 500.
        root.lookup(Path::new("."), metadata_how()).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot resolve paths beneath it (openat2, Linux 5.6): {e}"),
            )
        })?;
        Ok(CacheFirst {
            root: Arc::new(root),
            opened: None,
            known: None,
        })
    }
}

impl CacheFirst {
    /// This backend for one request: it notes in the `Opened` returned the file it opens, and
    /// answers the metadata of the `known` path, if any, with the attributes given.
    pub(super) fn for_request(&self, known: Option<Known>) -> (CacheFirst, Arc<Opened>) {
        let opened = Arc::new(Opened::default());
        let backend = CacheFirst {
            root: Arc::clone(&self.root),
            opened: Some(Arc::clone(&opened)),
            known: known.map(Arc::new),
        };
        (backend, opened)
    }

    /// The attributes of what `rel` names beneath the root now, resolved as a request's path
    /// is; `None` when the kernel would have to wait on storage to tell (see the module's doc).
    pub(super) fn current(&self, rel: &Path) -> Option<io::Result<Stat>> {
        let fd = self.root.lookup_cached(rel, metadata_how())?;
        Some(fd.and_then(|fd| stat_cached(fd.as_fd())))
    }

    /// Looks `rel` up beneath the root, waiting on storage if need be (for the blocking pool),
    /// so that the kernel's dentry cache then holds the answer, found or not, for
    /// [`CacheFirst::current`]. What the lookup found is not needed, only that it was made.
    pub(super) fn look_up(&self, rel: &Path) {
        let _ = self.root.lookup(rel, metadata_how());
    }
}

/// The base the backend's `ServeDir` is built on: every path it is handed starts with it, and
/// the rest is taken from the root directory.
pub const BASE: &str = "/";

impl Backend for CacheFirst {
    type File = CachedFile;
    type Metadata = Stat;
    type OpenFuture = Answer<CachedFile>;
    type MetadataFuture = Answer<Stat>;

    fn open(&self, path: PathBuf) -> Self::OpenFuture {
        let rel = match self.root.relative(&path) {
            Ok(rel) => rel,
            Err(e) => return Answer::Now(ready(Err(e))),
        };
        match self.root.lookup_cached(rel, open_how()) {
            Some(fd) => Answer::Now(ready(fd.and_then(|fd| {
                let stat = stat_cached(fd.as_fd())?;
                CachedFile::regular(fd.into(), stat, self.opened.as_deref())
            }))),
            None => open_on_pool(
                Arc::clone(&self.root),
                rel.to_path_buf(),
                self.opened.clone(),
            ),
        }
    }

    /// The attributes of a regular file, or of a directory that has an [`INDEX`]: ServeDir
    /// serves a directory through its index only, and one without it is not found, the same
    /// with or without the trailing slash (rather than a redirect to a 404).
    fn metadata(&self, path: PathBuf) -> Self::MetadataFuture {
        let rel = match self.root.relative(&path) {
            Ok(rel) => rel,
            Err(e) => return Answer::Now(ready(Err(e))),
        };
        if let Some((_, stat)) = self.known.as_deref().filter(|(known, _)| known == rel) {
            return Answer::Now(ready(stat.servable()));
        }
        let servable_cached = |rel: &Path| {
            let fd = self.root.lookup_cached(rel, metadata_how())?;
            Some(fd.and_then(|fd| stat_cached(fd.as_fd())?.servable()))
        };
        let answer = match servable_cached(rel) {
            Some(Ok(dir)) if dir.kind == Kind::Dir => {
                servable_cached(&rel.join(INDEX)).map(|index| dir.with_index(index?))
            }
            answer => answer,
        };
        match answer {
            Some(answer) => Answer::Now(ready(answer)),
            None => metadata_on_pool(Arc::clone(&self.root), rel.to_path_buf()),
        }
    }
}

/// The file ServeDir serves for a directory (`append_index_html_on_directories`).
pub(super) const INDEX: &str = "index.html";

/// How a file is opened to be served. O_NONBLOCK: opening a FIFO someone left under the root
/// must not stall a thread until a writer comes (it is then refused as not a regular file);
/// it does nothing to regular files. O_NOCTTY: a terminal device never becomes the worker's.
fn open_how() -> OpenHow {
    OpenHow::new().flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK | OFlag::O_NOCTTY)
}

/// How a path is looked up for its attributes: no file is opened.
fn metadata_how() -> OpenHow {
    OpenHow::new().flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
}

fn open_on_pool(root: Arc<Root>, rel: PathBuf, opened: Option<Arc<Opened>>) -> Answer<CachedFile> {
    Answer::Pool(tokio::task::spawn_blocking(move || {
        let file = fs::File::from(root.lookup(&rel, open_how())?);
        let stat = Stat::from(file.metadata()?);
        CachedFile::regular(file, stat, opened.as_deref())
    }))
}

fn metadata_on_pool(root: Arc<Root>, rel: PathBuf) -> Answer<Stat> {
    Answer::Pool(tokio::task::spawn_blocking(move || {
        let stat = |rel: &Path| {
            let file = fs::File::from(root.lookup(rel, metadata_how())?);
            Stat::from(file.metadata()?).servable()
        };
        let found = stat(&rel)?;
        if found.kind == Kind::Dir {
            return found.with_index(stat(&rel.join(INDEX))?);
        }
        Ok(found)
    }))
}

impl Root {
    /// The part of `path` to resolve from the root directory, or not found when it may not be
    /// served.
    fn relative<'a>(&self, path: &'a Path) -> io::Result<&'a Path> {
        // ServeDir builds every path on BASE; another path is not one of the root's.
        let rel = path.strip_prefix(BASE).map_err(|_| not_found())?;
        // A NUL (from %00) would end the path early for the kernel; nix refuses it with
        // EINVAL, which would read as "no openat2" below.
        if rel.as_os_str().as_bytes().contains(&0) {
            return Err(not_found());
        }
        if !self.serve_hidden {
            let mut segments = rel.components().map(|c| c.as_os_str().as_bytes());
            let first_shown = segments
                .next()
                .is_none_or(|first| first == b".well-known" || !first.starts_with(b"."));
            if !first_shown || segments.any(|segment| segment.starts_with(b".")) {
                return Err(not_found());
            }
        }
        Ok(rel)
    }

    /// Opens `rel` beneath the root, waiting on storage if need be: for the blocking pool.
    fn lookup(&self, rel: &Path, how: OpenHow) -> io::Result<OwnedFd> {
        nix::fcntl::openat2(&self.dir, dot_if_empty(rel), how.resolve(self.resolve))
            .map_err(refused)
    }

    /// Opens `rel` beneath the root if the kernel can resolve it from its dentry cache alone;
    /// `None` when it would have to read a directory from storage, or cannot tell (see the
    /// module's doc).
    fn lookup_cached(&self, rel: &Path, how: OpenHow) -> Option<io::Result<OwnedFd>> {
        let cached = ResolveFlag::from_bits_retain(libc::RESOLVE_CACHED);
        let how = how.resolve(self.resolve | cached);
        match nix::fcntl::openat2(&self.dir, dot_if_empty(rel), how) {
            Ok(fd) => Some(Ok(fd)),
            // EAGAIN: not cached. ENOSYS, EINVAL: no openat2 or no RESOLVE_CACHED. EPERM: a
            // seccomp filter refusing it. The pool then makes the call without
            // RESOLVE_CACHED, and reports what stays wrong.
            Err(Errno::EAGAIN | Errno::ENOSYS | Errno::EINVAL | Errno::EPERM) => None,
            Err(e) => Some(Err(refused(e))),
        }
    }
}

/// The root itself is `.` to openat2, which refuses an empty path.
fn dot_if_empty(rel: &Path) -> &Path {
    if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    }
}

/// What a failed lookup answers. Whatever says that the path cannot be served from the root
/// is "not found", which ServeDir answers with 404: a link leading out of the root (EXDEV)
/// or a magic link or loop (ELOOP), a segment or path too long for the file system
/// (ENAMETOOLONG), a file in place of a directory (ENOTDIR), a socket or a device without a
/// driver (ENXIO), no permission (EACCES); and ENOENT, of course. ServeDir answers other
/// errors with 500, for faults of the server rather than of the request.
fn refused(e: Errno) -> io::Error {
    match e {
        Errno::EXDEV
        | Errno::ELOOP
        | Errno::ENAMETOOLONG
        | Errno::ENOTDIR
        | Errno::ENXIO
        | Errno::EACCES => not_found(),
        e => e.into(),
    }
}

fn not_found() -> io::Error {
    io::ErrorKind::NotFound.into()
}

/// The answer to a call: already there, or coming from the blocking pool.
pub enum Answer<T> {
    /// Made on the calling thread.
    Now(Ready<io::Result<T>>),
    /// Running on tokio's blocking pool.
    Pool(JoinHandle<io::Result<T>>),
}

impl<T> Future for Answer<T> {
    type Output = io::Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Answer::Now(answer) => Pin::new(answer).poll(cx),
            Answer::Pool(handle) => Pin::new(handle).poll(cx).map(joined),
        }
    }
}

/// What `ServeDir` needs of a file's attributes, and what tells one version of a file from
/// another: equal `Stat`s of a path, taken at two times, mean the same bytes at both (a file
/// replaced has another inode; one written in place, a new change time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    kind: Kind,
    len: u64,
    modified: Option<SystemTime>,
    dev: u64,
    ino: u64,
    /// The status change time: when the file's bytes or attributes last changed.
    changed: SystemTime,
}

impl Metadata for Stat {
    fn is_dir(&self) -> bool {
        self.kind == Kind::Dir
    }

    fn modified(&self) -> io::Result<SystemTime> {
        self.modified
            .ok_or_else(|| io::Error::other("no modification time"))
    }

    fn len(&self) -> u64 {
        self.len
    }
}

/// What a path names, as far as serving goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A regular file: served.
    File,
    /// A directory: looked into for its index.
    Dir,
    /// A FIFO, socket or device: never served, as if absent.
    Other,
}

impl Kind {
    fn of_mode(mode: u32) -> Kind {
        match mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            _ => Kind::Other,
        }
    }
}

impl Stat {
    /// When the file's bytes or attributes last changed.
    pub(super) fn changed(&self) -> SystemTime {
        self.changed
    }

    /// Whether these are the attributes of a regular file.
    pub(super) fn is_file(&self) -> bool {
        self.kind == Kind::File
    }

    /// These attributes, or not found when they are of something other than a regular file or
    /// a directory.
    fn servable(self) -> io::Result<Stat> {
        if self.kind == Kind::Other {
            return Err(not_found());
        }
        Ok(self)
    }

    /// These attributes of a directory, given those of its index, or not found when the index
    /// is not a regular file.
    fn with_index(self, index: Stat) -> io::Result<Stat> {
        if index.kind != Kind::File {
            return Err(not_found());
        }
        Ok(self)
    }
}

impl From<fs::Metadata> for Stat {
    fn from(meta: fs::Metadata) -> Self {
        Stat {
            kind: Kind::of_mode(meta.mode()),
            len: meta.len(),
            modified: meta.modified().ok(),
            dev: meta.dev(),
            ino: meta.ino(),
            // A nanosecond count is below 10^9: it fits.
            changed: time_of(meta.ctime(), meta.ctime_nsec() as u32),
        }
    }
}

/// An open file, read at an offset of its own: seeking is bookkeeping, and a read that went
/// to the pool cannot disturb the next one.
pub struct CachedFile {
    file: Arc<fs::File>,
    stat: Stat,
    offset: u64,
    /// A read running on the blocking pool, for the bytes at `offset`.
    pending: Option<JoinHandle<io::Result<Vec<u8>>>>,
}

/// The most one read on the pool fetches: one of the chunks ServeDir asks for.
const POOL_READ_MAX: usize = super::READ_CHUNK;

impl CachedFile {
    /// The open `file` with attributes `stat`, or not found when it is not a regular file:
    /// ServeDir opens only what it means to send, and reading a directory fails while a FIFO,
    /// socket or device could hold a thread or answer anything.
    /// The file is noted in `opened` when given.
    fn regular(file: fs::File, stat: Stat, opened: Option<&Opened>) -> io::Result<Self> {
        if stat.kind != Kind::File {
            return Err(not_found());
        }
        let file = Arc::new(file);
        if let Some(opened) = opened {
            // A panic elsewhere while it was held left a whole entry or none: still good.
            let mut opened = opened.lock().unwrap_or_else(|e| e.into_inner());
            *opened = Some((Arc::clone(&file), stat.len));
        }
        Ok(CachedFile {
            file,
            stat,
            offset: 0,
            pending: None,
        })
    }

    /// Starts reading up to `len` bytes at the offset on the blocking pool.
    fn start_pool_read(&mut self, len: usize) {
        let file = Arc::clone(&self.file);
        let (offset, len) = (self.offset, len.min(POOL_READ_MAX));
        self.pending = Some(tokio::task::spawn_blocking(move || {
            let mut bytes = vec![0; len];
            let n = file.read_at(&mut bytes, offset)?;
            bytes.truncate(n);
            Ok(bytes)
        }));
    }

    /// Waits for the read on the pool and copies what fits into `buf`.
    fn poll_pool_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Invariant: called only after start_pool_read, until this returns Ready.
        let handle = self.pending.as_mut().expect("a read is pending");
        let bytes = joined(ready!(Pin::new(handle).poll(cx)));
        self.pending = None;
        let bytes = bytes?;
        // The caller may offer a smaller buffer than the one the read was sized for: what
        // does not fit is read again next time, from the offset.
        let n = bytes.len().min(buf.remaining());
        buf.put_slice(&bytes[..n]);
        self.offset += n as u64;
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for CachedFile {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if this.pending.is_none() {
            match read_cached(this.file.as_fd(), buf, this.offset) {
                Some(read) => return Poll::Ready(read.map(|n| this.offset += n as u64)),
                None => this.start_pool_read(buf.remaining()),
            }
        }
        this.poll_pool_read(cx, buf)
    }
}

impl AsyncSeek for CachedFile {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        let this = self.get_mut();
        if this.pending.is_some() {
            return Err(io::Error::other("cannot seek while a read is in progress"));
        }
        let (base, delta) = match position {
            SeekFrom::Start(offset) => (offset, 0),
            SeekFrom::End(delta) => (this.stat.len, delta),
            SeekFrom::Current(delta) => (this.offset, delta),
        };
        this.offset = base.checked_add_signed(delta).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "seek to a negative offset")
        })?;
        Ok(())
    }

    fn poll_complete(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Poll::Ready(Ok(self.offset))
    }
}

impl File for CachedFile {
    type Metadata = Stat;
    type MetadataFuture<'a> = Ready<io::Result<Stat>>;

    /// The attributes read when the file was opened.
    fn metadata(&self) -> Self::MetadataFuture<'_> {
        ready(Ok(self.stat))
    }
}

/// The attributes of an open descriptor, as cached: on a network file system they may be a
/// few seconds old, as its own attribute cache allows.
fn stat_cached(fd: BorrowedFd<'_>) -> io::Result<Stat> {
    const EMPTY: &CStr = c"";
    let mut stx = std::mem::MaybeUninit::<libc::statx>::uninit();
    // SAFETY: `fd` is open for the call, EMPTY is NUL-terminated, and the kernel writes the
    // whole `statx` on success, which is checked before it is read.
    let stx = unsafe {
        let rc = libc::statx(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_STATX_DONT_SYNC,
            libc::STATX_TYPE
                | libc::STATX_SIZE
                | libc::STATX_MTIME
                | libc::STATX_INO
                | libc::STATX_CTIME,
            stx.as_mut_ptr(),
        );
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        stx.assume_init()
    };
    let modified = (stx.stx_mask & libc::STATX_MTIME != 0)
        .then(|| time_of(stx.stx_mtime.tv_sec, stx.stx_mtime.tv_nsec));
    Ok(Stat {
        kind: Kind::of_mode(u32::from(stx.stx_mode)),
        len: stx.stx_size,
        modified,
        dev: libc::makedev(stx.stx_dev_major, stx.stx_dev_minor),
        ino: stx.stx_ino,
        changed: time_of(stx.stx_ctime.tv_sec, stx.stx_ctime.tv_nsec),
    })
}

/// The time `seconds` and `nanos` after the epoch (before it, for negative seconds).
fn time_of(seconds: i64, nanos: u32) -> SystemTime {
    let whole = Duration::from_secs(seconds.unsigned_abs());
    let second = if seconds >= 0 {
        SystemTime::UNIX_EPOCH + whole
    } else {
        SystemTime::UNIX_EPOCH - whole
    };
    second + Duration::from_nanos(nanos.into())
}

/// Reads into `buf` at `offset` what the page cache holds; `None` when the read would wait
/// for storage, or the file system cannot tell (see the module's doc).
fn read_cached(
    fd: BorrowedFd<'_>,
    buf: &mut ReadBuf<'_>,
    offset: u64,
) -> Option<io::Result<usize>> {
    let offset = libc::off_t::try_from(offset).ok()?;
    // SAFETY: the kernel only writes into the unfilled part, never reads it, and
    // `assume_init` covers exactly the bytes it reports written.
    let n = unsafe {
        let unfilled = buf.unfilled_mut();
        let iov = libc::iovec {
            iov_base: unfilled.as_mut_ptr().cast(),
            iov_len: unfilled.len(),
        };
        let n = libc::preadv2(fd.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT);
        if n < 0 {
            return match Errno::last() {
                Errno::EAGAIN | Errno::EOPNOTSUPP | Errno::EINVAL | Errno::ENOSYS => None,
                e => Some(Err(e.into())),
            };
        }
        // A non-negative ssize_t fits in usize.
        let n = n as usize;
        buf.assume_init(n);
        n
    };
    buf.advance(n);
    Some(Ok(n))
}

/// The result of a pool task; a panic in it (none is expected) becomes an I/O error.
fn joined<T>(result: Result<io::Result<T>, tokio::task::JoinError>) -> io::Result<T> {
    result.unwrap_or_else(|e| Err(io::Error::other(e)))
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::io::SeekFrom;

    use tokio::io::{AsyncReadExt, AsyncSeekExt};

    use super::*;

    /// Bytes that differ at every offset a test reads from.
    fn contents(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("build a runtime")
    }

    /// The backend over `dir` with the defaults: links kept beneath, hidden files refused.
    fn backend(dir: &tempfile::TempDir) -> CacheFirst {
        CacheFirst::new(dir.path(), false, false).expect("open the root")
    }

    /// A path as ServeDir hands it to the backend.
    fn served(rel: &str) -> PathBuf {
        Path::new(BASE).join(rel)
    }

    fn dir_with(name: &str, bytes: &[u8]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("make a temporary directory");
        fs::write(dir.path().join(name), bytes).expect("write the file");
        dir
    }

    #[test]
    fn reads_a_file_whole_across_chunks() {
        // Several of ServeDir's chunks, and not a multiple of the page size.
        let bytes = contents(3 * POOL_READ_MAX + 1000);
        let dir = dir_with("f", &bytes);
        runtime().block_on(async {
            let mut file = backend(&dir).open(served("f")).await.unwrap();
            let mut read = Vec::new();
            file.read_to_end(&mut read).await.unwrap();
            assert!(read == bytes, "the bytes read differ from the file's");
        });
    }

    #[test]
    fn seeks_from_start_current_and_end() {
        let bytes = contents(10_000);
        let dir = dir_with("f", &bytes);
        runtime().block_on(async {
            let mut file = backend(&dir).open(served("f")).await.unwrap();
            let mut four = [0; 4];
            assert_eq!(file.seek(SeekFrom::Start(100)).await.unwrap(), 100);
            file.read_exact(&mut four).await.unwrap();
            assert_eq!(four, bytes[100..104]);
            assert_eq!(file.seek(SeekFrom::Current(-2)).await.unwrap(), 102);
            file.read_exact(&mut four).await.unwrap();
            assert_eq!(four, bytes[102..106]);
            assert_eq!(file.seek(SeekFrom::End(-4)).await.unwrap(), 9_996);
            file.read_exact(&mut four).await.unwrap();
            assert_eq!(four, bytes[9_996..]);
            assert_eq!(
                file.read(&mut four).await.unwrap(),
                0,
                "nothing past the end"
            );
            let err = file.seek(SeekFrom::Current(-20_000)).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        });
    }

    #[test]
    fn metadata_matches_the_file_system() {
        let dir = dir_with("f", &contents(1234));
        let expected = fs::metadata(dir.path().join("f")).unwrap();
        let (files, path) = (backend(&dir), served("f"));
        runtime().block_on(async {
            let stat = files.metadata(path.clone()).await.unwrap();
            assert!(!stat.is_dir());
            assert_eq!(stat.len(), 1234);
            assert_eq!(stat.modified().unwrap(), expected.modified().unwrap());
            let open = files.open(path.clone()).await.unwrap();
            let of_open = open.metadata().await.unwrap();
            assert_eq!(
                (of_open.len(), of_open.modified().unwrap()),
                (1234, stat.modified().unwrap())
            );
            let no_index = files.metadata(served("")).await.unwrap_err();
            assert_eq!(no_index.kind(), io::ErrorKind::NotFound);
            fs::write(dir.path().join(INDEX), b"index").unwrap();
            let of_dir = files.metadata(served("")).await.unwrap();
            assert!(of_dir.is_dir());
            let pooled = metadata_on_pool(Arc::clone(&files.root), "".into()).await;
            assert!(pooled.unwrap().is_dir());
        });
    }

    #[test]
    fn missing_files_are_not_found_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let files = backend(&dir);
        let missing = PathBuf::from("missing");
        runtime().block_on(async {
            let kinds = [
                files.open(served("missing")).await.err().map(|e| e.kind()),
                open_on_pool(Arc::clone(&files.root), missing.clone(), None)
                    .await
                    .err()
                    .map(|e| e.kind()),
                files
                    .metadata(served("missing"))
                    .await
                    .err()
                    .map(|e| e.kind()),
                metadata_on_pool(Arc::clone(&files.root), missing)
                    .await
                    .err()
                    .map(|e| e.kind()),
            ];
            assert_eq!(kinds, [Some(io::ErrorKind::NotFound); 4]);
        });
    }

    #[test]
    fn pool_answers_match_cached_answers() {
        let dir = dir_with("f", &contents(5000));
        let files = backend(&dir);
        let root = || Arc::clone(&files.root);
        runtime().block_on(async {
            let cached = files.metadata(served("f")).await.unwrap();
            let pooled = metadata_on_pool(root(), "f".into()).await.unwrap();
            assert_eq!(
                (cached.is_dir(), cached.len(), cached.modified().unwrap()),
                (pooled.is_dir(), pooled.len(), pooled.modified().unwrap())
            );
            let file = open_on_pool(root(), "f".into(), None).await.unwrap();
            assert_eq!(file.metadata().await.unwrap().len(), 5000);
        });
    }

    #[test]
    fn a_backend_for_one_request_answers_the_known_path_from_what_was_found() {
        let dir = dir_with("f", &contents(5000));
        let files = backend(&dir);
        runtime().block_on(async {
            let found = files.metadata(served("f")).await.unwrap();
            let (told, _) = files.for_request(Some(("f".into(), found)));
            fs::remove_file(dir.path().join("f")).unwrap();
            let known = told.metadata(served("f")).await.expect("answered as found");
            assert_eq!(known.len(), 5000);
            assert!(!known.is_dir());
            // Only for that path, and only as metadata: opening looks it up.
            let other = told.metadata(served("g")).await.unwrap_err();
            assert_eq!(other.kind(), io::ErrorKind::NotFound);
            let opened = told.open(served("f")).await.map(|_| ()).unwrap_err();
            assert_eq!(opened.kind(), io::ErrorKind::NotFound);
        });
    }

    #[test]
    fn a_fifo_is_not_found_without_waiting_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let (done, opened) = std::sync::mpsc::channel();
        let files = backend(&dir);
        std::thread::spawn(move || {
            let kinds = runtime().block_on(async {
                [
                    files.open(served("fifo")).await.err().map(|e| e.kind()),
                    open_on_pool(Arc::clone(&files.root), "fifo".into(), None)
                        .await
                        .err()
                        .map(|e| e.kind()),
                    files.metadata(served("fifo")).await.err().map(|e| e.kind()),
                ]
            });
            let _ = done.send(kinds);
        });
        let result = opened.recv_timeout(std::time::Duration::from_secs(10));
        if result.is_err() {
            // Release the blocked open so that the thread ends.
            let _ = fs::OpenOptions::new().write(true).open(&fifo);
        }
        let kinds = result.expect("open returned within 10 s");
        assert_eq!(kinds, [Some(io::ErrorKind::NotFound); 3]);
    }

    /// What the root's rules refuse, on the calling thread and on the pool alike.
    #[test]
    fn what_the_root_refuses_is_not_found() {
        let outside = dir_with("secret", b"secret");
        let dir = dir_with("f", b"file");
        let root = dir.path();
        std::os::unix::fs::symlink(outside.path(), root.join("out")).unwrap();
        std::os::unix::fs::symlink("f", root.join("in")).unwrap();
        fs::write(root.join(".env"), b"hidden").unwrap();
        fs::create_dir(root.join(".well-known")).unwrap();
        fs::write(root.join(".well-known/x"), b"known").unwrap();
        let long = "a".repeat(300);
        let found = |files: &CacheFirst, rel: &str| {
            let (files, rel) = (files.clone(), rel.to_string());
            runtime().block_on(async move {
                let cached = files.open(served(&rel)).await.map(drop);
                // The pool is handed what the calling thread let through.
                let pooled = match files.root.relative(&served(&rel)) {
                    Ok(rel) => open_on_pool(Arc::clone(&files.root), rel.into(), None).await,
                    Err(e) => Err(e),
                };
                assert_eq!(cached.is_ok(), pooled.is_ok(), "cached and pool disagree");
                match cached {
                    Ok(()) => true,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                    Err(e) => panic!("{e}"),
                }
            })
        };
        let strict = backend(&dir);
        // The calling thread answers what the dentry cache holds (just written, unless memory
        // pressure evicted it meanwhile, which a loaded machine does): the rules cost no trip
        // to the pool, and what it answers is right.
        let cached = strict.root.lookup_cached(Path::new("in"), open_how());
        assert!(!matches!(cached, Some(Err(_))), "{cached:?}");
        for refused in ["out/secret", ".env", ".well-known/.x", "", &long, "f/x"] {
            assert!(!found(&strict, refused), "{refused:?} was served");
        }
        for served in ["f", "in", ".well-known/x"] {
            assert!(found(&strict, served), "{served:?} was refused");
        }
        let open = CacheFirst::new(root, true, true).unwrap();
        for served in ["out/secret", ".env"] {
            assert!(found(&open, served), "{served:?} was refused");
        }
    }

    /// The path taken when the page cache does not hold the bytes: a read on the pool, sized
    /// for one buffer and delivered into a smaller one, loses and repeats nothing.
    #[test]
    fn pool_reads_deliver_into_smaller_buffers_without_loss() {
        let bytes = contents(POOL_READ_MAX + 30_000);
        let dir = dir_with("f", &bytes);
        runtime().block_on(async {
            let mut file = open_on_pool(Arc::clone(&backend(&dir).root), "f".into(), None)
                .await
                .unwrap();
            let mut read = Vec::new();
            let mut small = [0; 1000];
            loop {
                file.start_pool_read(POOL_READ_MAX);
                let mut buf = ReadBuf::new(&mut small);
                poll_fn(|cx| file.poll_pool_read(cx, &mut buf))
                    .await
                    .unwrap();
                if buf.filled().is_empty() {
                    break;
                }
                read.extend_from_slice(buf.filled());
            }
            assert!(read == bytes, "the bytes read differ from the file's");
            // A read cannot be moved under: seeking waits until it is delivered.
            file.start_pool_read(10);
            assert!(Pin::new(&mut file).start_seek(SeekFrom::Start(0)).is_err());
        });
    }
}
