//! The built-in application of the `prefork` binary: static files from a directory.

mod cache_first;

use std::convert::Infallible;
use std::io;
use std::task::{Context, Poll};

use http::header::RANGE;
use http::{Request, Response, Uri};
use tower::Service;
use tower_http::services::ServeDir;
use tower_http::services::fs::{DefaultServeDirFallback, ServeFileSystemResponseBody};

use crate::config::Config;

pub use cache_first::{Answer, CacheFirst, CachedFile, Stat};

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
/// ([`CacheFirst`]).
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
    let files = ServeDir::with_backend(cache_first::BASE, backend)
        .with_buf_chunk_size(READ_CHUNK)
        .append_index_html_on_directories(true)
        .ignore_multi_range_requests(true)
        .precompressed_br()
        .precompressed_gzip();
    Ok(StaticFiles { files })
}

/// The static file service: [`ServeDir`] over [`CacheFirst`], with the request tidied first
/// (see [`tidy`]).
#[derive(Clone, Debug)]
pub struct StaticFiles {
    files: Files,
}

impl<B> Service<Request<B>> for StaticFiles
where
    B: Send + 'static,
{
    type Response = Response<ServeFileSystemResponseBody>;
    type Error = Infallible;
    type Future = <Files as Service<Request<B>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<Request<B>>::poll_ready(&mut self.files, cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        tidy(&mut req);
        self.files.call(req)
    }
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
    if !path.contains("//") && !path.starts_with("/\\") {
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
