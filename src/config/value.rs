//! Parsers for option values: one per kind of value, each returning a message fit to follow
//! "invalid value 'X' for OPTION (SOURCE): ".

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use super::BindAddr;

/// A duration: a whole number with an optional unit `ms`, `s` (the default), `m` or `h`.
pub(crate) fn duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let expected = || "expected a duration such as 30, 30s, 500ms, 2m or 1h".to_string();
    let n: u64 = digits.parse().map_err(|_| expected())?;
    let scale_ms = match unit.trim() {
        "" | "s" => 1_000,
        "ms" => 1,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(expected()),
    };
    n.checked_mul(scale_ms)
        .map(Duration::from_millis)
        .ok_or_else(|| "duration is too large".to_string())
}

/// A whole number no smaller than `min`.
pub(crate) fn count(text: &str, min: u64) -> Result<u64, String> {
    let n: u64 = text
        .trim()
        .parse()
        .map_err(|_| "expected a whole number".to_string())?;
    if n < min {
        return Err(format!("must be at least {min}"));
    }
    Ok(n)
}

/// `n`, refused when it is larger than `max`.
pub(crate) fn at_most(n: u64, max: u64) -> Result<u64, String> {
    if n > max {
        return Err(format!("must be at most {max}"));
    }
    Ok(n)
}

/// An address to listen on: `HOST:PORT`, `[V6]:PORT` or `unix:PATH`.
///
/// Host names are resolved once, here, and every address they resolve to is bound.
pub(crate) fn bind(text: &str) -> Result<Vec<BindAddr>, String> {
    if let Some(path) = text.strip_prefix("unix:") {
        if path.is_empty() {
            return Err("unix: needs a socket path".to_string());
        }
        return Ok(vec![BindAddr::Unix(PathBuf::from(path))]);
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(vec![BindAddr::Tcp(addr)]);
    }
    if !text.contains(':') {
        return Err("expected HOST:PORT, [V6]:PORT or unix:PATH".to_string());
    }
    let addrs: Vec<BindAddr> = text
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve: {e}"))?
        .map(BindAddr::Tcp)
        .collect();
    if addrs.is_empty() {
        return Err("resolves to no address".to_string());
    }
    Ok(addrs)
}

/// Splits an address given as `https://ADDR` (TLS) or `http://ADDR` (cleartext, as a bare
/// address is) into whether it serves TLS and the address.
pub(crate) fn scheme(text: &str) -> (bool, &str) {
    if let Some(addr) = text.strip_prefix("https://") {
        (true, addr)
    } else {
        (false, text.strip_prefix("http://").unwrap_or(text))
    }
}

/// A signal by name, with or without its `SIG` prefix, in any case: `TERM`, `sigint`.
pub(crate) fn signal(text: &str) -> Result<nix::sys::signal::Signal, String> {
    let name = text.trim().to_ascii_uppercase();
    let name = if name.starts_with("SIG") {
        name
    } else {
        format!("SIG{name}")
    };
    name.parse()
        .map_err(|_| "expected a signal name such as TERM, INT or QUIT".to_string())
}

/// A yes-or-no setting: `true` or `false`, or `yes`/`no`, `on`/`off`, `1`/`0` as
/// environment variables often have it.
pub(crate) fn flag(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err("expected true or false".to_string()),
    }
}

/// A URL path: it starts with `/`.
pub(crate) fn path(text: &str) -> Result<String, String> {
    if !text.starts_with('/') || text.contains(char::is_whitespace) {
        return Err("expected a path starting with /, such as /healthz".to_string());
    }
    Ok(text.to_string())
}

/// A file mode in octal, as chmod and umask take it: `660`, `0660` or `0o660`.
pub(crate) fn mode(text: &str) -> Result<u32, String> {
    let digits = text.trim().trim_start_matches("0o");
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|mode| *mode <= 0o777)
        .ok_or_else(|| "expected an octal mode such as 660 or 022".to_string())
}

/// `text` or `json`.
pub(crate) fn log_format(text: &str) -> Result<super::LogFormat, String> {
    match text.trim() {
        "text" => Ok(super::LogFormat::Text),
        "json" => Ok(super::LogFormat::Json),
        _ => Err("expected text or json".to_string()),
    }
}

/// `-` for the standard stream, otherwise a file path.
pub(crate) fn log_target(text: &str) -> Result<super::LogTarget, String> {
    match text {
        "" => Err("expected a file path, or - for the standard stream".to_string()),
        "-" => Ok(super::LogTarget::Standard),
        path => Ok(super::LogTarget::File(PathBuf::from(path))),
    }
}

/// One of the levels `tracing` knows.
pub(crate) fn log_level(text: &str) -> Result<tracing::Level, String> {
    text.trim()
        .parse()
        .map_err(|_| "expected one of error, warn, info, debug, trace".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(duration("0"), Ok(Duration::ZERO));
        for bad in ["", "s", "-1", "1.5s", "10 parsecs", "3d"] {
            assert!(duration(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(duration("99999999999999999h").is_err());
    }

    #[test]
    fn modes() {
        assert_eq!(mode("660"), Ok(0o660));
        assert_eq!(mode("0o022"), Ok(0o022));
        assert_eq!(mode("0777"), Ok(0o777));
        for bad in ["", "8", "1777", "rw"] {
            assert!(mode(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn flags() {
        for yes in ["true", "TRUE", "yes", "on", "1"] {
            assert_eq!(flag(yes), Ok(true), "{yes}");
        }
        for no in ["false", "no", "Off", "0"] {
            assert_eq!(flag(no), Ok(false), "{no}");
        }
        for bad in ["", "2", "maybe"] {
            assert!(flag(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn counts() {
        assert_eq!(count("3", 1), Ok(3));
        assert!(count("0", 1).is_err());
        assert!(count("-2", 0).is_err());
        assert!(count("three", 0).is_err());
    }

    #[test]
    fn bind_addresses() {
        assert_eq!(
            bind("127.0.0.1:8000"),
            Ok(vec![BindAddr::Tcp("127.0.0.1:8000".parse().unwrap())])
        );
        assert_eq!(
            bind("[::1]:0"),
            Ok(vec![BindAddr::Tcp("[::1]:0".parse().unwrap())])
        );
        assert_eq!(scheme("https://0.0.0.0:8443"), (true, "0.0.0.0:8443"));
        assert_eq!(scheme("http://0.0.0.0:80"), (false, "0.0.0.0:80"));
        assert_eq!(scheme("unix:/tmp/p"), (false, "unix:/tmp/p"));
        assert_eq!(
            bind("unix:/tmp/p.sock"),
            Ok(vec![BindAddr::Unix("/tmp/p.sock".into())])
        );
        for bad in [
            "unix:",
            "8000",
            "127.0.0.1",
            "127.0.0.1:99999",
            "nohost.invalid:80",
        ] {
            assert!(bind(bad).is_err(), "{bad:?} was accepted");
        }
    }

    proptest::proptest! {
        #[test]
        fn durations_read_back_whatever_the_unit(n in 0u64..1_000_000, unit in 0usize..5) {
            let (suffix, ms) = [("", 1000), ("s", 1000), ("ms", 1), ("m", 60_000), ("h", 3_600_000)][unit];
            let parsed = duration(&format!("{n}{suffix}"));
            proptest::prop_assert_eq!(parsed, Ok(Duration::from_millis(n * ms)));
        }

        #[test]
        fn no_text_makes_a_parser_panic(text in ".{0,40}") {
            let _ = duration(&text);
            let _ = count(&text, 1);
            let _ = mode(&text);
            let _ = path(&text);
            let _ = log_format(&text);
            let _ = log_target(&text);
            let _ = log_level(&text);
            // Without a colon, no name is looked up: the answer is immediate.
            if !text.contains(':') {
                proptest::prop_assert!(bind(&text).is_err() || text.starts_with("unix:"));
            }
        }

        #[test]
        fn octal_modes_read_back(m in 0u32..0o1000) {
            proptest::prop_assert_eq!(mode(&format!("{m:o}")), Ok(m));
            proptest::prop_assert_eq!(mode(&format!("0o{m:o}")), Ok(m));
        }

        #[test]
        fn socket_addresses_read_back(ip in proptest::prelude::any::<[u8; 4]>(), port in proptest::prelude::any::<u16>()) {
            let addr = SocketAddr::from((ip, port));
            proptest::prop_assert_eq!(bind(&addr.to_string()), Ok(vec![BindAddr::Tcp(addr)]));
        }
    }
}
