//! The built-in application of the `prefork` binary: static files from a directory.

use std::path::Path;

use tower_http::services::ServeDir;

/// Serves the files under `root`: GET and HEAD, byte ranges, `ETag` and `Last-Modified` with
/// conditional requests, `index.html` for directories, and precompressed `.br` / `.gz`
/// variants when the client accepts them.
pub fn static_files(root: &Path) -> ServeDir {
    ServeDir::new(root)
        .append_index_html_on_directories(true)
        .precompressed_br()
        .precompressed_gzip()
}
