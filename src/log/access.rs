//! The access log: one line per request, in the combined log format followed by the time the
//! response took to start, in seconds; or one JSON object per line with `--log-format json`.
//!
//! ```text
//! 127.0.0.1 - - [22/Nov/2026:02:35:49 +0000] "GET /a.txt HTTP/1.1" 200 6 "-" "curl/8.5.0" 0.000214
//! ```
//!
//! Times are UTC. The size is the response's `Content-Length` (`-` for a streamed body). The
//! JSON form also has `tls` (the protocol version, cipher suite and SNI name) for requests over
//! TLS, `null` otherwise; the combined format has no field for it.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use http::header::{CONTENT_LENGTH, REFERER, USER_AGENT};
use http::{HeaderMap, Request};
use time::OffsetDateTime;
use time::macros::format_description;

use super::sink::{Sink, describe, to_stdout};
use crate::Error;
use crate::config::{LogFormat, LogTarget, Source};

struct AccessLog {
    sink: Sink,
    format: LogFormat,
}

static ACCESS_LOG: OnceLock<AccessLog> = OnceLock::new();

/// Opens the access log at `target`, set by `source`.
pub(crate) fn init(target: &LogTarget, source: &Source, format: LogFormat) -> Result<(), Error> {
    let sink = Sink::open(target, to_stdout).map_err(|e| {
        Error::config(format!(
            "cannot open access log {} ({source}): {e}",
            describe(target),
        ))
    })?;
    let _ = ACCESS_LOG.set(AccessLog { sink, format });
    Ok(())
}

/// Whether there is an access log to write.
pub(crate) fn enabled() -> bool {
    ACCESS_LOG.get().is_some()
}

pub(crate) fn sink() -> Option<&'static Sink> {
    ACCESS_LOG.get().map(|log| &log.sink)
}

/// The TLS session of a connection, for the JSON access log: protocol version, cipher suite,
/// and the name the client asked for by SNI.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) version: String,
    pub(crate) cipher: String,
    pub(crate) sni: Option<String>,
}

/// What is known of a request when it arrives, kept until its response starts.
pub(crate) struct Entry {
    started: Instant,
    at: OffsetDateTime,
    peer: Option<SocketAddr>,
    request_line: (String, String, http::Version),
    referer: String,
    user_agent: String,
    tls: Option<Arc<Session>>,
}

impl Entry {
    /// Starts an entry for `req`, which came from `peer` over `tls` if not in clear, or `None`
    /// when there is no access log.
    pub(crate) fn begin<B>(
        req: &Request<B>,
        peer: Option<SocketAddr>,
        tls: Option<&Arc<Session>>,
    ) -> Option<Entry> {
        ACCESS_LOG.get()?;
        let header = |headers: &HeaderMap, name| {
            headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_else(|| "-".to_string())
        };
        Some(Entry {
            started: Instant::now(),
            at: OffsetDateTime::now_utc(),
            peer,
            request_line: (
                req.method().to_string(),
                req.uri().to_string(),
                req.version(),
            ),
            referer: header(req.headers(), REFERER),
            user_agent: header(req.headers(), USER_AGENT),
            tls: tls.cloned(),
        })
    }

    /// Writes the line for the response that is starting now.
    pub(crate) fn finish(self, response: &http::response::Parts) {
        let Some(log) = ACCESS_LOG.get() else {
            return;
        };
        let size = response
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        let line = match log.format {
            LogFormat::Text => self.combined(response.status.as_u16(), size),
            LogFormat::Json => self.json(response.status.as_u16(), size),
        };
        if let Err(e) = log.sink.write_line(line.as_bytes()) {
            tracing::warn!("cannot write the access log: {e}");
        }
    }

    fn remote(&self) -> String {
        self.peer
            .map_or_else(|| "-".to_string(), |peer| peer.ip().to_string())
    }

    fn combined(&self, status: u16, size: &str) -> String {
        let (method, uri, version) = &self.request_line;
        let at = self
            .at
            .format(format_description!(
                "[day]/[month repr:short]/[year]:[hour]:[minute]:[second] +0000"
            ))
            .unwrap_or_default();
        let mut line = format!(
            "{} - - [{at}] \"{} {} {version:?}\" {status} {size} \"",
            self.remote(),
            escape(method),
            escape(uri)
        );
        let _ = write!(
            line,
            "{}\" \"{}\" {:.6}",
            escape(&self.referer),
            escape(&self.user_agent),
            self.started.elapsed().as_secs_f64()
        );
        line.push('\n');
        line
    }

    fn json(&self, status: u16, size: &str) -> String {
        let (method, uri, version) = &self.request_line;
        let at = self
            .at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let value = serde_json::json!({
            "time": at,
            "remote": self.remote(),
            "method": method,
            "uri": uri,
            "version": format!("{version:?}"),
            "status": status,
            "size": size.parse::<u64>().ok(),
            "referer": self.referer,
            "user_agent": self.user_agent,
            "duration": self.started.elapsed().as_secs_f64(),
            "tls": self.tls.as_ref().map(|tls| serde_json::json!({
                "version": tls.version,
                "cipher": tls.cipher,
                "sni": tls.sni,
            })),
        });
        let mut line = value.to_string();
        line.push('\n');
        line
    }
}

/// Quotes and control characters would let a client forge log fields; write them as `\xHH`.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '"' || c == '\\' || c.is_control() {
            for byte in c.to_string().bytes() {
                let _ = write!(out, "\\x{byte:02X}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_could_forge_a_field() {
        assert_eq!(escape("curl/8.5"), "curl/8.5");
        assert_eq!(escape("a\"b"), "a\\x22b");
        assert_eq!(escape("a\nb\\"), "a\\x0Ab\\x5C");
    }

    #[test]
    fn combined_line_has_every_field() {
        let req = Request::get("/p?q=1")
            .header(USER_AGENT, "t/1")
            .body(())
            .unwrap();
        let entry = Entry {
            started: Instant::now(),
            at: OffsetDateTime::UNIX_EPOCH,
            peer: Some("10.1.2.3:4000".parse().unwrap()),
            request_line: (
                req.method().to_string(),
                req.uri().to_string(),
                req.version(),
            ),
            referer: "-".into(),
            user_agent: "t/1".into(),
            tls: None,
        };
        let line = entry.combined(200, "13");
        assert!(
            line.starts_with(
                "10.1.2.3 - - [01/Jan/1970:00:00:00 +0000] \"GET /p?q=1 HTTP/1.1\" 200 13 \"-\" \"t/1\" 0.0"
            ),
            "{line}"
        );
        assert!(line.ends_with('\n'));
        let json: serde_json::Value = serde_json::from_str(&entry.json(404, "-")).unwrap();
        assert_eq!(json["status"], 404);
        assert_eq!(json["size"], serde_json::Value::Null);
        assert_eq!(json["uri"], "/p?q=1");
        assert_eq!(json["tls"], serde_json::Value::Null);
        let over_tls = Entry {
            tls: Some(Arc::new(Session {
                version: "TLSv1_3".into(),
                cipher: "TLS13_AES_256_GCM_SHA384".into(),
                sni: Some("a.example".into()),
            })),
            ..entry
        };
        let json: serde_json::Value = serde_json::from_str(&over_tls.json(200, "1")).unwrap();
        assert_eq!(json["tls"]["version"], "TLSv1_3");
        assert_eq!(json["tls"]["sni"], "a.example");
    }
}
