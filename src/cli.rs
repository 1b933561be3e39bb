//! The command line: `prefork serve` and `prefork check`, with every option also readable from
//! a config file and from `PREFORK_*` environment variables.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, ValueHint};

use crate::Error;
use crate::config::options::{Kind, OPTIONS, Opt};
use crate::config::{Config, Source};

const ABOUT: &str = "A multi-worker prefork HTTP server.

A master process binds the sockets and supervises worker processes that serve HTTP/1.1 and \
HTTP/2 with tokio and hyper. Stopping, reloading or recycling loses no request and never hangs.";
const SERVE_ABOUT: &str = "Start the master and its workers and serve until stopped by a signal.";
const RUN_ABOUT: &str = "Run a program of any language as the workers, on sockets the master binds.

Each worker executes PROGRAM with ARGS, in a process group of its own, with the listening sockets \
as descriptors 3, 4, ... (LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES, as systemd passes them); \
{fd} in ARGS becomes 3. PREFORK_WORKER holds the worker's slot and NOTIFY_SOCKET the master's \
socket for READY=1 and WATCHDOG=1. TERM drains: the programs get --worker-stop-signal, and \
their process groups are killed at the graceful timeout. HUP starts new programs (new code) and \
stops the old ones once the new are ready.";
const CHECK_ABOUT: &str = "Validate the configuration serve would use, without starting anything.

Checks the options, the environment, the config file, the root directory, users and groups; \
binds nothing. Exits 0 when valid, 2 otherwise.";

/// A command with `about` as its long description, and its first sentence, as a title without
/// the full stop, as its short one (the NAME line of its man page).
fn described(name: &'static str, about: &'static str) -> clap::Command {
    let (first, rest) = about.split_once("\n\n").unwrap_or((about, ""));
    let command = clap::Command::new(name).about(first.trim_end_matches('.'));
    if rest.is_empty() {
        command
    } else {
        command.long_about(about)
    }
}

/// The positional arguments of `run`: the program and its arguments.
const PROGRAM: &str = "program";

const RUN_EXAMPLE: &str =
    "Example: prefork run -w 4 --graceful-timeout 10s -- uvicorn app:app --fd {fd}";

/// The flag naming the config file: the one option that is not a setting, so not in the table.
const CONFIG: &str = "config";

/// One option of the table as a flag, read from `PREFORK_<KEY>` too, its help ending in the
/// default.
fn arg(opt: &Opt) -> Arg {
    let default = opt.shown_default();
    let mut arg = Arg::new(opt.key)
        .long(opt.long())
        .short(opt.short)
        .value_name(opt.value_name)
        .env(opt.env())
        .help(format!("{} [default: {default}]", opt.help))
        .value_hint(match opt.kind {
            Kind::File | Kind::Files => ValueHint::FilePath,
            Kind::Dir => ValueHint::DirPath,
            // Numbers are typed, not completed; addresses may be unix socket paths.
            Kind::Count | Kind::Duration | Kind::Flag => ValueHint::Other,
            Kind::Addrs | Kind::Text => ValueHint::Unknown,
        });
    if !opt.more.is_empty() {
        arg = arg.long_help(format!("{} {} [default: {default}]", opt.help, opt.more));
    }
    if opt.kind == Kind::Addrs {
        arg = arg.action(ArgAction::Append).value_delimiter(',');
    }
    if opt.kind == Kind::Files {
        arg = arg.action(ArgAction::Append);
    }
    if opt.kind == Kind::Flag {
        // A value only after `=`, so that the flag never takes the next argument as its own.
        // Not clap's SetTrue: its value is no string, and PREFORK_* variables then take only
        // clap's own spellings of yes and no.
        arg = arg
            .num_args(0..=1)
            .require_equals(true)
            .default_missing_value("true");
    }
    arg
}

/// The options of `serve` (`Some(false)`), of `run` (`Some(true)`), or of both, for `check`. Each one can also be set
/// in the config file under its name with underscores (`graceful_timeout = "10s"`) and in the
/// environment as `PREFORK_NAME`. Precedence: defaults < config file < environment < command
/// line.
fn options(for_programs: Option<bool>) -> impl Iterator<Item = Arg> {
    let table = OPTIONS
        .iter()
        .filter(move |opt| for_programs.is_none_or(|programs| opt.applies.to(programs)));
    table.map(arg).chain([Arg::new(CONFIG)
        .short('c')
        .long(CONFIG)
        .value_name("FILE")
        .env("PREFORK_CONFIG")
        .value_hint(ValueHint::FilePath)
        .value_parser(clap::value_parser!(PathBuf))
        .help(
            "TOML config file whose keys are the option names above, with underscores \
             (graceful_timeout = \"10s\")",
        )])
}

/// What the command line asks for.
pub(crate) enum Action {
    Serve(Config),
    Check(Config),
    /// `run`: the configuration holds the program.
    Run(Config),
}

/// How parsing ended when it does not end in an [`Action`].
pub(crate) enum Exit {
    /// `--help` or `--version`: already printed, exit 0.
    Printed,
    /// Bad input: the one-line message to print, exit status 2.
    Usage(String),
}

/// The clap definition of the command line, built from the option table; man pages and
/// completions are generated from it.
pub fn command() -> clap::Command {
    described("prefork", ABOUT)
        .version(env!("CARGO_PKG_VERSION"))
        .propagate_version(true)
        .max_term_width(100)
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand(described("serve", SERVE_ABOUT).args(options(Some(false))))
        .subcommand(
            described("run", RUN_ABOUT)
                .args(options(Some(true)))
                .arg(program().required(true))
                .after_help(RUN_EXAMPLE),
        )
        .subcommand(
            described("check", CHECK_ABOUT)
                .args(options(None))
                .arg(program().help("With a program: check as prefork run would")),
        )
}

/// The program of `run`, then its arguments.
fn program() -> Arg {
    Arg::new(PROGRAM)
        .value_name("PROGRAM")
        .help("The program each worker runs, then its arguments")
        .num_args(1..)
        .trailing_var_arg(true)
        .value_hint(ValueHint::CommandWithArguments)
        .value_parser(clap::value_parser!(OsString))
}

/// Parses the command line and the layers under it into a validated [`Config`].
pub(crate) fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Action, Exit> {
    let matches = command().try_get_matches_from(args).map_err(clap_exit)?;
    let (name, sub) = matches
        .subcommand()
        .expect("clap requires a subcommand (subcommand_required is set)");
    let config = load(sub).map_err(|e| Exit::Usage(e.to_string()))?;
    Ok(match name {
        "check" => Action::Check(config),
        "run" => Action::Run(config),
        _ => Action::Serve(config),
    })
}

/// Reads the configuration again from the same command line, for a reload: the config file
/// may have changed.
pub(crate) fn reload(args: &[OsString]) -> Result<Config, Error> {
    match parse(args.iter().cloned()) {
        Ok(Action::Serve(config) | Action::Check(config) | Action::Run(config)) => Ok(config),
        Err(Exit::Usage(message)) => Err(Error::config(message)),
        // The same arguments asked for no help the first time.
        Err(Exit::Printed) => Err(Error::config("the command line asks for help")),
    }
}

fn load(matches: &ArgMatches) -> Result<Config, Error> {
    // Known before the config file is read: it decides which keys the file may hold.
    let program = matches
        .try_get_many::<OsString>(PROGRAM)
        .ok()
        .flatten()
        .map(|args| args.cloned().collect());
    let mut config = Config {
        program,
        ..Config::default()
    };
    config.apply_platform_env()?;
    if let Some(path) = matches.get_one::<PathBuf>(CONFIG) {
        config.apply_file(path)?;
    }
    let for_programs = config.program.is_some();
    let defined: Vec<&str> = matches.ids().map(clap::Id::as_str).collect();
    // Environment first, then the command line, whatever order clap lists the ids in.
    for wanted in [ValueSource::EnvVariable, ValueSource::CommandLine] {
        for opt in OPTIONS.iter().filter(|opt| defined.contains(&opt.key)) {
            if matches.value_source(opt.key) != Some(wanted) {
                continue;
            }
            let Some(values) = matches.get_many::<String>(opt.key) else {
                continue;
            };
            let values: Vec<String> = values.cloned().collect();
            let source = match wanted {
                // One environment may be shared by servers and programs: a variable of the
                // other command is not this one's mistake.
                ValueSource::EnvVariable if !opt.applies.to(for_programs) => continue,
                ValueSource::EnvVariable => Source::Env(opt.env()),
                // Refused by `check` when it belongs to the other command.
                _ => Source::Cli(opt.long()),
            };
            config.set_all(opt.key, &values, &source)?;
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
            let mut lines = rendered.lines();
            let first = lines.next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            // "…were not provided:" is followed by what was missing, on the next line.
            let first = match (first.ends_with(':'), lines.next()) {
                (true, Some(what)) => format!("{first} {}", what.trim()),
                _ => first.to_string(),
            };
            Exit::Usage(format!("{first} (see prefork --help)"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        // Duplicate flags or ids, including -c, -h and -V next to the table's, panic here.
        command().debug_assert();
    }

    #[test]
    fn flags_reach_their_options() {
        let args = [
            "prefork",
            "check",
            "--graceful-timeout",
            "10s",
            "-b",
            "127.0.0.1:1,127.0.0.1:2",
        ];
        let Ok(Action::Check(config)) = parse(args.map(OsString::from)) else {
            panic!("check with valid options did not parse");
        };
        assert_eq!(config.graceful_timeout, std::time::Duration::from_secs(10));
        assert_eq!(config.bind.len(), 2);
        assert_eq!(config.bind_source, Source::Cli("bind".into()));
    }

    #[test]
    fn flags_need_no_value() {
        let parse_check = |extra: &[&str]| {
            let args = ["prefork", "check"].iter().chain(extra).map(OsString::from);
            match parse(args) {
                Ok(Action::Check(config)) => (config.follow_symlinks, config.serve_hidden),
                _ => panic!("check {extra:?} did not parse"),
            }
        };
        assert_eq!(parse_check(&[]), (false, false));
        assert_eq!(
            parse_check(&["--follow-symlinks", "--serve-hidden"]),
            (true, true)
        );
        assert_eq!(parse_check(&["--follow-symlinks=false"]), (false, false));
        assert_eq!(parse_check(&["--serve-hidden=yes"]), (false, true));
    }
}
