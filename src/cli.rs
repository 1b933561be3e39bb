//! The command line: `prefork serve` and `prefork check`, with every option also readable from
//! a config file and from `PREFORK_*` environment variables.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueHint};

use crate::Error;
use crate::config::{Config, Source};

/// A multi-worker prefork HTTP server.
///
/// A master process binds the sockets and supervises worker processes that serve HTTP/1.1 and
/// HTTP/2 with tokio and hyper. Stopping, reloading or recycling loses no request and never
/// hangs.
#[derive(Parser, Debug)]
#[command(
    name = "prefork",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start the master and its workers and serve until stopped by a signal.
    Serve(ServeArgs),
    /// Validate the configuration serve would use, without starting anything.
    ///
    /// Checks the options, the environment, the config file, the root directory, users and
    /// groups; binds nothing. Exits 0 when valid, 2 otherwise.
    Check(ServeArgs),
}

/// The options of `serve` and `check`. Each one can also be set in the config file under its
/// name with underscores (`graceful_timeout = "10s"`) and in the environment as
/// `PREFORK_NAME`. Precedence: defaults < config file < environment < command line.
#[derive(Args, Debug)]
struct ServeArgs {
    /// Address to listen on: HOST:PORT, [V6]:PORT or unix:PATH. Repeat for several, or
    /// separate them with commas. [default: 127.0.0.1:8000, or 0.0.0.0:$PORT when PORT is set]
    #[arg(
        short,
        long,
        value_name = "ADDR",
        env = "PREFORK_BIND",
        value_delimiter = ','
    )]
    bind: Vec<String>,

    /// Number of worker processes. [default: $WEB_CONCURRENCY, else the number of CPUs]
    #[arg(short, long, value_name = "N", env = "PREFORK_WORKERS")]
    workers: Option<String>,

    /// Runtime threads per worker: 1 runs a current-thread runtime, more a multi-thread one.
    /// [default: 1]
    #[arg(long, value_name = "N", env = "PREFORK_THREADS")]
    threads: Option<String>,

    /// How long a graceful stop (TERM) may take, from the start of the drain (after any
    /// --shutdown-delay), before what is left is cut. Durations are written 30, 30s, 500ms, 2m
    /// or 1h. [default: 30s]
    #[arg(long, value_name = "DUR", env = "PREFORK_GRACEFUL_TIMEOUT")]
    graceful_timeout: Option<String>,

    /// Kill and replace a worker whose runtime sent no heartbeat for this long (a handler
    /// blocking its thread); 0 turns the check off. [default: 30s]
    #[arg(long, value_name = "DUR", env = "PREFORK_TIMEOUT")]
    timeout: Option<String>,

    /// How long a reload (HUP) waits for the new workers to be ready before it gives up and
    /// keeps the old ones. [default: 30s]
    #[arg(long, value_name = "DUR", env = "PREFORK_RELOAD_TIMEOUT")]
    reload_timeout: Option<String>,

    /// Replace a worker after it served this many requests (its replacement is ready first);
    /// 0 means never. [default: 0]
    #[arg(long, value_name = "N", env = "PREFORK_MAX_REQUESTS")]
    max_requests: Option<String>,

    /// Add up to this many requests, at random, to each worker's --max-requests, so workers do
    /// not all retire at once. [default: 0]
    #[arg(long, value_name = "N", env = "PREFORK_MAX_REQUESTS_JITTER")]
    max_requests_jitter: Option<String>,

    /// Length of each listener's accept queue. [default: 2048]
    #[arg(long, value_name = "N", env = "PREFORK_BACKLOG")]
    backlog: Option<String>,

    /// How long an idle keep-alive connection waits for its next request (an HTTP/2 one is
    /// then sent GOAWAY); also bounds how long a client may take to send request headers. 0
    /// turns HTTP/1 keep-alive off (idle HTTP/2 connections then get 30s). [default: 5s]
    #[arg(long, value_name = "DUR", env = "PREFORK_KEEPALIVE")]
    keepalive: Option<String>,

    /// How long a draining worker keeps idle keep-alive connections open for a request that
    /// may already be on its way (served with Connection: close). [default: 1s]
    #[arg(long, value_name = "DUR", env = "PREFORK_LINGER")]
    linger: Option<String>,

    /// After TERM, keep serving normally this long, with the health path answering 503, so
    /// load balancers stop sending traffic before the drain begins. The graceful timeout
    /// starts after it. [default: 0]
    #[arg(long, value_name = "DUR", env = "PREFORK_SHUTDOWN_DELAY")]
    shutdown_delay: Option<String>,

    /// A path prefork answers itself: 200 while serving, 503 once a stop is requested (for
    /// load balancer health checks), e.g. /healthz. [default: none]
    #[arg(long, value_name = "PATH", env = "PREFORK_HEALTH_PATH")]
    health_path: Option<String>,

    /// Run the master and workers as this user (name or uid) once the sockets are bound, with
    /// its supplementary groups. [default: the user that started prefork]
    #[arg(short, long, value_name = "USER", env = "PREFORK_USER")]
    user: Option<String>,

    /// Run as this group (name or gid); with --user alone, the user's own group.
    /// [default: the group that started prefork]
    #[arg(short, long, value_name = "GROUP", env = "PREFORK_GROUP")]
    group: Option<String>,

    /// File mode creation mask, in octal, set at start. [default: the inherited one]
    #[arg(long, value_name = "MODE", env = "PREFORK_UMASK")]
    umask: Option<String>,

    /// Mode of unix socket files, in octal (e.g. 660); their owner is --user and --group.
    /// [default: from the umask]
    #[arg(long, value_name = "MODE", env = "PREFORK_BIND_MODE")]
    bind_mode: Option<String>,

    /// Write the master's pid to this file once the sockets are bound (refused if it names
    /// a running process); removed at exit. [default: none]
    #[arg(short, long, value_name = "FILE", env = "PREFORK_PID")]
    pid: Option<String>,

    /// Directory served by the built-in static file app. [default: .]
    #[arg(long, value_name = "DIR", env = "PREFORK_ROOT", value_hint = ValueHint::DirPath)]
    root: Option<String>,

    /// Most verbose level logged: error, warn, info, debug or trace. [default: info]
    #[arg(long, value_name = "LEVEL", env = "PREFORK_LOG_LEVEL")]
    log_level: Option<String>,

    /// How log lines are written: text, or json (one object per line, for the error log and
    /// the access log). [default: text]
    #[arg(long, value_name = "FORMAT", env = "PREFORK_LOG_FORMAT")]
    log_format: Option<String>,

    /// Where the master and workers log events: a file (appended to, reopened on USR1) or -
    /// for standard error. [default: -]
    #[arg(long, value_name = "PATH", env = "PREFORK_ERROR_LOGFILE")]
    error_logfile: Option<String>,

    /// Where workers log one line per request (combined log format plus the seconds the
    /// response took to start): a file (appended to, reopened on USR1) or - for standard
    /// output. [default: none]
    #[arg(long, value_name = "PATH", env = "PREFORK_ACCESS_LOGFILE")]
    access_logfile: Option<String>,

    /// TOML config file whose keys are the option names above, with underscores
    /// (graceful_timeout = "10s").
    #[arg(short, long, value_name = "FILE", env = "PREFORK_CONFIG", value_hint = ValueHint::FilePath)]
    config: Option<PathBuf>,
}

/// What the command line asks for.
pub(crate) enum Action {
    Serve(Config),
    Check(Config),
}

/// How parsing ended when it does not end in an [`Action`].
pub(crate) enum Exit {
    /// `--help` or `--version`: already printed, exit 0.
    Printed,
    /// Bad input: the one-line message to print, exit status 2.
    Usage(String),
}

/// The clap definition, for generating man pages and completions.
pub fn command() -> clap::Command {
    Cli::command()
}

/// Parses the command line and the layers under it into a validated [`Config`].
pub(crate) fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Action, Exit> {
    let matches = match Cli::command().try_get_matches_from(args) {
        Ok(m) => m,
        Err(e) => return Err(clap_exit(e)),
    };
    let cli = Cli::from_arg_matches(&matches).map_err(clap_exit)?;
    let (name, sub) = matches
        .subcommand()
        .expect("clap requires a subcommand (subcommand_required is set by derive)");
    let args = match &cli.command {
        Command::Serve(args) | Command::Check(args) => args,
    };
    let config = load(args, sub).map_err(|e| Exit::Usage(e.to_string()))?;
    Ok(if name == "check" {
        Action::Check(config)
    } else {
        Action::Serve(config)
    })
}

/// Reads the configuration again from the same command line, for a reload: the config file
/// may have changed.
pub(crate) fn reload(args: &[OsString]) -> Result<Config, Error> {
    match parse(args.iter().cloned()) {
        Ok(Action::Serve(config) | Action::Check(config)) => Ok(config),
        Err(Exit::Usage(message)) => Err(Error::config(message)),
        // The same arguments asked for no help the first time.
        Err(Exit::Printed) => Err(Error::config("the command line asks for help")),
    }
}

fn load(args: &ServeArgs, matches: &ArgMatches) -> Result<Config, Error> {
    let mut config = Config::default();
    config.apply_platform_env()?;
    if let Some(path) = &args.config {
        config.apply_file(path)?;
    }
    // Environment first, then the command line, whatever order clap lists the ids in.
    for wanted in [ValueSource::EnvVariable, ValueSource::CommandLine] {
        for id in matches.ids().map(|id| id.as_str()) {
            if id == "config" || matches.value_source(id) != Some(wanted) {
                continue;
            }
            // Derive also lists the argument group of the struct itself, which holds ids.
            let Ok(Some(values)) = matches.try_get_many::<String>(id) else {
                continue;
            };
            let values: Vec<String> = values.cloned().collect();
            let source = match wanted {
                ValueSource::EnvVariable => {
                    Source::Env(format!("PREFORK_{}", id.to_ascii_uppercase()))
                }
                _ => Source::Cli(id.replace('_', "-")),
            };
            config.set_all(id, &values, &source)?;
        }
    }
    config.validate()?;
    Ok(config)
}

fn clap_exit(err: clap::Error) -> Exit {
    use clap::error::ErrorKind;
    match err.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            // Help goes to stdout, or stderr for a missing subcommand; clap knows which.
            let _ = err.print();
            if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                return Exit::Usage("a subcommand is required: serve or check".to_string());
            }
            Exit::Printed
        }
        _ => {
            let rendered = err.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            Exit::Usage(format!("{first} (see prefork --help)"))
        }
    }
}
