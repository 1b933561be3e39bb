//! The PROXY protocol (`--proxy-protocol`): the header a load balancer (HAProxy, AWS NLB, many
//! ingress controllers) sends before HTTP to say whom the connection is for. Versions 1 (text)
//! and 2 (binary) are read with the `ppp` crate; a connection that does not start with a valid
//! header is closed.

use std::net::SocketAddr;
use std::time::Duration;

use ppp::{HeaderResult, PartialResult, v1, v2};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The longest header read: a version 1 header is at most 107 bytes, and version 2 headers
/// with a few TLVs (AWS and GCP add some) stay well within this.
const LONGEST: usize = 4096;

/// The longest version 1 header, its line end included.
const V1_LONGEST: usize = 107;

/// Reads the header at the start of `io` within `timeout`. Returns the source address it
/// carries (`None` for a LOCAL or UNKNOWN header: the balancer's own health check), and the
/// bytes read past it, which are the start of the HTTP request.
pub(crate) async fn read<IO: AsyncRead + Unpin>(
    io: &mut IO,
    timeout: Duration,
) -> Result<(Option<SocketAddr>, Vec<u8>), String> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    let read = async {
        loop {
            match parse(&buf) {
                Parsed::Header { source, len } => return Ok((source, buf[len..].to_vec())),
                Parsed::Invalid(why) => return Err(why),
                Parsed::Incomplete if buf.len() >= LONGEST => {
                    return Err(format!("no header within {LONGEST} bytes"));
                }
                Parsed::Incomplete => {}
            }
            let n = io
                .read(&mut chunk)
                .await
                .map_err(|e| format!("cannot read the header: {e}"))?;
            if n == 0 {
                return Err("the connection closed before a whole header".to_string());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or_else(|_| Err(format!("no header within {timeout:?}")))
}

#[derive(Debug, PartialEq)]
enum Parsed {
    Header {
        source: Option<SocketAddr>,
        len: usize,
    },
    Incomplete,
    Invalid(String),
}

fn parse(buf: &[u8]) -> Parsed {
    if buf.is_empty() {
        return Parsed::Incomplete;
    }
    let result = HeaderResult::parse(buf);
    if result.is_incomplete() {
        // A version 1 header is one line of at most 107 bytes: once its end (or that length)
        // has been read, it is whole, whatever the parser makes of it.
        let line = &buf[..buf.len().min(V1_LONGEST)];
        let v1_whole = buf.starts_with(b"PROXY")
            && (line.windows(2).any(|w| w == b"\r\n") || buf.len() >= V1_LONGEST);
        if v1_whole {
            return Parsed::Invalid("not a PROXY header: a malformed version 1 line".to_string());
        }
        return Parsed::Incomplete;
    }
    match result {
        HeaderResult::V1(Ok(header)) => {
            let source = match header.addresses {
                v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Unknown => None,
            };
            Parsed::Header {
                source,
                len: header.header.len(),
            }
        }
        HeaderResult::V2(Ok(header)) => {
            let source = match header.addresses {
                v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v2::Addresses::Unix(_) | v2::Addresses::Unspecified => None,
            };
            Parsed::Header {
                source,
                len: header.len(),
            }
        }
        HeaderResult::V1(Err(e)) => Parsed::Invalid(format!("not a PROXY header: {e}")),
        HeaderResult::V2(Err(e)) => Parsed::Invalid(format!("not a PROXY header: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::prefixed::Prefixed;

    const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

    fn v2_tcp4(source: [u8; 4], port: u16) -> Vec<u8> {
        let mut header = V2_SIGNATURE.to_vec();
        header.extend([0x21, 0x11, 0, 12]);
        header.extend(source);
        header.extend([10, 0, 0, 1]);
        header.extend(port.to_be_bytes());
        header.extend(80u16.to_be_bytes());
        header
    }

    #[test]
    fn version_1_and_2_give_the_source_and_where_http_starts() {
        let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 4711 80\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(v1),
            Parsed::Header {
                source: Some("203.0.113.7:4711".parse().unwrap()),
                len: 41
            }
        );
        let mut v2 = v2_tcp4([203, 0, 113, 7], 4711);
        let len = v2.len();
        v2.extend(b"GET /");
        assert_eq!(
            parse(&v2),
            Parsed::Header {
                source: Some("203.0.113.7:4711".parse().unwrap()),
                len
            }
        );
        let unknown = b"PROXY UNKNOWN\r\n";
        assert_eq!(
            parse(unknown),
            Parsed::Header {
                source: None,
                len: 15
            }
        );
    }

    #[test]
    fn a_partial_header_waits_and_anything_else_is_refused() {
        assert_eq!(parse(b"PROXY TCP4 203.0"), Parsed::Incomplete);
        assert_eq!(parse(&v2_tcp4([1, 2, 3, 4], 1)[..14]), Parsed::Incomplete);
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\n\r\n"),
            Parsed::Invalid(_)
        ));
        assert!(matches!(
            parse(b"PROXY TCP4 nonsense here\r\n"),
            Parsed::Invalid(_)
        ));
        let endless = [&b"PROXY TCP4 "[..], &[b'1'; 120]].concat();
        assert!(
            matches!(parse(&endless), Parsed::Invalid(_)),
            "longer than a line can be"
        );
    }

    #[tokio::test]
    async fn the_bytes_after_the_header_reach_the_reader() {
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nGET")
            .await
            .unwrap();
        drop(client);
        let (source, rest) = read(&mut server, Duration::from_secs(1)).await.unwrap();
        assert_eq!(source, Some("1.2.3.4:1".parse().unwrap()));
        let mut prefixed = Prefixed::new(rest, server);
        let mut all = String::new();
        prefixed.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "GET");
    }
}
