//! An HTTP/2 client (prior knowledge, over plain TCP) for the tests that need one.

use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::task::JoinHandle;

pub type Sender = SendRequest<Empty<Bytes>>;

/// Opens a connection to `addr`; its driver runs on a task that ends when the connection
/// does (Ok after the server's GOAWAY, Err on a reset).
pub async fn connect(addr: SocketAddr) -> (Sender, JoinHandle<hyper::Result<()>>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    (send, tokio::spawn(conn))
}

/// Sends `GET url` as a new stream.
pub fn get(
    send: &mut Sender,
    url: &str,
) -> impl Future<Output = hyper::Result<http::Response<Incoming>>> + use<> {
    let req = http::Request::get(url).body(Empty::new()).unwrap();
    send.send_request(req)
}
