//! What an application and prefork hand each other: the service the application builds in
//! every worker, and the context its factory gets to build it with.

mod body;
mod client;
mod file_sender;

use http::{Request, Response};

pub(crate) use body::Connection;
pub use body::RequestBody;
pub use client::ClientAddr;
pub use file_sender::{FileSender, FileSpan};
pub(crate) use file_sender::{Spans, is_stand_in};

use crate::config::Config;
use crate::drain::Drain;

/// The error type a service or body may return: anything hyper can report.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A service prefork can serve: a cloneable tower service from `Request<RequestBody>` to a
/// response whose body yields `Bytes`. `axum::Router`, `tower_http::services::ServeDir` and
/// `hyper_util::service::TowerToHyperService`-style stacks all are.
pub trait AppService:
    tower::Service<
        Request<RequestBody>,
        Response = Response<Self::Body>,
        Error: Into<BoxError>,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
    /// The response body.
    type Body: http_body::Body<Data = bytes::Bytes, Error: Into<BoxError>> + Send + 'static;
}

impl<S, B> AppService for S
where
    S: tower::Service<Request<RequestBody>, Response = Response<B>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes, Error: Into<BoxError>> + Send + 'static,
{
    type Body = B;
}

/// What the application factory gets in each worker.
pub struct WorkerContext {
    pub(crate) id: usize,
    pub(crate) drain: Drain,
    pub(crate) config: Config,
}

impl WorkerContext {
    /// The worker's slot number, from 1; a replacement for a dead worker takes the same one.
    pub fn id(&self) -> usize {
        self.id
    }

    /// The worker's drain handle, for background tasks that should stop when it drains.
    pub fn drain(&self) -> &Drain {
        &self.drain
    }

    /// The configuration the server runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }
}
