//! TLS for the worker's `https://` listeners: the acceptor each worker builds from the files
//! its configuration loaded, and the handshake of one connection.

use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::Tls;
use crate::log::access::Session;

/// The protocols offered by ALPN, preferred first. [`super::protocol`] then tells them
/// apart by the HTTP/2 preface.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The acceptor for this worker: TLS 1.3 and 1.2, ALPN, the certificate chosen by SNI, session
/// resumption by tickets (with
/// the key shared by the workers of a generation) and by session id within the worker, and
/// client certificates when `--ca-certs` asks for them.
pub(crate) fn acceptor(tls: &Tls) -> Result<TlsAcceptor, rustls::Error> {
    let builder = ServerConfig::builder_with_provider(Arc::clone(&tls.provider))
        .with_safe_default_protocol_versions()?;
    let builder = match &tls.client_verifier {
        Some(verifier) => builder.with_client_cert_verifier(Arc::clone(verifier)),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::clone(&tls.certificates) as _);
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    config.ticketer = Arc::clone(&tls.ticketer);
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// What the access log says of a connection's session.
pub(crate) fn session<IO>(stream: &TlsStream<IO>) -> Session {
    let (_, connection) = stream.get_ref();
    let named = |debug: Option<String>| debug.unwrap_or_else(|| "-".to_string());
    Session {
        version: named(connection.protocol_version().map(|v| format!("{v:?}"))),
        cipher: named(
            connection
                .negotiated_cipher_suite()
                .map(|c| format!("{:?}", c.suite())),
        ),
        sni: connection.server_name().map(str::to_string),
    }
}

/// Completes the server's side of the handshake within `timeout`, the limit on reading a
/// request head: a client that stalls in the handshake holds its connection no longer than
/// one that stalls in its request.
pub(crate) async fn handshake<IO>(
    acceptor: &TlsAcceptor,
    io: IO,
    timeout: Duration,
) -> Result<TlsStream<IO>, String>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(timeout, acceptor.accept(io)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(format!("TLS handshake failed: {e}")),
        Err(_) => Err(format!("TLS handshake not finished within {timeout:?}")),
    }
}
