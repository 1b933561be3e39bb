//! The built-in application of the `prefork` binary: static files from a directory.

mod cache_first;

use std::path::Path;

use tower_http::services::ServeDir;
use tower_http::services::fs::DefaultServeDirFallback;

pub use cache_first::{Answer, CacheFirst, CachedFile, Stat};

/// How much of a file is read at a time, and so the largest body chunk handed to the
/// connection: 128 KiB. Against ServeDir's 64 KiB, a 1 MiB file takes half the reads and
/// writes; prefork served 12% more 1 MiB responses per second on two cores (wrk, 64
/// connections) while the workers' peak RSS grew by 0.1 MiB. 1 MiB chunks were a third slower:
/// each buffer then comes from mmap (see `worker/heap.rs`).
const READ_CHUNK: usize = 128 * 1024;

/// Serves the files under `root`: GET and HEAD, byte ranges, `ETag` and `Last-Modified` with
/// conditional requests, `index.html` for directories, and precompressed `.br` / `.gz`
/// variants when the client accepts them. What the kernel has cached is served without
/// leaving the worker's thread ([`CacheFirst`]).
pub fn static_files(root: &Path) -> ServeDir<DefaultServeDirFallback, CacheFirst> {
    ServeDir::with_backend(root, CacheFirst)
        .with_buf_chunk_size(READ_CHUNK)
        .append_index_html_on_directories(true)
        .precompressed_br()
        .precompressed_gzip()
}
