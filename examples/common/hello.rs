//! The bare application of `examples/bare.rs`, shared with `examples/baseline.rs --bare` so
//! that both serve the very same service: a `tower::service_fn` answering every request with a
//! fixed body, with no router, extractor or middleware in the way.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;

/// `Hello, World!`, to any method and path, with no other header than hyper's own.
pub async fn hello<B>(_request: Request<B>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(
        b"Hello, World!",
    ))))
}
