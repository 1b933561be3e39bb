//! The built-in application of the `prefork` binary: static files from a directory.

mod cache_first;

use std::path::Path;

use tower_http::services::ServeDir;
use tower_http::services::fs::DefaultServeDirFallback;

pub use cache_first::{Answer, CacheFirst, CachedFile, Stat};

/// Serves the files under `root`: GET and HEAD, byte ranges, `ETag` and `Last-Modified` with
/// conditional requests, `index.html` for directories, and precompressed `.br` / `.gz`
/// variants when the client accepts them. What the kernel has cached is served without
/// leaving the worker's thread ([`CacheFirst`]).
pub fn static_files(root: &Path) -> ServeDir<DefaultServeDirFallback, CacheFirst> {
    ServeDir::with_backend(root, CacheFirst)
        .append_index_html_on_directories(true)
        .precompressed_br()
        .precompressed_gzip()
}
