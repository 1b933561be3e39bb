//! What trusted proxies say of a request's client: `Forwarded` (RFC 7239), or else
//! `X-Forwarded-For` and `X-Forwarded-Proto`, believed only from a peer in
//! `--forwarded-allow-ips`.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use http::header::FORWARDED;
use http::header::HeaderName;
use http::uri::Scheme;

use crate::config::TrustedProxies;

// Names, not strings: a lookup by `&str` parses the name again on every request.
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// What the proxies said: the client's address and the scheme it used, each when known.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Told {
    pub(crate) client: Option<SocketAddr>,
    pub(crate) scheme: Option<Scheme>,
}

/// Reads the headers of a request whose peer is a trusted proxy. The chain of addresses is read
/// from the right, the nearest proxy's entry first: the client is the first address that is not
/// itself a trusted proxy — so that what a client writes in the header itself is never taken —
/// or the leftmost one when every hop is trusted. An entry that is no address (`unknown`, an
/// obfuscated name) ends the walk with no client.
pub(crate) fn told(headers: &HeaderMap, trusted: &TrustedProxies) -> Told {
    if headers.contains_key(FORWARDED) {
        return forwarded(headers, trusted);
    }
    let hops: Vec<&str> = values(headers, X_FORWARDED_FOR).collect();
    let client = walk(hops.iter().map(|hop| address(hop)), trusted);
    let scheme = values(headers, X_FORWARDED_PROTO).last().and_then(scheme);
    Told { client, scheme }
}

/// Every comma-separated item of every field `name`, in order.
fn values<'a>(headers: &'a HeaderMap, name: HeaderName) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

fn forwarded(headers: &HeaderMap, trusted: &TrustedProxies) -> Told {
    let elements: Vec<&str> = values(headers, FORWARDED).collect();
    let pairs = |element: &str| -> Vec<(String, String)> {
        element
            .split(';')
            .filter_map(|pair| {
                let (key, value) = pair.split_once('=')?;
                Some((
                    key.trim().to_ascii_lowercase(),
                    value.trim().trim_matches('"').to_string(),
                ))
            })
            .collect()
    };
    let parsed: Vec<Vec<(String, String)>> = elements.iter().map(|e| pairs(e)).collect();
    let field = |element: &[(String, String)], key: &str| {
        element
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    let client = walk(
        parsed
            .iter()
            .map(|element| field(element, "for").and_then(|v| address(&v))),
        trusted,
    );
    let scheme = parsed
        .iter()
        .rev()
        .find_map(|element| field(element, "proto"))
        .and_then(|proto| scheme(&proto));
    Told { client, scheme }
}

/// The client among `hops`, listed from the farthest to the nearest (see [`told`]).
fn walk(
    hops: impl DoubleEndedIterator<Item = Option<SocketAddr>>,
    trusted: &TrustedProxies,
) -> Option<SocketAddr> {
    let mut leftmost = None;
    for hop in hops.rev() {
        let addr = hop?;
        if !trusted.trusts(Some(addr.ip())) {
            return Some(addr);
        }
        leftmost = Some(addr);
    }
    leftmost
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`,
/// `[2001:db8::1]` or `[2001:db8::1]:4711`; port 0 when none is given.
fn address(text: &str) -> Option<SocketAddr> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr);
    }
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    bare.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 0))
}

fn scheme(text: &str) -> Option<Scheme> {
    match text.to_ascii_lowercase().as_str() {
        "http" => Some(Scheme::HTTP),
        "https" => Some(Scheme::HTTPS),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    fn trusted(list: &str) -> TrustedProxies {
        TrustedProxies::parse(list).unwrap()
    }

    fn client(pairs: &[(&'static str, &'static str)], list: &str) -> Option<String> {
        told(&headers(pairs), &trusted(list))
            .client
            .map(|a| a.to_string())
    }

    #[test]
    fn x_forwarded_for_is_read_from_the_nearest_proxy() {
        let xff = |v| [("x-forwarded-for", v)];
        assert_eq!(
            client(&xff("203.0.113.7"), "127.0.0.1").as_deref(),
            Some("203.0.113.7:0")
        );
        // A client that writes the header itself is the rightmost untrusted entry.
        assert_eq!(
            client(&xff("1.2.3.4, 203.0.113.7"), "127.0.0.1").as_deref(),
            Some("203.0.113.7:0")
        );
        // Trusted hops in between are skipped.
        assert_eq!(
            client(&xff("203.0.113.7, 10.0.0.5"), "127.0.0.1,10.0.0.0/8").as_deref(),
            Some("203.0.113.7:0")
        );
        assert_eq!(
            client(
                &[
                    ("x-forwarded-for", "203.0.113.7"),
                    ("x-forwarded-for", "10.0.0.5")
                ],
                "10.0.0.0/8"
            )
            .as_deref(),
            Some("203.0.113.7:0"),
            "fields repeated are one list"
        );
        assert_eq!(client(&xff("unknown"), "127.0.0.1"), None);
        assert_eq!(
            client(&xff("2001:db8::1"), "::1").as_deref(),
            Some("[2001:db8::1]:0")
        );
        assert_eq!(client(&[], "127.0.0.1"), None);
    }

    #[test]
    fn forwarded_wins_and_is_read_with_ports_quotes_and_proto() {
        let pairs = [
            ("x-forwarded-for", "198.51.100.9"),
            (
                "forwarded",
                "for=192.0.2.60;proto=http, for=\"[2001:db8:cafe::17]:4711\";proto=https",
            ),
        ];
        let told = told(&headers(&pairs), &trusted("127.0.0.1"));
        assert_eq!(
            told.client,
            Some("[2001:db8:cafe::17]:4711".parse().unwrap())
        );
        assert_eq!(told.scheme, Some(Scheme::HTTPS));
        let obfuscated = [("forwarded", "for=_hidden")];
        assert_eq!(client(&obfuscated, "127.0.0.1"), None);
    }

    #[test]
    fn x_forwarded_proto_takes_the_nearest_value() {
        let pairs = [
            ("x-forwarded-for", "192.0.2.1"),
            ("x-forwarded-proto", "http, https"),
        ];
        assert_eq!(
            told(&headers(&pairs), &trusted("*")).scheme,
            Some(Scheme::HTTPS)
        );
        let odd = [("x-forwarded-proto", "gopher")];
        assert_eq!(told(&headers(&odd), &trusted("*")).scheme, None);
    }
}
