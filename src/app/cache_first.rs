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

use std::ffi::CStr;
use std::fs;
use std::future::{Future, Ready, ready};
use std::io::{self, SeekFrom};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use tokio::io::{AsyncRead, AsyncSeek, ReadBuf};
use tokio::task::JoinHandle;
use tower_http::services::fs::{Backend, File, Metadata};

/// The backend: stateless, so every worker and connection can share it.
#[derive(Clone, Copy, Debug, Default)]
pub struct CacheFirst;

impl Backend for CacheFirst {
    type File = CachedFile;
    type Metadata = Stat;
    type OpenFuture = Answer<CachedFile>;
    type MetadataFuture = Answer<Stat>;

    fn open(&self, path: PathBuf) -> Self::OpenFuture {
        // O_NONBLOCK: opening a FIFO someone left under the root must not stall the worker's
        // thread until a writer comes; it does nothing to regular files.
        let how = OpenHow::new().flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK);
        let opened = lookup_cached(&path, how)
            .map(|fd| fd.and_then(|fd| Ok((stat_cached(fd.as_fd())?, fd))));
        match opened {
            Some(Ok((stat, fd))) => Answer::Now(ready(Ok(CachedFile::new(fd.into(), stat)))),
            Some(Err(e)) => Answer::Now(ready(Err(e))),
            None => open_on_pool(path),
        }
    }

    fn metadata(&self, path: PathBuf) -> Self::MetadataFuture {
        let how = OpenHow::new().flags(OFlag::O_PATH | OFlag::O_CLOEXEC);
        match lookup_cached(&path, how).map(|fd| fd.and_then(|fd| stat_cached(fd.as_fd()))) {
            Some(answer) => Answer::Now(ready(answer)),
            None => metadata_on_pool(path),
        }
    }
}

fn open_on_pool(path: PathBuf) -> Answer<CachedFile> {
    Answer::Pool(tokio::task::spawn_blocking(move || {
        let file = fs::File::open(&path)?;
        let stat = Stat::from(file.metadata()?);
        Ok(CachedFile::new(file, stat))
    }))
}

fn metadata_on_pool(path: PathBuf) -> Answer<Stat> {
    Answer::Pool(tokio::task::spawn_blocking(move || {
        fs::metadata(&path).map(Stat::from)
    }))
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

/// What `ServeDir` needs of a file's attributes.
#[derive(Clone, Copy, Debug)]
pub struct Stat {
    dir: bool,
    len: u64,
    modified: Option<SystemTime>,
}

impl Metadata for Stat {
    fn is_dir(&self) -> bool {
        self.dir
    }

    fn modified(&self) -> io::Result<SystemTime> {
        self.modified
            .ok_or_else(|| io::Error::other("no modification time"))
    }

    fn len(&self) -> u64 {
        self.len
    }
}

impl From<fs::Metadata> for Stat {
    fn from(meta: fs::Metadata) -> Self {
        Stat {
            dir: meta.is_dir(),
            len: meta.len(),
            modified: meta.modified().ok(),
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
    fn new(file: fs::File, stat: Stat) -> Self {
        CachedFile {
            file: Arc::new(file),
            stat,
            offset: 0,
            pending: None,
        }
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

/// Opens `path` if the kernel can resolve it from its dentry cache alone; `None` when it
/// would have to read a directory from storage, or cannot tell (see the module's doc).
fn lookup_cached(path: &std::path::Path, how: OpenHow) -> Option<io::Result<OwnedFd>> {
    let how = how.resolve(ResolveFlag::from_bits_retain(libc::RESOLVE_CACHED));
    match nix::fcntl::openat2(nix::fcntl::AT_FDCWD, path, how) {
        Ok(fd) => Some(Ok(fd)),
        // EAGAIN: not cached. ENOSYS, EINVAL: no openat2 or no RESOLVE_CACHED (or a NUL in
        // the path, which the pool reports properly). EPERM: a seccomp filter refusing it.
        Err(Errno::EAGAIN | Errno::ENOSYS | Errno::EINVAL | Errno::EPERM) => None,
        Err(e) => Some(Err(e.into())),
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
            libc::STATX_TYPE | libc::STATX_SIZE | libc::STATX_MTIME,
            stx.as_mut_ptr(),
        );
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        stx.assume_init()
    };
    let modified = (stx.stx_mask & libc::STATX_MTIME != 0).then(|| {
        let time = stx.stx_mtime;
        let whole = Duration::from_secs(time.tv_sec.unsigned_abs());
        let second = if time.tv_sec >= 0 {
            SystemTime::UNIX_EPOCH + whole
        } else {
            SystemTime::UNIX_EPOCH - whole
        };
        second + Duration::from_nanos(time.tv_nsec.into())
    });
    Ok(Stat {
        dir: u32::from(stx.stx_mode) & libc::S_IFMT == libc::S_IFDIR,
        len: stx.stx_size,
        modified,
    })
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
            let mut file = CacheFirst.open(dir.path().join("f")).await.unwrap();
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
            let mut file = CacheFirst.open(dir.path().join("f")).await.unwrap();
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
        let path = dir.path().join("f");
        let expected = fs::metadata(&path).unwrap();
        runtime().block_on(async {
            let stat = CacheFirst.metadata(path.clone()).await.unwrap();
            assert!(!stat.is_dir());
            assert_eq!(stat.len(), 1234);
            assert_eq!(stat.modified().unwrap(), expected.modified().unwrap());
            let open = CacheFirst.open(path.clone()).await.unwrap();
            let of_open = open.metadata().await.unwrap();
            assert_eq!(
                (of_open.len(), of_open.modified().unwrap()),
                (1234, stat.modified().unwrap())
            );
            let of_dir = CacheFirst.metadata(dir.path().to_path_buf()).await.unwrap();
            assert!(of_dir.is_dir());
        });
    }

    #[test]
    fn missing_files_are_not_found_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        runtime().block_on(async {
            let kinds = [
                CacheFirst
                    .open(missing.clone())
                    .await
                    .err()
                    .map(|e| e.kind()),
                open_on_pool(missing.clone()).await.err().map(|e| e.kind()),
                CacheFirst
                    .metadata(missing.clone())
                    .await
                    .err()
                    .map(|e| e.kind()),
                metadata_on_pool(missing.clone())
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
        let path = dir.path().join("f");
        runtime().block_on(async {
            let cached = CacheFirst.metadata(path.clone()).await.unwrap();
            let pooled = metadata_on_pool(path.clone()).await.unwrap();
            assert_eq!(
                (cached.is_dir(), cached.len(), cached.modified().unwrap()),
                (pooled.is_dir(), pooled.len(), pooled.modified().unwrap())
            );
            let file = open_on_pool(path).await.unwrap();
            assert_eq!(file.metadata().await.unwrap().len(), 5000);
        });
    }

    #[test]
    fn opening_a_fifo_does_not_wait_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let (done, opened) = std::sync::mpsc::channel();
        let path = fifo.clone();
        std::thread::spawn(move || {
            let result = runtime().block_on(CacheFirst.open(path)).map(drop);
            let _ = done.send(result);
        });
        let result = opened.recv_timeout(std::time::Duration::from_secs(10));
        if result.is_err() {
            // Release the blocked open so that the thread ends.
            let _ = fs::OpenOptions::new().write(true).open(&fifo);
        }
        let result = result.expect("open returned within 10 s");
        assert!(result.is_ok(), "{result:?}");
    }

    /// The path taken when the page cache does not hold the bytes: a read on the pool, sized
    /// for one buffer and delivered into a smaller one, loses and repeats nothing.
    #[test]
    fn pool_reads_deliver_into_smaller_buffers_without_loss() {
        let bytes = contents(POOL_READ_MAX + 30_000);
        let dir = dir_with("f", &bytes);
        runtime().block_on(async {
            let mut file = open_on_pool(dir.path().join("f")).await.unwrap();
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
