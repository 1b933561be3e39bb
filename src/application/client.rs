//! Who sent a request, as the application sees it.

use std::net::SocketAddr;

use http::uri::Scheme;

/// Where a request came from, in its extensions: `req.extensions().get::<ClientAddr>()`.
///
/// Behind a trusted proxy (`--forwarded-allow-ips`, `--proxy-protocol`) the client is the one
/// the proxy names; otherwise it is the connection's peer. The access log shows the same
/// address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientAddr {
    pub(crate) client: Option<SocketAddr>,
    pub(crate) peer: Option<SocketAddr>,
    pub(crate) forwarded: bool,
    pub(crate) scheme: Option<Scheme>,
}

impl ClientAddr {
    /// A connection's client: its `peer` (`None` on a unix socket), or the `source` a PROXY
    /// protocol header gave.
    pub(crate) fn of(peer: Option<SocketAddr>, source: Option<SocketAddr>) -> Self {
        Self {
            client: source.or(peer),
            peer,
            forwarded: source.is_some(),
            scheme: None,
        }
    }

    /// The address whose word on forwarding is judged: whoever spoke HTTP to prefork.
    pub(crate) fn speaker(&self) -> Option<SocketAddr> {
        if self.forwarded {
            self.client
        } else {
            self.peer
        }
    }

    /// The client's address: the connection's peer, or the address a trusted proxy gave (port
    /// 0 when it gave none, as `X-Forwarded-For` does). `None` on a unix socket that no proxy
    /// spoke for.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.client
    }

    /// The connection's own peer: the proxy, when one forwarded the request. `None` on a unix
    /// socket.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// Whether [`ClientAddr::addr`] is what a proxy said rather than the connection's peer.
    pub fn is_forwarded(&self) -> bool {
        self.forwarded
    }

    /// The scheme the client used, when a trusted proxy said (`X-Forwarded-Proto`, or
    /// `proto=` in `Forwarded`); `None` otherwise.
    pub fn scheme(&self) -> Option<&Scheme> {
        self.scheme.as_ref()
    }
}
