//! `--forwarded-allow-ips`: the peers whose word on the client's address is believed.

use std::net::IpAddr;

use ipnet::IpNet;

/// Addresses and ranges of trusted proxies, `*` for any peer, `unix` for connections on unix
/// sockets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct TrustedProxies {
    any: bool,
    unix: bool,
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    /// Parses a comma-separated list: `127.0.0.1,10.0.0.0/8,::1,unix` or `*`.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let mut trusted = TrustedProxies::default();
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            match item {
                "*" => trusted.any = true,
                "unix" => trusted.unix = true,
                _ => {
                    let net = match item.parse::<IpNet>() {
                        Ok(net) => net,
                        Err(_) => item.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
                            format!("'{item}' is not an address, a range (10.0.0.0/8), * or unix")
                        })?,
                    };
                    trusted.nets.push(net);
                }
            }
        }
        Ok(trusted)
    }

    /// Whether a peer at `addr` (`None`: a unix socket's) is believed.
    pub(crate) fn trusts(&self, addr: Option<IpAddr>) -> bool {
        if self.any {
            return true;
        }
        match addr {
            None => self.unix,
            Some(ip) => {
                let ip = ip.to_canonical();
                self.nets.iter().any(|net| net.contains(&ip))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_ranges_any_and_unix() {
        let t = TrustedProxies::parse("127.0.0.1, 10.0.0.0/8,::1").unwrap();
        assert!(t.trusts(Some("127.0.0.1".parse().unwrap())));
        assert!(t.trusts(Some("10.200.3.4".parse().unwrap())));
        assert!(
            t.trusts(Some("::ffff:10.1.1.1".parse().unwrap())),
            "IPv4 mapped to IPv6"
        );
        assert!(t.trusts(Some("::1".parse().unwrap())));
        assert!(!t.trusts(Some("127.0.0.2".parse().unwrap())));
        assert!(!t.trusts(None), "unix sockets only when named");
        assert!(TrustedProxies::parse("unix").unwrap().trusts(None));
        let any = TrustedProxies::parse("*").unwrap();
        assert!(any.trusts(Some("192.0.2.1".parse().unwrap())) && any.trusts(None));
        assert!(!TrustedProxies::parse("").unwrap().trusts(None));
        let err = TrustedProxies::parse("10.0.0.0/33").unwrap_err();
        assert!(err.contains("10.0.0.0/33"), "{err}");
        assert!(TrustedProxies::parse("proxy.example").is_err());
    }
}
