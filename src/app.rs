//! The built-in application of the `prefork` binary: static files from a directory.

mod cache_first;
mod sent_file;
mod small_files;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, RANGE};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Either, Full, Limited};
use tower::Service;
use tower_http::services::ServeDir;
use tower_http::services::fs::{DefaultServeDirFallback, ServeFileSystemResponseBody};

use crate::application::{FileSender, FileSpan};
use crate::config::Config;
use small_files::{Found, Hit, Key, Now, SmallFiles, Variants, Version};

pub use cache_first::{Answer, CacheFirst, CachedFile, Stat};
pub use sent_file::SENT_MIN;
pub use small_files::{FILE_MAX, REVALIDATE_AFTER, SETTLED_AFTER};

/// How much of a file is read at a time, and so the largest body chunk handed to the
/// connection: 128 KiB. Against ServeDir's 64 KiB, a 1 MiB file takes half the reads and
/// writes; prefork served 12% more 1 MiB responses per second on two cores (wrk, 64
/// connections) while the workers' peak RSS grew by 0.1 MiB. 1 MiB chunks were a third slower:
/// each buffer then comes from mmap (see `worker/heap.rs`).
const READ_CHUNK: usize = 128 * 1024;

type Files = ServeDir<DefaultServeDirFallback, CacheFirst>;

/// Serves the files under the configured root (`root`, `follow_symlinks`, `serve_hidden`):
/// GET and HEAD, byte ranges, `ETag` and `Last-Modified` with conditional requests,
/// `index.html` for directories, and precompressed `.br` / `.gz` variants when the client
/// accepts them. What the kernel has cached is served without leaving the worker's thread
/// ([`CacheFirst`]); small files asked for again are answered from memory, and a file changed
/// on disk is served new at most [`REVALIDATE_AFTER`] later (see `small_files`).
///
/// Nothing outside the root is served: paths are resolved beneath the root directory, opened
/// here, and symbolic links leading out of it are not followed unless `follow_symlinks`.
/// Hidden files (a segment starting with `.`, except under `/.well-known/`) are not served
/// unless `serve_hidden`, nor is anything but regular files. All of these answer 404, as a
/// missing file does, and so does a directory without `index.html`, with or without the
/// trailing slash: one answer for every refusal tells a client nothing about what exists
/// beyond what it could fetch anyway. nginx answers 403 there because its autoindex switch
/// could list the directory; prefork never lists one, so nothing there is forbidden, only
/// absent.
///
/// A Range with several ranges, or in a unit other than `bytes`, is ignored and the whole
/// file sent with 200, as RFC 9110 (section 14.2) allows and requires: a multipart answer
/// is rarely used and each part costs a seek and a boundary for whoever asks.
///
/// The error is the root directory failing to open.
pub fn static_files(config: &Config) -> io::Result<StaticFiles> {
    let backend = CacheFirst::new(&config.root, config.follow_symlinks, config.serve_hidden)?;
    Ok(StaticFiles(Arc::new(Shared {
        files: serve_dir(backend.clone()),
        backend,
        small: SmallFiles::default(),
    })))
}

/// ServeDir as the static app serves with it, over `backend`.
fn serve_dir(backend: CacheFirst) -> Files {
    ServeDir::with_backend(cache_first::BASE, backend)
        .with_buf_chunk_size(READ_CHUNK)
        .append_index_html_on_directories(true)
        .ignore_multi_range_requests(true)
        .precompressed_br()
        .precompressed_gzip()
}

/// The static file service: [`ServeDir`] over [`CacheFirst`], with the request tidied first
/// (see [`tidy`]), and small files answered from the worker's memory when they can be (see
/// `small_files`). Clones share that memory.
#[derive(Clone, Debug)]
pub struct StaticFiles(Arc<Shared>);

/// What the clones of a [`StaticFiles`] share: one `Arc`, so that the clone made for every
/// request costs no allocation (ServeDir's own clone copies its base path).
#[derive(Debug)]
struct Shared {
    files: Files,
    backend: CacheFirst,
    small: SmallFiles,
}

/// A response body: a small file's bytes from memory, what ServeDir sends, or a larger file
/// sent by the kernel (see [`FileSender`]).
pub type FileBody = Either<Full<Bytes>, Either<ServeFileSystemResponseBody, FileSpan>>;

/// The answer of [`StaticFiles`]: at once from memory, or ServeDir's, to come.
pub enum FileAnswer {
    /// Taken by the first poll.
    Now(Option<Response<FileBody>>),
    /// ServeDir's, or ServeDir's kept for the next request.
    Later(Pin<Box<dyn Future<Output = Result<Response<FileBody>, Infallible>> + Send>>),
}

impl Future for FileAnswer {
    type Output = Result<Response<FileBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            // Invariant: a future is not polled again once it returned Ready.
            FileAnswer::Now(response) => Poll::Ready(Ok(response.take().expect("polled once"))),
            FileAnswer::Later(future) => future.as_mut().poll(cx),
        }
    }
}

impl<B> Service<Request<B>> for StaticFiles
where
    B: Send + 'static,
{
    type Response = Response<FileBody>;
    type Error = Infallible;
    type Future = FileAnswer;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // A clone of ServeDir answers each request that reaches it, and ServeDir without a
        // fallback service is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        tidy(&mut req);
        // A HEAD answer has no body to send.
        let sender = (req.method() == Method::GET)
            .then(|| req.extensions().get::<FileSender>().cloned())
            .flatten();
        let Some(key) = Key::of(&req) else {
            return self.served_by_files(req, sender, None);
        };
        let now = Now::new();
        let shared = &*self.0;
        match shared.small.get(&key, &shared.backend, now) {
            Some(Hit::Answer(headers, body)) => {
                let body = if req.method() == Method::HEAD {
                    Bytes::new()
                } else {
                    body
                };
                return FileAnswer::Now(Some(from_memory(headers, body)));
            }
            Some(Hit::Large(stat)) => {
                let rel = key.rel();
                return self.served_by_files(req, sender, Some((rel, stat)));
            }
            None => {}
        }
        let key = key.into_owned();
        // Revalidations go to ServeDir: most are of small files, whose answers are not kept
        // for them, and a look at the path here would only add to ServeDir's. Ranges are
        // mostly asked of large files (media, downloads): their look finds one for the ranges
        // that follow.
        if key.conditional && !req.headers().contains_key(RANGE) {
            return self.served_by_files(req, sender, None);
        }
        // A client that accepts encodings is sent a variant where one exists: not kept.
        let keepable = |version: &Version| {
            req.method() == Method::GET
                && !key.conditional
                && !(key.negotiates && version.variants == Variants::Present)
        };
        match Version::found(&shared.backend, &key, now) {
            Some(Found::Large(stat)) => {
                shared.small.insert_large(&key, stat, now);
                self.served_by_files(req, sender, Some((key.rel(), stat)))
            }
            Some(Found::Small(version)) if keepable(&version) => {
                let answer = shared.files.clone().call(req);
                let shared = Arc::clone(&self.0);
                FileAnswer::Later(Box::pin(async move {
                    let version = if version.variants != Variants::Unknown {
                        version
                    } else {
                        look_up_variants(&shared.backend, &key).await;
                        // Checked again once the file is read: a change now is seen then.
                        Version::of(&shared.backend, &key, Now::new()).unwrap_or(version)
                    };
                    let Ok(response) = answer.await;
                    Ok(keep(response, key, version, &shared.small, &shared.backend).await)
                }))
            }
            _ => self.served_by_files(req, sender, None),
        }
    }
}

impl StaticFiles {
    /// ServeDir's answer to `req`, its body sent by the kernel when `sender` allows and it is
    /// large enough (see `sent_file`). `large`: the request's path names a large regular file
    /// (this one, relative to the root) with these attributes, found within
    /// [`REVALIDATE_AFTER`]; ServeDir then does not look the path up before opening it.
    fn served_by_files<B: Send + 'static>(
        &mut self,
        req: Request<B>,
        sender: Option<FileSender>,
        large: Option<(PathBuf, Stat)>,
    ) -> FileAnswer {
        // A ServeDir of its own when it is to tell which file it opens for this request, or
        // be told what the path was found to be.
        let (answer, opened) = if sender.is_none() && large.is_none() {
            (self.0.files.clone().call(req), None)
        } else {
            let (backend, opened) = self.0.backend.for_request(large);
            (serve_dir(backend).call(req), Some(opened))
        };
        FileAnswer::Later(Box::pin(async move {
            let Ok(response) = answer.await;
            Ok(match (sender, opened) {
                (Some(sender), Some(opened)) => sent_file::by_kernel(response, &opened, &sender),
                _ => response.map(served_by_files),
            })
        }))
    }
}

fn served_by_files(body: ServeFileSystemResponseBody) -> FileBody {
    Either::Right(Either::Left(body))
}

fn from_memory(headers: HeaderMap, body: Bytes) -> Response<FileBody> {
    let mut response = Response::new(Either::Left(Full::new(body)));
    *response.headers_mut() = headers;
    response
}

/// Looks up the precompressed variants of `key`'s file on the blocking pool, so that whether
/// they exist can be told from the kernel's caches from then on: the requests that follow
/// answer from memory to clients that accept encodings too.
async fn look_up_variants(backend: &CacheFirst, key: &Key<'_>) {
    let (backend, variants) = (backend.clone(), key.variants());
    // A panic in the task (none is expected) leaves the variants unknown, which is safe.
    let _ = tokio::task::spawn_blocking(move || {
        variants.iter().for_each(|variant| backend.look_up(variant));
    })
    .await;
}

/// ServeDir's `response` to `key`, read whole into memory and kept there when it is a small
/// file's and the path still names `version` once it is read. A read that fails answers 500,
/// as ServeDir answers a file that fails to open.
async fn keep(
    response: Response<ServeFileSystemResponseBody>,
    key: Key<'static>,
    version: Version,
    small: &SmallFiles,
    backend: &CacheFirst,
) -> Response<FileBody> {
    let headers = response.headers();
    let whole = response.status() == StatusCode::OK
        && !headers.contains_key(CONTENT_ENCODING)
        && headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            == Some(version.len());
    if !whole {
        return response.map(served_by_files);
    }
    let (parts, body) = response.into_parts();
    // A file that grew since it was looked at is not read on without end; one that shrank
    // would not match the length already in the headers: either fails as a read would.
    let len = usize::try_from(version.len()).unwrap_or(usize::MAX);
    let read = Limited::new(body, len).collect().await;
    let bytes = match read.map(|collected| collected.to_bytes()) {
        Ok(bytes) if bytes.len() == len => bytes,
        _ => {
            let mut failed = Response::new(Either::Left(Full::default()));
            *failed.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            return failed;
        }
    };
    let now = Now::new();
    if Version::of(backend, &key, now) == Some(version) {
        small.insert(key, version, parts.headers.clone(), bytes.clone(), now);
    }
    Response::from_parts(parts, Either::Left(Full::new(bytes)))
}

/// Rewrites what ServeDir would take the wrong way:
/// - a Range in a unit other than `bytes` is dropped: RFC 9110 says to ignore it, where
///   ServeDir answers 416;
/// - runs of `/` in the path become one, as nginx's `merge_slashes` does: ServeDir would
///   redirect `//sub` (a directory) to `//sub/`, which a browser reads as the host `sub`;
/// - a `\` just after the leading `/` is written `%5C`, the same file to ServeDir: browsers
///   read `/\host` in a redirect as `//host` too.
fn tidy<B>(req: &mut Request<B>) {
    let bytes_range = |value: &http::HeaderValue| {
        let unit = value
            .as_bytes()
            .split(|b| *b == b'=')
            .next()
            .unwrap_or_default();
        unit.trim_ascii().eq_ignore_ascii_case(b"bytes")
    };
    if req.headers().get(RANGE).is_some_and(|v| !bytes_range(v)) {
        req.headers_mut().remove(RANGE);
    }
    if let Some(uri) = tidy_path(req.uri()) {
        *req.uri_mut() = uri;
    }
}

/// The URI with its path tidied (see [`tidy`]), or `None` when it needs nothing.
fn tidy_path(uri: &Uri) -> Option<Uri> {
    let path = uri.path();
    // A look at each pair of bytes: a substring search costs more on a path this short.
    let doubled = path.as_bytes().windows(2).any(|pair| pair == b"//");
    if !doubled && !path.starts_with("/\\") {
        return None;
    }
    let mut tidy = String::with_capacity(path.len() + 2);
    for c in path.chars() {
        if !(c == '/' && tidy.ends_with('/')) {
            tidy.push(c);
        }
    }
    if tidy.starts_with("/\\") {
        tidy.replace_range(1..2, "%5C");
    }
    if let Some(query) = uri.query() {
        tidy.push('?');
        tidy.push_str(query);
    }
    let mut parts = uri.clone().into_parts();
    // Characters were only removed from a valid path, or replaced with valid ones: it parses.
    // Were it not to, the request keeps its path, which ServeDir resolves the same way.
    parts.path_and_query = Some(tidy.parse().ok()?);
    Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_tidied_so_that_no_redirect_names_a_host() {
        let tidied = |uri: &str| tidy_path(&uri.parse().unwrap()).map(|u| u.to_string());
        assert_eq!(tidied("/sub/file"), None);
        assert_eq!(tidied("//sub"), Some("/sub".into()));
        assert_eq!(tidied("/a//b///c?x=//y"), Some("/a/b/c?x=//y".into()));
        assert_eq!(tidied("/\\host"), Some("/%5Chost".into()));
        assert_eq!(tidied("//\\host"), Some("/%5Chost".into()));
        assert_eq!(
            tidied("http://example.com//sub"),
            Some("http://example.com/sub".into())
        );
    }

    #[test]
    fn ranges_in_other_units_are_dropped() {
        let range = |value: &str| {
            let mut req = Request::get("/f").header(RANGE, value).body(()).unwrap();
            tidy(&mut req);
            req.headers()
                .get(RANGE)
                .map(|v| v.to_str().unwrap().to_string())
        };
        assert_eq!(range("bytes=0-9"), Some("bytes=0-9".into()));
        assert_eq!(range("Bytes=0-9"), Some("Bytes=0-9".into()));
        assert_eq!(range("lines=0-9"), None);
        assert_eq!(range("0-9"), None);
    }
}
