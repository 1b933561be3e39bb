//! The server's settings, and how layers of them (defaults, config file, environment, command
//! line) are merged with every value remembering where it came from.

mod credentials;
pub(crate) mod options;
mod source;
mod tls;
mod trusted;
pub(crate) mod value;

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use source::Source;

/// The largest `limit_request_fields`, as gunicorn's: hyper's HTTP/1 parser allocates room for
/// that many fields for every request, so the limit must stay modest.
pub(crate) const MAX_REQUEST_FIELDS: usize = 32768;

pub(crate) use credentials::Credentials;
pub(crate) use tls::{ClientCerts, Tls, TlsFile, TlsFiles};
pub(crate) use trusted::TrustedProxies;

/// Where a log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// `-`: standard error for the error log, standard output for the access log.
    Standard,
    /// A file, opened for appending and reopened on SIGUSR1 (for logrotate).
    File(PathBuf),
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines; the access log in the combined log format.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

use crate::Error;

/// An address the master listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindAddr {
    /// A TCP address; port 0 asks the kernel for a free port, shared by every worker.
    Tcp(std::net::SocketAddr),
    /// A unix domain socket path.
    Unix(PathBuf),
}

impl fmt::Display for BindAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindAddr::Tcp(addr) => write!(f, "{addr}"),
            BindAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Everything a prefork server runs with.
///
/// Build one with [`Config::default`] and the setters, or let [`crate::main`] read it from the
/// command line, the environment and a config file.
#[derive(Debug, Clone)]
pub struct Config {
    /// Cleartext addresses, or every address when a certificate is given and no address is
    /// written `https://` (as gunicorn's `--certfile` does).
    pub(crate) bind: Vec<BindAddr>,
    /// Addresses written `https://`: TLS whatever the others are.
    pub(crate) https_bind: Vec<BindAddr>,
    pub(crate) bind_source: Source,
    pub(crate) tls_files: TlsFiles,
    /// The TLS files loaded and checked, by [`Config::validate`].
    pub(crate) tls: Option<Tls>,
    pub(crate) workers: usize,
    pub(crate) threads: usize,
    pub(crate) graceful_timeout: Duration,
    pub(crate) timeout: Duration,
    pub(crate) reload_timeout: Duration,
    pub(crate) max_requests: u64,
    pub(crate) max_requests_jitter: u64,
    pub(crate) worker_connections: u32,
    pub(crate) io_timeout: Duration,
    pub(crate) backlog: u32,
    pub(crate) keepalive: Duration,
    pub(crate) linger: Duration,
    pub(crate) shutdown_delay: Duration,
    pub(crate) health_path: Option<String>,
    pub(crate) metrics_bind: Vec<BindAddr>,
    pub(crate) forwarded_allow_ips: TrustedProxies,
    pub(crate) proxy_protocol: bool,
    pub(crate) metrics_bind_source: Source,
    pub(crate) worker_stop_signal: nix::sys::signal::Signal,
    pub(crate) ready_after: Duration,
    pub(crate) prefix_output: bool,
    /// For `prefork run`: the program each worker executes, with its arguments.
    pub(crate) program: Option<Vec<OsString>>,
    pub(crate) limit_request_line: usize,
    pub(crate) limit_request_fields: usize,
    pub(crate) limit_request_field_size: usize,
    pub(crate) http2_max_concurrent_streams: u32,
    pub(crate) root: PathBuf,
    pub(crate) root_source: Source,
    pub(crate) follow_symlinks: bool,
    pub(crate) serve_hidden: bool,
    pub(crate) credentials: Credentials,
    pub(crate) umask: Option<u32>,
    pub(crate) bind_mode: Option<u32>,
    pub(crate) pid: Option<PathBuf>,
    pub(crate) log_level: tracing::Level,
    pub(crate) log_format: LogFormat,
    pub(crate) error_logfile: LogTarget,
    pub(crate) error_logfile_source: Source,
    pub(crate) access_logfile: Option<LogTarget>,
    pub(crate) access_logfile_source: Source,
}

impl Default for Config {
    /// The defaults of the option table ([`options::OPTIONS`]), which `--help` states.
    fn default() -> Self {
        // The table overwrites every field here that has a default value of its own; what is
        // left is what an unset option means: no user, no pid file, no access log.
        let mut config = Self {
            bind: Vec::new(),
            https_bind: Vec::new(),
            bind_source: Source::Default,
            tls_files: TlsFiles::default(),
            tls: None,
            workers: 1,
            threads: 1,
            graceful_timeout: Duration::ZERO,
            timeout: Duration::ZERO,
            reload_timeout: Duration::ZERO,
            max_requests: 0,
            max_requests_jitter: 0,
            worker_connections: 1,
            io_timeout: Duration::ZERO,
            backlog: 1,
            keepalive: Duration::ZERO,
            linger: Duration::ZERO,
            shutdown_delay: Duration::ZERO,
            health_path: None,
            metrics_bind: Vec::new(),
            forwarded_allow_ips: TrustedProxies::default(),
            proxy_protocol: false,
            metrics_bind_source: Source::Default,
            worker_stop_signal: nix::sys::signal::Signal::SIGTERM,
            ready_after: Duration::ZERO,
            prefix_output: false,
            program: None,
            limit_request_line: 0,
            limit_request_fields: 1,
            limit_request_field_size: 0,
            http2_max_concurrent_streams: 1,
            root: PathBuf::new(),
            root_source: Source::Default,
            follow_symlinks: false,
            serve_hidden: false,
            credentials: Credentials::default(),
            umask: None,
            bind_mode: None,
            pid: None,
            log_level: tracing::Level::INFO,
            log_format: LogFormat::Text,
            error_logfile: LogTarget::Standard,
            error_logfile_source: Source::Default,
            access_logfile: None,
            access_logfile_source: Source::Default,
        };
        options::apply_defaults(&mut config);
        config
    }
}

impl Config {
    /// Addresses to listen on. Default: `127.0.0.1:8000`.
    pub fn bind(mut self, addrs: impl IntoIterator<Item = BindAddr>) -> Self {
        self.bind = addrs.into_iter().collect();
        self.https_bind.clear();
        self.bind_source = Source::Api;
        self
    }

    /// Number of worker processes. Default: the number of CPUs. Values below 1 count as 1.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }

    /// Runtime threads per worker: 1 runs a current-thread tokio runtime, more a multi-thread
    /// one. Default: 1. Values below 1 count as 1.
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = n.max(1);
        self
    }

    /// How long a graceful stop may take, from the start of the drain (after any shutdown
    /// delay) until what is left is cut. Default: 30 s.
    pub fn graceful_timeout(mut self, timeout: Duration) -> Self {
        self.graceful_timeout = timeout;
        self
    }

    /// How long a worker may go without a heartbeat from its runtime before the master kills
    /// and replaces it: a handler blocking the runtime's thread hangs the worker. Zero turns
    /// the check off. Default: 30 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long a reload waits for every new worker to be ready before it gives up and keeps
    /// the old workers; the check of a new binary before it is executed has the same limit.
    /// Default: 30 s.
    pub fn reload_timeout(mut self, timeout: Duration) -> Self {
        self.reload_timeout = timeout;
        self
    }

    /// Requests a worker serves before it is replaced (its replacement is ready before it
    /// stops accepting). Zero means never. Default: 0.
    pub fn max_requests(mut self, n: u64) -> Self {
        self.max_requests = n;
        self
    }

    /// Up to this many requests added at random to each worker's `max_requests`, so workers
    /// started together are not all replaced at once. Default: 0.
    pub fn max_requests_jitter(mut self, n: u64) -> Self {
        self.max_requests_jitter = n;
        self
    }

    /// How long a write may wait for a client that reads nothing of its response before the
    /// connection is closed; zero turns the check off. Default: 60 s.
    pub fn io_timeout(mut self, timeout: Duration) -> Self {
        self.io_timeout = timeout;
        self
    }

    /// Connections one worker holds at most; at the limit it leaves new ones in the shared
    /// queue for its siblings. Values below 1 count as 1. Default: 1000.
    pub fn worker_connections(mut self, n: u32) -> Self {
        self.worker_connections = n.max(1);
        self
    }

    /// Length of the kernel's accept queue for each listener. Default: 2048.
    pub fn backlog(mut self, n: u32) -> Self {
        self.backlog = n.max(1);
        self
    }

    /// How long an idle keep-alive connection waits for its next request: an HTTP/1 one is
    /// closed, an HTTP/2 one sent GOAWAY. This also bounds how long a client may take to send
    /// request headers. Zero turns HTTP/1 keep-alive off; idle HTTP/2 connections then get
    /// 30 s. Default: 5 s.
    pub fn keepalive(mut self, idle: Duration) -> Self {
        self.keepalive = idle;
        self
    }

    /// How long a draining worker keeps idle HTTP/1 keep-alive connections open for a request
    /// that may already be on its way; such a request is served with `Connection: close`.
    /// Never extends past the graceful timeout. Default: 1 s.
    pub fn linger(mut self, window: Duration) -> Self {
        self.linger = window;
        self
    }

    /// How long a graceful stop keeps serving normally, with the health path answering 503,
    /// before the drain begins, so that load balancers stop sending traffic first. The
    /// graceful timeout starts after it. Default: 0.
    pub fn shutdown_delay(mut self, delay: Duration) -> Self {
        self.shutdown_delay = delay;
        self
    }

    /// A path (such as `/healthz`) that prefork answers itself, before the application: 200
    /// while serving, 503 from the moment a stop is requested. Default: none.
    pub fn health_path(mut self, path: Option<String>) -> Self {
        self.health_path = path;
        self
    }

    /// The longest HTTP/1 request line accepted, in bytes: method, target and version with
    /// the spaces between them, without the line end. A longer one is answered 414 and the
    /// connection closed. Zero leaves only the bound on the whole request head (64 KiB).
    /// Default: 4094 bytes.
    pub fn limit_request_line(mut self, bytes: usize) -> Self {
        self.limit_request_line = bytes;
        self
    }

    /// The most header fields a request may have; more are answered 431 (and an HTTP/1
    /// connection closed). Clamped to 1..=32768. Default: 100 fields.
    pub fn limit_request_fields(mut self, n: usize) -> Self {
        self.limit_request_fields = n.clamp(1, MAX_REQUEST_FIELDS);
        self
    }

    /// The longest header field accepted, in bytes: its name plus its value. A longer one is
    /// answered 431 (and an HTTP/1 connection closed). Zero leaves only the bound on the whole
    /// request head (64 KiB). Default: 8190 bytes.
    pub fn limit_request_field_size(mut self, bytes: usize) -> Self {
        self.limit_request_field_size = bytes;
        self
    }

    /// The most streams an HTTP/2 client may have open at once on one connection; a stream
    /// past it is refused. Values below 1 count as 1. Default: 100 streams.
    pub fn http2_max_concurrent_streams(mut self, n: u32) -> Self {
        self.http2_max_concurrent_streams = n.max(1);
        self
    }

    /// The user (name or uid) the workers run as, with its supplementary groups: each drops to
    /// it right after the fork. The master keeps the privileges it started with. Needs root
    /// (unless it names the current user). Default: unchanged.
    pub fn user(mut self, user: &str) -> Result<Self, Error> {
        self.set("user", user, &Source::Api)?;
        Ok(self)
    }

    /// The group (name or gid) the workers run as; with a user and no group, the user's own
    /// group. Default: unchanged.
    pub fn group(mut self, group: &str) -> Result<Self, Error> {
        self.set("group", group, &Source::Api)?;
        Ok(self)
    }

    /// The file mode creation mask, set at start (so it applies to unix socket files and the
    /// pid file too). Default: inherited.
    pub fn umask(mut self, mask: u32) -> Self {
        self.umask = Some(mask & 0o777);
        self
    }

    /// The mode of unix socket files, e.g. `0o660`. Default: from the umask.
    pub fn bind_mode(mut self, mode: u32) -> Self {
        self.bind_mode = Some(mode & 0o777);
        self
    }

    /// A file to write the master's pid to once the sockets are bound; removed at exit.
    /// Default: none.
    pub fn pid(mut self, path: Option<PathBuf>) -> Self {
        self.pid = path;
        self
    }

    /// Directory the built-in static file app serves. Default: `.`.
    pub fn root(mut self, dir: impl Into<PathBuf>) -> Self {
        self.root = dir.into();
        self.root_source = Source::Api;
        self
    }

    /// Whether the built-in static file app follows symbolic links wherever they lead, as
    /// nginx does by default. Otherwise a link is followed only while it stays beneath the
    /// root, and one that leads out of it (or is absolute) answers 404. Default: `false`.
    pub fn follow_symlinks(mut self, follow: bool) -> Self {
        self.follow_symlinks = follow;
        self
    }

    /// Whether the built-in static file app serves hidden files and directories, whose name
    /// starts with `.` (`.env`, `.git/`). Otherwise they answer 404, except under
    /// `/.well-known/`. Default: `false`.
    pub fn serve_hidden(mut self, serve: bool) -> Self {
        self.serve_hidden = serve;
        self
    }

    /// Most verbose level logged. Default: `info`.
    pub fn log_level(mut self, level: tracing::Level) -> Self {
        self.log_level = level;
        self
    }

    /// How log lines are written. Default: [`LogFormat::Text`].
    pub fn log_format(mut self, format: LogFormat) -> Self {
        self.log_format = format;
        self
    }

    /// Where the master and the workers log events. Default: standard error.
    pub fn error_logfile(mut self, target: LogTarget) -> Self {
        self.error_logfile = target;
        self.error_logfile_source = Source::Api;
        self
    }

    /// Where the workers log one line per request. Default: none.
    pub fn access_logfile(mut self, target: Option<LogTarget>) -> Self {
        self.access_logfile = target;
        self.access_logfile_source = Source::Api;
        self
    }

    /// The directory the built-in static file app serves.
    pub fn root_dir(&self) -> &Path {
        &self.root
    }

    /// Sets one option from its text form, exactly as a config file or the command line would:
    /// `set("graceful_timeout", "10s")`. Unknown options and bad values are errors that name the
    /// option and `source`.
    pub fn set(&mut self, key: &str, value: &str, source: &Source) -> Result<(), Error> {
        self.set_all(key, &[value.to_string()], source)
    }

    /// Like [`Config::set`] for options that take a list (`bind`); the list replaces what was
    /// there. Single-valued options take the last value.
    pub(crate) fn set_all(
        &mut self,
        key: &str,
        values: &[String],
        source: &Source,
    ) -> Result<(), Error> {
        let opt = options::find(key)
            .ok_or_else(|| Error::config(format!("unknown option '{key}' ({source})")))?;
        let programs = self.program.is_some();
        if !opt.applies.to(programs) {
            let why = if programs {
                "does not apply to prefork run"
            } else {
                "applies only to prefork run"
            };
            return Err(Error::config(format!("option '{key}' {why} ({source})")));
        }
        opt.apply(self, values, source)
    }

    /// Applies the defaults that come from the environment for drop-in use: `WEB_CONCURRENCY`
    /// for `workers` and `PORT` for `bind` (`0.0.0.0:$PORT`). A config file, `PREFORK_*`
    /// variables and the command line all override them.
    pub(crate) fn apply_platform_env(&mut self) -> Result<(), Error> {
        if let Ok(n) = std::env::var("WEB_CONCURRENCY") {
            self.set("workers", &n, &Source::Env("WEB_CONCURRENCY".into()))?;
        }
        if let Ok(port) = std::env::var("PORT") {
            let source = Source::Env("PORT".into());
            value::count(&port, 0)
                .ok()
                .filter(|p| *p <= u64::from(u16::MAX))
                .ok_or_else(|| {
                    Error::config(format!(
                        "invalid value '{port}' for PORT ({source}): expected a port number"
                    ))
                })?;
            self.set("bind", &format!("0.0.0.0:{port}"), &source)?;
        }
        Ok(())
    }

    /// Reads a TOML config file whose keys are the option names (`graceful_timeout = "10s"`,
    /// `bind = ["127.0.0.1:8000", "unix:/run/app.sock"]`).
    pub(crate) fn apply_file(&mut self, path: &Path) -> Result<(), Error> {
        let source = Source::File(path.to_path_buf());
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config(format!("cannot read config file {}: {e}", path.display()))
        })?;
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let reason = e.message().to_string();
            let line = e
                .span()
                .map(|span| text[..span.start].lines().count().max(1));
            match line {
                Some(line) => Error::config(format!(
                    "config file {} line {line}: {reason}",
                    path.display()
                )),
                None => Error::config(format!("config file {}: {reason}", path.display())),
            }
        })?;
        for (key, item) in &table {
            let values = toml_strings(item).ok_or_else(|| {
                Error::config(format!(
                    "invalid value for {key} ({source}): expected a string, a number or a list of strings"
                ))
            })?;
            self.set_all(key, &values, &source)?;
        }
        Ok(())
    }

    /// Whether the addresses in `bind` serve TLS: with a certificate and no `https://`
    /// address, every address does (systemd's sockets too), as with gunicorn's `--certfile`.
    pub(crate) fn tls_by_default(&self) -> bool {
        self.tls_files.given() && self.https_bind.is_empty()
    }

    /// What deserves a warning in a valid configuration: a certificate about to expire.
    pub(crate) fn warnings(&self) -> Vec<String> {
        self.tls.iter().flat_map(Tls::expiry_warnings).collect()
    }

    /// Checks what can only be checked against the machine, not the text of one value, and
    /// loads the TLS files (again, on every call: a reload reads rotated certificates).
    pub(crate) fn validate(&mut self) -> Result<(), Error> {
        self.tls = None;
        if !self.https_bind.is_empty() && !self.tls_files.given() {
            return Err(Error::config(format!(
                "https:// addresses ({}) need --certfile and --keyfile",
                self.bind_source
            )));
        }
        if self.tls_files.given() {
            self.tls = Some(self.tls_files.load().map_err(Error::config)?);
        } else if let Some(ca) = &self.tls_files.ca_certs {
            return Err(Error::config(format!(
                "ca_certs {ca} is given without a certfile and keyfile"
            )));
        }
        if self.program.is_none() && !self.root.is_dir() {
            return Err(Error::config(format!(
                "root directory '{}' ({}) does not exist or is not a directory",
                self.root.display(),
                self.root_source
            )));
        }
        // Port 0 may be given to both: each gets a port of its own.
        let any_port = |addr: &&BindAddr| matches!(addr, BindAddr::Tcp(a) if a.port() == 0);
        if let Some(shared) = self
            .metrics_bind
            .iter()
            .filter(|addr| !any_port(addr))
            .find(|addr| self.bind.contains(addr) || self.https_bind.contains(addr))
        {
            return Err(Error::config(format!(
                "metrics address {shared} ({}) is also an address of the application ({})",
                self.metrics_bind_source, self.bind_source
            )));
        }
        if let Some(both) = self
            .https_bind
            .iter()
            .filter(|addr| !any_port(addr))
            .find(|addr| self.bind.contains(addr))
        {
            return Err(Error::config(format!(
                "address {both} ({}) is given both as https:// and as cleartext",
                self.bind_source
            )));
        }
        if self.bind.is_empty() && self.https_bind.is_empty() {
            return Err(Error::config(format!(
                "no address to listen on ({})",
                self.bind_source
            )));
        }
        self.credentials.check_switch().map_err(Error::config)
    }
}

fn toml_strings(item: &toml::Value) -> Option<Vec<String>> {
    match item {
        toml::Value::String(s) => Some(vec![s.clone()]),
        toml::Value::Integer(n) => Some(vec![n.to_string()]),
        toml::Value::Boolean(b) => Some(vec![b.to_string()]),
        toml::Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn file_values_are_applied() {
        let f = file(
            "workers = 3\ngraceful_timeout = \"10s\"\nbind = [\"127.0.0.1:1\", \"unix:/tmp/x\"]\n",
        );
        let mut cfg = Config::default();
        cfg.apply_file(f.path()).unwrap();
        assert_eq!(cfg.workers, 3);
        assert_eq!(cfg.graceful_timeout, Duration::from_secs(10));
        assert_eq!(cfg.bind.len(), 2);
        assert_eq!(cfg.bind_source, Source::File(f.path().to_path_buf()));
    }

    #[test]
    fn errors_name_option_and_source() {
        let f = file("workers = \"many\"\n");
        let err = Config::default().apply_file(f.path()).unwrap_err();
        let msg = err.to_string();
        assert!(err.is_config());
        assert!(
            msg.contains("workers") && msg.contains("config file"),
            "{msg}"
        );

        let f = file("wrokers = 3\n");
        let msg = Config::default()
            .apply_file(f.path())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("unknown option 'wrokers'"), "{msg}");

        let f = file("workers = [\n");
        let msg = Config::default()
            .apply_file(f.path())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("line"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");

        let msg = Config::default()
            .set("keepalive", "soon", &Source::Cli("keepalive".into()))
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "invalid value 'soon' for keepalive (from --keepalive): expected a duration such as 30, 30s, 500ms, 2m or 1h"
        );
    }

    #[test]
    fn later_layers_replace_bind_lists() {
        let mut cfg = Config::default();
        let cli = Source::Cli("bind".into());
        cfg.set_all("bind", &["127.0.0.1:1".into(), "127.0.0.1:2".into()], &cli)
            .unwrap();
        cfg.set("bind", "127.0.0.1:3", &cli).unwrap();
        assert_eq!(
            cfg.bind,
            vec![BindAddr::Tcp("127.0.0.1:3".parse().unwrap())]
        );
    }

    #[test]
    fn the_metrics_need_an_address_of_their_own() {
        let cli = |flag: &str| Source::Cli(flag.into());
        let mut cfg = Config::default();
        cfg.set("bind", "127.0.0.1:8000", &cli("bind")).unwrap();
        cfg.set("metrics_bind", "127.0.0.1:8000", &cli("metrics-bind"))
            .unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("also an address of the application"), "{err}");
        // Port 0 is a port of its own each time it is bound.
        cfg.set("bind", "127.0.0.1:0", &cli("bind")).unwrap();
        cfg.set("metrics_bind", "127.0.0.1:0", &cli("metrics-bind"))
            .unwrap();
        cfg.validate().unwrap();
    }

    proptest::proptest! {
        /// Values hold no colon, so that no `bind` value sends a name to the resolver.
        #[test]
        fn any_config_file_is_read_or_refused_in_one_line(text in "(([a-z_]{1,12}) = (\"[^\":\n]{0,12}\"|[0-9]{1,4}|\\[\\]|true)\n){0,4}.{0,20}") {
            let f = file(&text);
            if let Err(e) = Config::default().apply_file(f.path()) {
                proptest::prop_assert!(!e.to_string().contains('\n'), "{e}");
            }
        }
    }
}
