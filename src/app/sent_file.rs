//! Large files sent by the kernel: ServeDir's answer, with its body replaced by the same range
//! of the same open file, sent with `sendfile(2)` on connections that allow it (see
//! [`FileSender`]). nginx's `sendfile on`.

use http::header::{CONTENT_LENGTH, CONTENT_RANGE};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::Either;
use tower_http::services::fs::ServeFileSystemResponseBody;

use super::FileBody;
use super::cache_first::Opened;
use super::small_files::FILE_MAX;
use crate::application::FileSender;

/// The smallest body the kernel sends: one larger than the small files kept in memory.
/// Below it, bytes already in memory go out in one write with the head, where `sendfile(2)`
/// would take a second system call.
pub const SENT_MIN: u64 = FILE_MAX + 1;

/// ServeDir's `response`, its body sent from the file it `opened` when the response is that
/// file's bytes (200) or one range of them (206), of at least [`SENT_MIN`] bytes; otherwise
/// as ServeDir sends it.
pub(super) fn by_kernel(
    response: Response<ServeFileSystemResponseBody>,
    opened: &Opened,
    sender: &FileSender,
) -> Response<FileBody> {
    let range = span(response.status(), response.headers()).filter(|s| s.len >= SENT_MIN);
    // A poisoned lock held a whole entry or none.
    let file = opened.lock().unwrap_or_else(|e| e.into_inner()).take();
    match (range, file) {
        // The headers were made from the opened file's attributes: a length that differs
        // would mean they describe another one.
        (Some(range), Some((file, len))) if len == range.file_len => response
            .map(|_| Either::Right(Either::Right(sender.body(file, range.offset, range.len)))),
        _ => response.map(super::served_by_files),
    }
}

/// The part of a file a response carries.
#[derive(Debug, PartialEq)]
struct Span {
    offset: u64,
    len: u64,
    /// The whole file's length.
    file_len: u64,
}

/// What the response's headers say it carries: the whole file for a 200, one range for a
/// 206 (`Content-Range: bytes FIRST-LAST/LENGTH`); `None` for anything else.
fn span(status: StatusCode, headers: &HeaderMap) -> Option<Span> {
    let len: u64 = headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()?;
    match status {
        StatusCode::OK => Some(Span {
            offset: 0,
            len,
            file_len: len,
        }),
        StatusCode::PARTIAL_CONTENT => {
            let range = headers.get(CONTENT_RANGE)?.to_str().ok()?;
            let (range, file_len) = range.strip_prefix("bytes ")?.split_once('/')?;
            let (first, last) = range.split_once('-')?;
            let (first, last): (u64, u64) = (first.parse().ok()?, last.parse().ok()?);
            (last.checked_sub(first)?.checked_add(1)? == len).then_some(Span {
                offset: first,
                len,
                file_len: file_len.parse().ok()?,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(http::HeaderName, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| (name.clone(), value.parse().unwrap()))
            .collect()
    }

    #[test]
    fn a_whole_file_or_one_range_is_a_span() {
        let whole = headers(&[(CONTENT_LENGTH, "1000")]);
        assert_eq!(
            span(StatusCode::OK, &whole),
            Some(Span {
                offset: 0,
                len: 1000,
                file_len: 1000
            })
        );
        let part = headers(&[
            (CONTENT_LENGTH, "100"),
            (CONTENT_RANGE, "bytes 200-299/1000"),
        ]);
        assert_eq!(
            span(StatusCode::PARTIAL_CONTENT, &part),
            Some(Span {
                offset: 200,
                len: 100,
                file_len: 1000
            })
        );
    }

    #[test]
    fn anything_else_is_not() {
        assert_eq!(span(StatusCode::NOT_MODIFIED, &headers(&[])), None);
        assert_eq!(span(StatusCode::OK, &headers(&[])), None);
        let unsatisfied = headers(&[(CONTENT_LENGTH, "0"), (CONTENT_RANGE, "bytes */1000")]);
        assert_eq!(span(StatusCode::RANGE_NOT_SATISFIABLE, &unsatisfied), None);
        let inconsistent = headers(&[
            (CONTENT_LENGTH, "50"),
            (CONTENT_RANGE, "bytes 200-299/1000"),
        ]);
        assert_eq!(span(StatusCode::PARTIAL_CONTENT, &inconsistent), None);
        let backwards = headers(&[(CONTENT_LENGTH, "1"), (CONTENT_RANGE, "bytes 299-200/1000")]);
        assert_eq!(span(StatusCode::PARTIAL_CONTENT, &backwards), None);
    }
}
