//! The table of options: one entry per setting of `serve` and `check`, from which come the
//! command line (flags, environment names, help with its `[default: …]`), the built-in
//! defaults of [`Config::default`], the config file keys, the dispatch of [`Config::set`] and
//! the example config file; the man page's list of environment variables comes from the
//! command line built here. Adding an option is one entry here, the `Config` field it sets (with
//! its placeholder in `Config::default`, which this table overwrites), and the code that uses it.

use std::path::PathBuf;

use super::{
    ClientCerts, Config, MAX_REQUEST_FIELDS, Source, TlsFile, TrustedProxies, credentials, value,
};

/// One option. Its key names it in a config file (`graceful_timeout`); the command line spells
/// it `--graceful-timeout` and the environment `PREFORK_GRACEFUL_TIMEOUT`.
pub(crate) struct Opt {
    pub(crate) key: &'static str,
    /// Which commands take it: options about serving HTTP mean nothing to `prefork run`'s
    /// programs, and the program's own options nothing to `serve`.
    pub(crate) applies: Applies,
    pub(crate) short: Option<char>,
    /// What `--help` calls the value: `DUR`, `N`, `ADDR`.
    pub(crate) value_name: &'static str,
    pub(crate) kind: Kind,
    /// One paragraph for `-h`, without the default: `--help` appends it from `default`.
    pub(crate) help: &'static str,
    /// Sentences added to `help` in `--help`, the man pages and the example config file, or
    /// empty.
    pub(crate) more: &'static str,
    pub(crate) default: Initial,
    pub(crate) set: Set,
}

/// The commands an option belongs to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Applies {
    /// `serve`, `check` and `run`.
    Both,
    /// `serve` and `check`: prefork's own HTTP workers.
    Serve,
    /// `run`: workers that are programs of any language.
    Run,
}

impl Applies {
    /// Whether an option that applies so is one of `run`'s (`for_programs`) or of `serve`'s.
    pub(crate) fn to(self, for_programs: bool) -> bool {
        match self {
            Applies::Both => true,
            Applies::Serve => !for_programs,
            Applies::Run => for_programs,
        }
    }
}

/// The shape of an option's value, for completions, for how the example config file writes
/// it, and for whether it may be given several times.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A whole number: a bare integer in TOML.
    Count,
    /// A duration (`30`, `30s`, `500ms`, `2m`, `1h`).
    Duration,
    /// Addresses: the flag repeats or takes a comma-separated list, TOML takes an array.
    Addrs,
    /// A file path.
    File,
    /// File paths: the flag repeats (no commas: a path may hold one), TOML takes an array.
    Files,
    /// A directory path.
    Dir,
    /// Any other text: names, modes, levels, URL paths.
    Text,
    /// Yes or no: `--name` alone on the command line means true (`--name=false` is also
    /// taken), TOML takes a boolean.
    Flag,
}

/// An option's built-in value, and how help states it.
pub(crate) enum Initial {
    /// This value, as the command line would give it.
    Value(&'static str),
    /// This value, unless the environment gives another: `otherwise` says which.
    ValueOr {
        value: &'static str,
        otherwise: &'static str,
    },
    /// A value computed on this machine by `value`, described by `shown`; the example config
    /// file shows `example`.
    Computed {
        shown: &'static str,
        value: fn() -> String,
        #[cfg_attr(
            not(test),
            expect(dead_code, reason = "read by the example config generator, a test")
        )]
        example: &'static str,
    },
    /// Not set: `shown` says what happens then; the example config file shows `example`.
    Unset {
        shown: &'static str,
        #[cfg_attr(
            not(test),
            expect(dead_code, reason = "read by the example config generator, a test")
        )]
        example: &'static str,
    },
}

/// How an option's text becomes part of a [`Config`].
pub(crate) enum Set {
    /// The last value given wins. The error is the reason the value is refused.
    One(fn(&mut Config, &str, &Source) -> Result<(), String>),
    /// Every value given, together replacing what was there.
    Many(fn(&mut Config, &[String], &Source) -> Result<(), Invalid>),
}

/// A refused value of a list, and why.
pub(crate) struct Invalid {
    value: String,
    reason: String,
}

impl Opt {
    /// The environment variable the option is read from.
    pub(crate) fn env(&self) -> String {
        format!("PREFORK_{}", self.key.to_ascii_uppercase())
    }

    /// The long flag, without the dashes.
    pub(crate) fn long(&self) -> String {
        self.key.replace('_', "-")
    }

    /// What `[default: …]` says.
    pub(crate) fn shown_default(&self) -> String {
        match &self.default {
            Initial::Value(value) => (*value).to_string(),
            Initial::ValueOr { value, otherwise } => format!("{value}, {otherwise}"),
            Initial::Computed { shown, .. } | Initial::Unset { shown, .. } => (*shown).to_string(),
        }
    }

    /// The built-in value in the option's own syntax, or `None` when it has none.
    fn default_value(&self) -> Option<String> {
        match &self.default {
            Initial::Value(value) | Initial::ValueOr { value, .. } => Some((*value).to_string()),
            Initial::Computed { value, .. } => Some(value()),
            Initial::Unset { .. } => None,
        }
    }

    /// Sets the option in `config` from `values`, as given by `source`; an empty list changes
    /// nothing. The error is the one line a user sees.
    pub(crate) fn apply(
        &self,
        config: &mut Config,
        values: &[String],
        source: &Source,
    ) -> Result<(), crate::Error> {
        let Some(last) = values.last() else {
            return Ok(());
        };
        let result = match self.set {
            Set::One(set) => set(config, last, source).map_err(|reason| Invalid {
                value: last.clone(),
                reason,
            }),
            Set::Many(set) => set(config, values, source),
        };
        result.map_err(|Invalid { value, reason }| {
            crate::Error::config(format!(
                "invalid value '{value}' for {} ({source}): {reason}",
                self.key
            ))
        })
    }
}

/// The option named `key` in a config file.
pub(crate) fn find(key: &str) -> Option<&'static Opt> {
    OPTIONS.iter().find(|opt| opt.key == key)
}

/// Sets every option that has a built-in value to it; the others keep what `config` has.
pub(crate) fn apply_defaults(config: &mut Config) {
    for opt in OPTIONS {
        if let Some(value) = opt.default_value() {
            // Each default parses: tests::every_default_parses checks the whole table.
            opt.apply(config, &[value], &Source::Default)
                .expect("an option's default is valid");
        }
    }
}

/// A file path for a TLS option, remembering where it was given.
/// [`tls_file`] for each of `values`.
fn tls_files(values: &[String], source: &Source) -> Result<Vec<TlsFile>, Invalid> {
    values
        .iter()
        .map(|text| {
            tls_file(text, source).map_err(|reason| Invalid {
                value: text.clone(),
                reason,
            })
        })
        .collect()
}

fn tls_file(text: &str, source: &Source) -> Result<TlsFile, String> {
    if text.is_empty() {
        return Err("expected a file path".to_string());
    }
    Ok(TlsFile {
        path: PathBuf::from(text),
        source: source.clone(),
    })
}

fn cpus() -> String {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .to_string()
}

/// The options, in the order `--help` lists them.
pub(crate) static OPTIONS: &[Opt] = &[
    Opt {
        key: "bind",
        applies: Applies::Both,
        short: Some('b'),
        value_name: "ADDR",
        kind: Kind::Addrs,
        help: "Address to listen on: HOST:PORT, [V6]:PORT or unix:PATH; https://HOST:PORT or \
               https://unix:PATH serves TLS there (see --certfile). Repeat for several, or \
               separate them with commas.",
        more: "Port 0 asks the kernel for a free port (logged). A host name is resolved once, at \
               start, and every address it resolves to is bound. With --certfile and no \
               https:// address, every address serves TLS, as with gunicorn; with one, the \
               others stay cleartext: -b 0.0.0.0:8080 -b https://0.0.0.0:8443.",
        default: Initial::ValueOr {
            value: "127.0.0.1:8000",
            otherwise: "or 0.0.0.0:$PORT when PORT is set",
        },
        set: Set::Many(|config, values, source| {
            let (mut cleartext, mut https) = (Vec::new(), Vec::new());
            for text in values {
                let (tls, addr) = value::scheme(text);
                let addrs = value::bind(addr).map_err(|reason| Invalid {
                    value: text.clone(),
                    reason,
                })?;
                if tls { &mut https } else { &mut cleartext }.extend(addrs);
            }
            config.bind = cleartext;
            config.https_bind = https;
            config.bind_source = source.clone();
            Ok(())
        }),
    },
    Opt {
        key: "workers",
        applies: Applies::Both,
        short: Some('w'),
        value_name: "N",
        kind: Kind::Count,
        help: "Number of worker processes.",
        more: "TTIN and TTOU sent to the master add and remove one.",
        default: Initial::Computed {
            shown: "$WEB_CONCURRENCY, else the number of CPUs",
            value: cpus,
            example: "4",
        },
        set: Set::One(|config, text, _| {
            config.workers = value::count(text, 1)? as usize;
            Ok(())
        }),
    },
    Opt {
        key: "threads",
        applies: Applies::Serve,
        short: None,
        value_name: "N",
        kind: Kind::Count,
        help: "Runtime threads per worker: 1 runs a current-thread runtime, more a multi-thread \
               one.",
        more: "",
        default: Initial::Value("1"),
        set: Set::One(|config, text, _| {
            config.threads = value::count(text, 1)? as usize;
            Ok(())
        }),
    },
    Opt {
        key: "worker_connections",
        applies: Applies::Serve,
        short: None,
        value_name: "N",
        kind: Kind::Count,
        help: "Connections one worker holds at most; at the limit it leaves new ones in the \
               queue for its siblings until one of its own closes.",
        more: "The descriptor limit is raised to its maximum at start; prefork warns when it \
               cannot hold this many connections in a worker.",
        default: Initial::Value("1000"),
        set: Set::One(|config, text, _| {
            let n = value::count(text, 1)?;
            config.worker_connections = u32::try_from(n).map_err(|_| "too large".to_string())?;
            Ok(())
        }),
    },
    Opt {
        key: "graceful_timeout",
        applies: Applies::Both,
        short: None,
        value_name: "DUR",
        kind: Kind::Duration,
        help: "How long a graceful stop (TERM) may take, from the start of the drain (after any \
               shutdown delay), before what is left is cut. Durations are written 30, 30s, \
               500ms, 2m or 1h.",
        more: "The master kills any worker still alive just after. Under systemd, keep \
               TimeoutStopSec larger than the shutdown delay plus the graceful timeout.",
        default: Initial::Value("30s"),
        set: Set::One(|config, text, _| {
            config.graceful_timeout = value::duration(text)?;
            Ok(())
        }),
    },
    Opt {
        key: "timeout",
        applies: Applies::Both,
        short: None,
        value_name: "DUR",
        kind: Kind::Duration,
        help: "Kill and replace a worker whose runtime sent no heartbeat for this long (a handler \
               blocking its thread); 0 turns the check off.",
        more: "Slow handlers that await leave the runtime free and are never killed.",
        default: Initial::Value("30s"),
        set: Set::One(|config, text, _| {
            config.timeout = value::duration(text)?;
            Ok(())
        }),
    },
    Opt {
        key: "reload_timeout",
        applies: Applies::Both,
        short: None,
        value_name: "DUR",
        kind: Kind::Duration,
        help: "How long a reload (HUP) waits for the new workers to be ready before it gives up \
               and keeps the old ones.",
        more: "The check of a new binary before it is executed has the same limit.",
        default: Initial::Value("30s"),
        set: Set::One(|config, text, _| {
            config.reload_timeout = value::duration(text)?;
            Ok(())
        }),
    },
    Opt {
        key: "max_requests",
        applies: Applies::Serve,
        short: None,
        value_name: "N",
        kind: Kind::Count,
        help: "Replace a worker after it served this many requests (its replacement is ready \
               first); 0 means never.",
        more: "This bounds slow leaks without ever dropping capacity.",
        default: Initial::Value("0"),
        set: Set::One(|config, text, _| {
            config.max_requests = value::count(text, 0)?;
            Ok(())
        }),
    },
    Opt {
        key: "max_requests_jitter",
        applies: Applies::Serve,
        short: None,
        value_name: "N",
        kind: Kind::Count,
        help: "Add up to this many requests, at random, to each worker's max requests, so workers \
               do not all retire at once.",
        more: "",
        default: Initial::Value("0"),
        set: Set::One(|config, text, _| {
            config.max_requests_jitter = value::count(text, 0)?;
            Ok(())
        }),
    },
    Opt {
        key: "backlog",
        applies: Applies::Both,
        short: None,
        value_name: "N",
        kind: Kind::Count,
        help: "Length of each listener's accept queue.",
        more: "The kernel caps it at net.core.somaxconn.",
        default: Initial::Value("2048"),
        set: Set::One(|config, text, _| {
            // listen(2) takes an int.
            config.backlog = value::count(text, 1)?.min(i32::MAX as u64) as u32;
            Ok(())
        }),
    },
    Opt {
        key: "keepalive",
        applies: Applies::Serve,
        short: None,
        value_name: "DUR",
        kind: Kind::Duration,
        help: "How long an idle keep-alive connection waits for its next request (an HTTP/2 one \
               is then sent GOAWAY); also bounds how long a client may take to send request \
               headers. 0 turns HTTP/1 keep-alive off (idle HTTP/2 connections then get 30s).",
        more: "An HTTP/1 connection idle for one to two seconds gives back its buffers (about \
               8 KiB) until its next request, which is answered as usual.",
        default: Initial::Value("5s"),
        set: Set::One(|config, text, _| {
            config.keepalive = value::duration(text)?;
            Ok(())
        }),
    },
    Opt {
        key: "io_timeout",
        applies: Applies::Serve,
        short: None,
        value_name: "DUR",
        kind: Kind::Duration,
        help: "Close a connection whose client makes no progress for this long in the middle of \
               a request or a response: reads nothing of its response, keeps an HTTP/2 stream's \
               flow-control window shut, or stops sending a request body the application waits \
               for; 0 turns it off.",
        more: "The connection is closed between one and two timeouts after the client's last \
               progress. It covers HTTP/1 responses, upgraded connections, HTTP/2 streams (also \
               after GOAWAY) and request bodies; for a body, the application's read fails with a \
               timeout error and the connection is closed once it has answered. Time the \
               application spends producing a response or not reading the body does not count; \
               idle keep-alive connections are bounded by --keepalive instead.",
        default: Initial::Value("60s"),
        set: Set::One(|config, text, _| {
            config.io_timeout = value::duration(text)?;
            Ok(())
        }),
    },
    Opt {
        key: "linger",
        applies: Applies::Serve,
        short: None,
        value_name: "DUR",
        kind: Kind::Duration,
        help: "How long a draining worker keeps idle keep-alive connections open for a request \
               that may already be on its way (served with Connection: close).",
        more: "",
        default: Initial::Value("1s"),
        set: Set::One(|config, text, _| {
            config.linger = value::duration(text)?;
            Ok(())
        }),
    },
    Opt {
        key: "shutdown_delay",
        applies: Applies::Both,
        short: None,
        value_name: "DUR",
        kind: Kind::Duration,
        help: "After TERM, keep serving normally this long, with the health path answering 503, \
               so load balancers stop sending traffic before the drain begins. The graceful \
               timeout starts after it.",
        more: "",
        default: Initial::Value("0"),
        set: Set::One(|config, text, _| {
            config.shutdown_delay = value::duration(text)?;
            Ok(())
        }),
    },
    Opt {
        key: "worker_stop_signal",
        applies: Applies::Run,
        short: None,
        value_name: "SIGNAL",
        kind: Kind::Text,
        help: "The signal that asks a program to stop gracefully (TERM, INT, QUIT, ...); its \
               whole process group is killed at the graceful timeout.",
        more: "uvicorn, gunicorn, hypercorn and most Node and Go servers drain on TERM.",
        default: Initial::Value("TERM"),
        set: Set::One(|config, text, _| {
            config.worker_stop_signal = value::signal(text)?;
            Ok(())
        }),
    },
    Opt {
        key: "ready_after",
        applies: Applies::Run,
        short: None,
        value_name: "DUR",
        kind: Kind::Duration,
        help: "A program that has not sent READY=1 to its NOTIFY_SOCKET is taken as ready this \
               long after it started, if it is still running; 0: only READY=1 makes it ready.",
        more: "Readiness gates a reload (the old programs stop only once the new ones are ready) \
               and systemd's READY=1. A program that notifies later than this is ready earlier \
               than it says: raise this, or set it to 0, for programs that notify.",
        default: Initial::Value("1s"),
        set: Set::One(|config, text, _| {
            config.ready_after = value::duration(text)?;
            Ok(())
        }),
    },
    Opt {
        key: "prefix_output",
        applies: Applies::Run,
        short: None,
        value_name: "BOOL",
        kind: Kind::Flag,
        help: "Prefix each line a program writes to standard output or error with its worker's \
               slot, as process managers do.",
        more: "Without it the programs write to prefork's own standard output and error.",
        default: Initial::Value("false"),
        set: Set::One(|config, text, _| {
            config.prefix_output = value::flag(text)?;
            Ok(())
        }),
    },
    Opt {
        key: "health_path",
        applies: Applies::Serve,
        short: None,
        value_name: "PATH",
        kind: Kind::Text,
        help: "A path prefork answers itself: 200 while serving, 503 once a stop is requested \
               (for load balancer health checks), e.g. /healthz.",
        more: "Every other path goes to the application.",
        default: Initial::Unset {
            shown: "none",
            example: "/healthz",
        },
        set: Set::One(|config, text, _| {
            config.health_path = Some(value::path(text)?);
            Ok(())
        }),
    },
    Opt {
        key: "forwarded_allow_ips",
        applies: Applies::Serve,
        short: None,
        value_name: "LIST",
        kind: Kind::Text,
        help: "Peers whose Forwarded, X-Forwarded-For and X-Forwarded-Proto headers are \
               believed: addresses and ranges (10.0.0.0/8), unix for unix sockets, * for any, \
               comma-separated.",
        more: "From these peers the client's address is the nearest one in the headers that is \
               not itself a trusted proxy; the application (ClientAddr, and axum's ConnectInfo \
               with the axum feature) and the access log see it. From anyone else the headers \
               reach the application untouched and are not believed.",
        default: Initial::Value("127.0.0.1,::1"),
        set: Set::One(|config, text, _| {
            config.forwarded_allow_ips = TrustedProxies::parse(text)?;
            Ok(())
        }),
    },
    Opt {
        key: "proxy_protocol",
        applies: Applies::Serve,
        short: None,
        value_name: "BOOL",
        kind: Kind::Flag,
        help: "Every connection starts with a PROXY protocol header (version 1 or 2), as \
               HAProxy, AWS NLB and many ingress controllers send; its source address is the \
               client's.",
        more: "A connection without a valid header within the keep-alive timeout is closed. \
               Forwarded headers are then judged by the address the header gives.",
        default: Initial::Value("false"),
        set: Set::One(|config, text, _| {
            config.proxy_protocol = value::flag(text)?;
            Ok(())
        }),
    },
    Opt {
        key: "certfile",
        applies: Applies::Serve,
        short: None,
        value_name: "FILE",
        kind: Kind::Files,
        help: "Serve TLS with this certificate: a PEM file, the server's certificate first, then \
               its chain. Needs --keyfile. Repeat --certfile and --keyfile in pairs for \
               several certificates, chosen by the name the client asks for (SNI); the first \
               serves any other name.",
        more: "Read by the master at start and at every reload (HUP), so that a renewed \
               certificate is taken up by a reload and a key readable by root alone suits \
               workers that run as another --user. A file that does not load, a key that does \
               not match, or a certificate that has expired stops the start with status 2, and \
               fails a reload with the old workers left serving; a certificate that expires \
               within 14 days is warned about. HTTP/2 and HTTP/1.1 are offered by ALPN, TLS 1.2 \
               and 1.3, with session resumption by tickets.",
        default: Initial::Unset {
            shown: "none (cleartext)",
            example: "/etc/prefork/fullchain.pem",
        },
        set: Set::Many(|config, values, source| {
            config.tls_files.certfile = tls_files(values, source)?;
            Ok(())
        }),
    },
    Opt {
        key: "keyfile",
        applies: Applies::Serve,
        short: None,
        value_name: "FILE",
        kind: Kind::Files,
        help: "The private key of --certfile: a PEM file, PKCS#8, PKCS#1 (RSA) or SEC1 (EC); \
               one for each --certfile, in the same order.",
        more: "",
        default: Initial::Unset {
            shown: "none",
            example: "/etc/prefork/privkey.pem",
        },
        set: Set::Many(|config, values, source| {
            config.tls_files.keyfile = tls_files(values, source)?;
            Ok(())
        }),
    },
    Opt {
        key: "ca_certs",
        applies: Applies::Serve,
        short: None,
        value_name: "FILE",
        kind: Kind::File,
        help: "Ask TLS clients for a certificate signed by one of these (a PEM file): mutual \
               TLS. See --client-certs.",
        more: "",
        default: Initial::Unset {
            shown: "none",
            example: "/etc/prefork/clients-ca.pem",
        },
        set: Set::One(|config, text, source| {
            config.tls_files.ca_certs = Some(tls_file(text, source)?);
            Ok(())
        }),
    },
    Opt {
        key: "client_certs",
        applies: Applies::Serve,
        short: None,
        value_name: "MODE",
        kind: Kind::Text,
        help: "Client certificates: none (not asked for), optional (a client without one is \
               served, one with a bad one refused) or required (a client without a valid one \
               is refused in the handshake).",
        more: "",
        default: Initial::Unset {
            shown: "required with --ca-certs, else none",
            example: "required",
        },
        set: Set::One(|config, text, _| {
            config.tls_files.client_certs = Some(ClientCerts::parse(text)?);
            Ok(())
        }),
    },
    Opt {
        key: "metrics_bind",
        applies: Applies::Serve,
        short: None,
        value_name: "ADDR",
        kind: Kind::Text,
        help: "Serve Prometheus metrics at /metrics on this address of their own (HOST:PORT or \
               unix:PATH), never on the application's.",
        more: "Requests, responses by status class, request durations, connections open, \
               accepted and cut, requests in flight, worker starts and exits by cause, reloads, \
               the generation: per worker slot and in total, across worker restarts. Any worker \
               answers a scrape with the numbers of all of them.",
        default: Initial::Unset {
            shown: "none",
            example: "127.0.0.1:9100",
        },
        set: Set::One(|config, text, source| {
            config.metrics_bind = value::bind(text)?;
            config.metrics_bind_source = source.clone();
            Ok(())
        }),
    },
    Opt {
        key: "limit_request_line",
        applies: Applies::Serve,
        short: None,
        value_name: "BYTES",
        kind: Kind::Count,
        help: "Longest HTTP/1 request line accepted, in bytes (method, target and version, \
               without the line end); a longer one is answered 414 and the connection closed. 0 \
               leaves only the bound on the whole request head (64 KiB).",
        more: "",
        default: Initial::Value("4094"),
        set: Set::One(|config, text, _| {
            config.limit_request_line = value::count(text, 0)? as usize;
            Ok(())
        }),
    },
    Opt {
        key: "limit_request_fields",
        applies: Applies::Serve,
        short: None,
        value_name: "N",
        kind: Kind::Count,
        help: "Most header fields a request may have (from 1 to 32768); more are answered 431 \
               and the connection closed.",
        more: "",
        default: Initial::Value("100"),
        set: Set::One(|config, text, _| {
            config.limit_request_fields =
                value::at_most(value::count(text, 1)?, MAX_REQUEST_FIELDS as u64)? as usize;
            Ok(())
        }),
    },
    Opt {
        key: "limit_request_field_size",
        applies: Applies::Serve,
        short: None,
        value_name: "BYTES",
        kind: Kind::Count,
        help: "Longest header field accepted, in bytes (its name plus its value); a longer one is \
               answered 431 and the connection closed. 0 leaves only the bound on the whole \
               request head (64 KiB).",
        more: "",
        default: Initial::Value("8190"),
        set: Set::One(|config, text, _| {
            config.limit_request_field_size = value::count(text, 0)? as usize;
            Ok(())
        }),
    },
    Opt {
        key: "http2_max_concurrent_streams",
        applies: Applies::Serve,
        short: None,
        value_name: "N",
        kind: Kind::Count,
        help: "Most streams an HTTP/2 client may have open at once on one connection; a stream \
               past it is refused (RST_STREAM REFUSED_STREAM).",
        more: "",
        default: Initial::Value("100"),
        set: Set::One(|config, text, _| {
            config.http2_max_concurrent_streams =
                value::at_most(value::count(text, 1)?, u64::from(u32::MAX))? as u32;
            Ok(())
        }),
    },
    Opt {
        key: "user",
        applies: Applies::Both,
        short: Some('u'),
        value_name: "USER",
        kind: Kind::Text,
        help: "Run the workers as this user (name or uid), with its supplementary groups; the \
               master keeps the privileges it started with.",
        more: "Needs root (unless it names the user prefork runs as): each worker drops to the \
               user right after the fork, before the application runs. The master stays root, \
               so that a reload can bind a port below 1024, USR1 can reopen its log files and \
               the pid file is removed at exit.",
        default: Initial::Unset {
            shown: "the user that started prefork",
            example: "www-data",
        },
        set: Set::One(|config, text, source| {
            config.credentials.user = Some(credentials::user(text)?);
            config.credentials.user_source = source.clone();
            Ok(())
        }),
    },
    Opt {
        key: "group",
        applies: Applies::Both,
        short: Some('g'),
        value_name: "GROUP",
        kind: Kind::Text,
        help: "Run the workers as this group (name or gid); with a user alone, the user's own \
               group. The master keeps its own.",
        more: "",
        default: Initial::Unset {
            shown: "the group that started prefork",
            example: "www-data",
        },
        set: Set::One(|config, text, source| {
            config.credentials.group = Some(credentials::group(text)?);
            config.credentials.group_source = source.clone();
            Ok(())
        }),
    },
    Opt {
        key: "umask",
        applies: Applies::Both,
        short: None,
        value_name: "MODE",
        kind: Kind::Text,
        help: "File mode creation mask, in octal, set at start.",
        more: "It applies to unix socket files and the pid file too.",
        default: Initial::Unset {
            shown: "the inherited one",
            example: "027",
        },
        set: Set::One(|config, text, _| {
            config.umask = Some(value::mode(text)?);
            Ok(())
        }),
    },
    Opt {
        key: "bind_mode",
        applies: Applies::Both,
        short: None,
        value_name: "MODE",
        kind: Kind::Text,
        help: "Mode of unix socket files, in octal (e.g. 660); their owner is the user and group \
               prefork runs as.",
        more: "",
        default: Initial::Unset {
            shown: "from the umask",
            example: "660",
        },
        set: Set::One(|config, text, _| {
            config.bind_mode = Some(value::mode(text)?);
            Ok(())
        }),
    },
    Opt {
        key: "pid",
        applies: Applies::Both,
        short: Some('p'),
        value_name: "FILE",
        kind: Kind::File,
        help: "Write the master's pid to this file once the sockets are bound (refused if it \
               names a running process); removed at exit.",
        more: "",
        default: Initial::Unset {
            shown: "none",
            example: "/run/prefork/prefork.pid",
        },
        set: Set::One(|config, text, _| {
            config.pid = Some(PathBuf::from(text));
            Ok(())
        }),
    },
    Opt {
        key: "root",
        applies: Applies::Serve,
        short: None,
        value_name: "DIR",
        kind: Kind::Dir,
        help: "Directory served by the built-in static file app.",
        more: "It must exist. A relative path is taken from the working directory \
               (WorkingDirectory= under systemd), not from the config file's directory.",
        default: Initial::Value("."),
        set: Set::One(|config, text, source| {
            config.root = PathBuf::from(text);
            config.root_source = source.clone();
            Ok(())
        }),
    },
    Opt {
        key: "follow_symlinks",
        applies: Applies::Serve,
        short: None,
        value_name: "BOOL",
        kind: Kind::Flag,
        help: "Let the static file app follow symbolic links wherever they lead, as nginx does \
               by default.",
        more: "Otherwise a link is followed only while it stays beneath the root; one that \
               leads out of it, or is absolute, answers 404.",
        default: Initial::Value("false"),
        set: Set::One(|config, text, _| {
            config.follow_symlinks = value::flag(text)?;
            Ok(())
        }),
    },
    Opt {
        key: "serve_hidden",
        applies: Applies::Serve,
        short: None,
        value_name: "BOOL",
        kind: Kind::Flag,
        help: "Let the static file app serve hidden files and directories, whose names start \
               with a dot (.env, .git/).",
        more: "Otherwise they answer 404, except under /.well-known/.",
        default: Initial::Value("false"),
        set: Set::One(|config, text, _| {
            config.serve_hidden = value::flag(text)?;
            Ok(())
        }),
    },
    Opt {
        key: "log_level",
        applies: Applies::Both,
        short: None,
        value_name: "LEVEL",
        kind: Kind::Text,
        help: "Most verbose level logged: error, warn, info, debug or trace.",
        more: "",
        default: Initial::Value("info"),
        set: Set::One(|config, text, _| {
            config.log_level = value::log_level(text)?;
            Ok(())
        }),
    },
    Opt {
        key: "log_format",
        applies: Applies::Both,
        short: None,
        value_name: "FORMAT",
        kind: Kind::Text,
        help: "How log lines are written: text, or json (one object per line, for the error log \
               and the access log).",
        more: "",
        default: Initial::Value("text"),
        set: Set::One(|config, text, _| {
            config.log_format = value::log_format(text)?;
            Ok(())
        }),
    },
    Opt {
        key: "error_logfile",
        applies: Applies::Both,
        short: None,
        value_name: "PATH",
        kind: Kind::File,
        help: "Where the master and workers log events: a file (appended to, reopened on USR1) or \
               - for standard error.",
        more: "",
        default: Initial::Value("-"),
        set: Set::One(|config, text, source| {
            config.error_logfile = value::log_target(text)?;
            config.error_logfile_source = source.clone();
            Ok(())
        }),
    },
    Opt {
        key: "access_logfile",
        applies: Applies::Serve,
        short: None,
        value_name: "PATH",
        kind: Kind::File,
        help: "Where workers log one line per request (combined log format plus the seconds the \
               response took to start): a file (appended to, reopened on USR1) or - for \
               standard output.",
        more: "Times are in UTC.",
        default: Initial::Unset {
            shown: "none",
            example: "/var/log/prefork/access.log",
        },
        set: Set::One(|config, text, source| {
            config.access_logfile = Some(value::log_target(text)?);
            config.access_logfile_source = source.clone();
            Ok(())
        }),
    },
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BindAddr, LogTarget};
    use std::collections::HashSet;
    use std::io::Write as _;

    /// Where the example config files are (for `serve`, and for `run`), and the variable that
    /// has the docs test rewrite them.
    const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/prefork.toml");
    const RUN_EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/prefork-run.toml");
    const UPDATE_VAR: &str = "PREFORK_UPDATE_DOCS";

    const GENERATED: &str = "\
# prefork example configuration, generated from the option table in src/config/options.rs
# (`PREFORK_UPDATE_DOCS=1 cargo test docs` rewrites it).
#
";

    const SERVE_USE: &str = "\
# Read with `prefork serve -c /etc/prefork/prefork.toml` (or PREFORK_CONFIG=...). Check a file
# without starting anything with `prefork check -c FILE`: exit status 0 when it is valid, 2 with
# a one-line error naming the key and the file otherwise.
";

    const RUN_USE: &str = "\
# For programs of any language: read with `prefork run -c /etc/prefork/app.toml -- PROGRAM ARGS`
# (or PREFORK_CONFIG=...). Check a file without starting anything with
# `prefork check -c FILE -- PROGRAM`: exit status 0 when it is valid. The options about serving
# HTTP (threads, limits, root, ...) are the program's business and refused here.
";

    const LAYERS: &str = "\
#
# Keys are the command-line option names with underscores (--graceful-timeout becomes
# graceful_timeout). Every option is listed below, commented out, with its default value or,
# when it has none, an example. Precedence, lowest first: built-in defaults, WEB_CONCURRENCY and
# PORT, this file, PREFORK_* environment variables, the command line. An unknown key is an error.
#
# Durations are whole numbers with an optional unit: 30 (seconds), \"30s\", \"500ms\", \"2m\", \"1h\".
# Numbers may be written as TOML integers or as strings.
";

    /// `text` as `# `-prefixed lines of at most 100 columns.
    fn comment(text: &str) -> String {
        let mut out = String::new();
        let mut line = String::from("#");
        for word in text.split_whitespace() {
            if line.len() + 1 + word.len() > 100 {
                out.push_str(&line);
                out.push('\n');
                line = String::from("#");
            }
            line.push(' ');
            line.push_str(word);
        }
        out.push_str(&line);
        out.push('\n');
        out
    }

    /// A value as TOML writes it for an option of this kind.
    fn toml_value(kind: Kind, text: &str) -> String {
        match kind {
            Kind::Count | Kind::Flag => text.to_string(),
            Kind::Addrs | Kind::Files => format!("[\"{text}\"]"),
            Kind::Duration | Kind::File | Kind::Dir | Kind::Text => format!("\"{text}\""),
        }
    }

    /// The example config file of `serve`, or of `run` (`for_programs`): each option's help as
    /// a comment, then the option commented out with its default, or an example when its
    /// default is not one fixed value.
    fn example_config(for_programs: bool) -> String {
        let usage = if for_programs { RUN_USE } else { SERVE_USE };
        let mut out = format!("{GENERATED}{usage}{LAYERS}");
        for opt in OPTIONS.iter().filter(|opt| opt.applies.to(for_programs)) {
            out.push('\n');
            // A fixed default goes without saying: it is the value shown.
            let (shown, value) = match &opt.default {
                Initial::Value(value) => (None, *value),
                Initial::ValueOr { value, .. } => {
                    (Some(format!("{}.", opt.shown_default())), *value)
                }
                Initial::Computed { example, .. } | Initial::Unset { example, .. } => {
                    (Some(format!("{}. Example:", opt.shown_default())), *example)
                }
            };
            out.push_str(&comment(&format!("{} {}", opt.help, opt.more)));
            if let Some(shown) = shown {
                out.push_str(&comment(&format!("Default: {shown}")));
            }
            out.push_str(&format!(
                "# {} = {}\n",
                opt.key,
                toml_value(opt.kind, value)
            ));
        }
        out
    }

    #[test]
    fn docs_example_configs_are_generated_from_the_table() {
        let update = std::env::var(UPDATE_VAR).is_ok_and(|v| v == "1");
        for (path, for_programs) in [(EXAMPLE, false), (RUN_EXAMPLE, true)] {
            let generated = example_config(for_programs);
            let committed = std::fs::read_to_string(path).unwrap_or_default();
            if committed == generated {
                continue;
            }
            if update {
                std::fs::write(path, &generated).unwrap();
                // Past the harness's capture of eprintln, so that a passing run says what it
                // wrote.
                let _ = writeln!(std::io::stderr(), "docs: wrote {path}");
                continue;
            }
            panic!(
                "{path} differs from what the option table generates; regenerate it with: \
                 {UPDATE_VAR}=1 cargo test docs"
            );
        }
    }

    #[test]
    fn every_default_parses() {
        for opt in OPTIONS {
            if let Some(value) = opt.default_value() {
                let mut config = Config::default();
                if let Err(e) = opt.apply(&mut config, &[value], &Source::Default) {
                    panic!("the default of {}: {e}", opt.key);
                }
            }
        }
    }

    #[test]
    fn defaults_are_the_tables() {
        let config = Config::default();
        assert_eq!(
            config.bind,
            vec![BindAddr::Tcp(([127, 0, 0, 1], 8000).into())]
        );
        assert_eq!(config.bind_source, Source::Default);
        assert!(config.workers >= 1);
        assert_eq!(config.threads, 1);
        assert_eq!(config.graceful_timeout, std::time::Duration::from_secs(30));
        assert_eq!(config.keepalive, std::time::Duration::from_secs(5));
        assert_eq!(config.shutdown_delay, std::time::Duration::ZERO);
        assert_eq!(config.backlog, 2048);
        assert_eq!(config.root, PathBuf::from("."));
        assert!(!config.follow_symlinks);
        assert!(!config.serve_hidden);
        assert_eq!(config.log_level, tracing::Level::INFO);
        assert_eq!(config.error_logfile, LogTarget::Standard);
        assert_eq!(config.health_path, None);
        assert_eq!(config.access_logfile, None);
        assert_eq!(config.limit_request_line, 4094);
        assert_eq!(config.limit_request_fields, 100);
        assert_eq!(config.limit_request_field_size, 8190);
        assert_eq!(config.http2_max_concurrent_streams, 100);
    }

    #[test]
    fn limits_are_bounded_as_gunicorns() {
        let mut config = Config::default();
        let cli = Source::Cli("limit_request_fields".into());
        config.set("limit_request_fields", "32768", &cli).unwrap();
        assert_eq!(config.limit_request_fields, 32768);
        let err = config
            .set("limit_request_fields", "32769", &cli)
            .unwrap_err();
        assert!(err.to_string().contains("must be at most 32768"), "{err}");
        assert!(config.set("limit_request_fields", "0", &cli).is_err());
        // 0: no limit of its own, as in gunicorn.
        config.set("limit_request_line", "0", &cli).unwrap();
        config.set("limit_request_field_size", "0", &cli).unwrap();
        assert!(
            config
                .set("http2_max_concurrent_streams", "0", &cli)
                .is_err()
        );
    }

    #[test]
    fn names_are_unique_and_well_formed() {
        let mut keys = HashSet::new();
        let mut envs = HashSet::new();
        let mut shorts = HashSet::new();
        for opt in OPTIONS {
            assert!(
                opt.key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{}",
                opt.key
            );
            assert!(keys.insert(opt.key), "{} twice", opt.key);
            assert!(envs.insert(opt.env()), "{} twice", opt.env());
            if let Some(short) = opt.short {
                assert!(shorts.insert(short), "-{short} twice");
            }
            // The default is appended to the help; each text is whole sentences.
            assert!(!opt.help.contains("[default"), "{}", opt.key);
            assert!(opt.help.ends_with('.'), "{}", opt.key);
            assert!(
                opt.more.is_empty() || opt.more.ends_with('.'),
                "{}",
                opt.key
            );
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let source = Source::File("/etc/prefork.toml".into());
        let err = Config::default()
            .set_all("wrokers", &["3".into()], &source)
            .unwrap_err();
        assert!(err.is_config());
        assert_eq!(
            err.to_string(),
            "unknown option 'wrokers' (in config file /etc/prefork.toml)"
        );
    }
}
