//! The generated documentation — man pages and shell completions — matches the command line,
//! which `src/cli.rs` builds from the option table in `src/config/options.rs`, and the example
//! config file documents every option with its default, is valid, and says truly which layer
//! wins.
//!
//! The man pages and completions are generated from `prefork::command()` with `clap_mangen`
//! and `clap_complete` and committed; `config/prefork.toml` is generated from the option table
//! by a unit test in `src/config/options.rs`. When an option changes, regenerate them all with
//!
//! ```sh
//! PREFORK_UPDATE_DOCS=1 cargo test docs
//! ```
//!
//! The hand-written sections of `prefork(1)` (signals, drain, environment, files, exit status)
//! live in `man/sections/*.roff`, the only place to edit them; they are spliced into the
//! generated page in the order of their file names.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap_complete::{Generator, Shell};
use clap_mangen::Man;

/// Set to `1` to write the generated files instead of comparing them.
const UPDATE_VAR: &str = "PREFORK_UPDATE_DOCS";
const REGENERATE: &str = "PREFORK_UPDATE_DOCS=1 cargo test docs";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    let path = repo().join(relative);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The CLI as clap sees it after building: subcommands get their display names
/// (`prefork-serve`), `--help` and `--version` exist, and no `help` subcommand is made up.
fn cli() -> clap::Command {
    let mut cmd = prefork::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// The hand-written roff sections of `prefork(1)`, in file-name order.
fn hand_written_sections() -> String {
    let dir = repo().join("man/sections");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "roff"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.roff files in {}", dir.display());
    let mut out = String::new();
    for file in files {
        let text = fs::read_to_string(&file)
            .unwrap()
            .replace(OPTION_VARIABLES, &option_variables());
        out.push_str(&text);
        if !text.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

/// Where ENVIRONMENT lists the variable of every option, generated so that a new option needs
/// no edit here.
const OPTION_VARIABLES: &str = ".\\\" OPTION-VARIABLES\n";

/// One `.TP` entry per option of `serve` that has an environment variable.
fn option_variables() -> String {
    let serve = cli().find_subcommand("serve").unwrap().clone();
    let mut out = String::new();
    for arg in serve.get_arguments() {
        let (Some(env), Some(long)) = (arg.get_env(), arg.get_long()) else {
            continue;
        };
        let flag = long.replace('-', "\\-");
        writeln!(
            out,
            ".TP\n.B {}\nSets\n.BR \\-\\-{flag} .",
            env.to_string_lossy()
        )
        .unwrap();
    }
    out
}

/// Renders one man page, with `extra` roff inserted before the VERSION section (or at the end
/// when there is none), where man pages keep their reference sections.
fn man_page(cmd: clap::Command, extra: &str) -> (String, Vec<u8>) {
    // Every page names the package, not the subcommand, as its source.
    let source = format!("prefork {}", cmd.get_version().unwrap_or_default());
    let man = Man::new(cmd).source(source);
    let mut page = Vec::new();
    man.render(&mut page).expect("rendering to memory");
    let mut page = String::from_utf8(page).expect("clap_mangen writes UTF-8");
    let at = page.find("\n.SH VERSION\n").map_or(page.len(), |i| i + 1);
    page.insert_str(at, extra);
    (man.get_filename(), page.into_bytes())
}

/// The reference section of the subcommands' pages, which leave the rest to `prefork(1)`.
const SUBCOMMAND_SEE_ALSO: &str = r#".SH "SEE ALSO"
.BR prefork (1)
for the signals the master handles, drain semantics, the environment, the config file and exit
statuses.
The source tree has an annotated example config file, config/prefork.toml.
"#;

/// Every generated file: its path relative to the repository and its contents.
fn generated() -> Vec<(PathBuf, Vec<u8>)> {
    let cmd = cli();
    let mut files = Vec::new();

    let (name, page) = man_page(cmd.clone(), &hand_written_sections());
    files.push((Path::new("man").join(name), page));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let (name, page) = man_page(sub.clone(), SUBCOMMAND_SEE_ALSO);
        files.push((Path::new("man").join(name), page));
    }

    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), "prefork", &mut out);
        files.push((
            Path::new("completions").join(shell.file_name("prefork")),
            out,
        ));
    }
    files
}

/// Files in the generated directories that the CLI no longer produces (a removed subcommand's
/// man page), so that they are not left behind.
fn leftovers(generated: &[(PathBuf, Vec<u8>)]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for (dir, is_generated) in [
        (
            "man",
            (|p: &Path| p.extension().is_some_and(|e| e == "1")) as fn(&Path) -> bool,
        ),
        ("completions", |_: &Path| true),
    ] {
        let Ok(entries) = fs::read_dir(repo().join(dir)) else {
            continue;
        };
        for entry in entries {
            let entry = entry.unwrap();
            let relative = Path::new(dir).join(entry.file_name());
            if entry.file_type().unwrap().is_file()
                && is_generated(&relative)
                && !generated.iter().any(|(path, _)| *path == relative)
            {
                out.push(relative);
            }
        }
    }
    out.sort();
    out
}

/// Prints past the test harness's output capture, so that a passing update run still says
/// what it wrote.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

#[test]
fn generated_docs_match_the_cli() {
    let update = std::env::var(UPDATE_VAR).is_ok_and(|v| v == "1");
    let files = generated();
    let mut stale = Vec::new();
    let mut wrote = false;
    for (relative, contents) in &files {
        let path = repo().join(relative);
        if fs::read(&path).ok().as_deref() == Some(contents.as_slice()) {
            continue;
        }
        if update {
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, contents)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
            say(&format!("docs: wrote {}", relative.display()));
            wrote = true;
        } else {
            let why = if path.exists() {
                "differs from what the CLI generates"
            } else {
                "is missing"
            };
            stale.push(format!("{} {why}", relative.display()));
        }
    }
    for relative in leftovers(&files) {
        if update {
            fs::remove_file(repo().join(&relative)).unwrap();
            say(&format!("docs: removed {}", relative.display()));
            wrote = true;
        } else {
            stale.push(format!(
                "{} is no longer generated by the CLI",
                relative.display()
            ));
        }
    }
    if update && !wrote {
        say("docs: man/ and completions/ are up to date, nothing written");
    }
    assert!(
        stale.is_empty(),
        "the committed man pages / shell completions are out of date with the CLI:\n  {}\n\
         regenerate them with: {REGENERATE}\n\
         (hand-written man page sections are in man/sections/*.roff)",
        stale.join("\n  ")
    );
}

/// The ENVIRONMENT section names every variable an option can be read from.
#[test]
fn docs_man_page_names_every_environment_variable() {
    let sections = hand_written_sections();
    let serve = cli().find_subcommand("serve").unwrap().clone();
    let mut missing: Vec<String> = serve
        .get_arguments()
        .filter_map(|arg| arg.get_env())
        .map(|env| env.to_string_lossy().into_owned())
        .chain(["WEB_CONCURRENCY".to_string(), "PORT".to_string()])
        .filter(|name| !sections.contains(&format!(".B {name}\n")))
        .collect();
    missing.sort();
    assert!(
        missing.is_empty(),
        "man/sections/*.roff lacks an entry `.B NAME` (in ENVIRONMENT) for: {}",
        missing.join(", ")
    );
}

/// The EXIT STATUS section has an entry for every status in `src/exit.rs`.
#[test]
fn docs_man_page_names_every_exit_status() {
    let sections = hand_written_sections();
    let exit_rs = read("src/exit.rs");
    let mut statuses = Vec::new();
    for line in exit_rs.lines() {
        let Some(rest) = line.trim().strip_prefix("pub const ") else {
            continue;
        };
        let (name, value) = rest.split_once(':').unwrap();
        let value = value
            .split('=')
            .nth(1)
            .unwrap()
            .trim()
            .trim_end_matches(';');
        statuses.push((name.trim().to_string(), value.to_string()));
    }
    assert!(!statuses.is_empty(), "no `pub const` in src/exit.rs");
    let missing: Vec<String> = statuses
        .iter()
        .filter(|(_, value)| !sections.contains(&format!(".B {value}\n")))
        .map(|(name, value)| format!("{name} = {value}"))
        .collect();
    assert!(
        missing.is_empty(),
        "man/sections/*.roff lacks an entry `.B N` (in EXIT STATUS) for: {}",
        missing.join(", ")
    );
}

/// Keys set or shown commented out in a TOML config: `name = ...` or `# name = ...`.
fn config_keys(text: &str) -> Vec<(String, bool)> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let (commented, line) = match line.strip_prefix('#') {
                Some(rest) => (true, rest.trim_start()),
                None => (false, line),
            };
            let (key, _) = line.split_once('=')?;
            let key = key.trim_end();
            (!key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .then(|| (key.to_string(), commented))
        })
        .collect()
}

/// Runs `prefork check -c FILE ARGS` in the repository (where `root = "."` exists) with `env`
/// and none of the other environment variables that would override the file.
fn check(config: &Path, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_prefork"));
    cmd.arg("check")
        .arg("-c")
        .arg(config)
        .args(args)
        .current_dir(repo())
        .env_remove("PORT")
        .env_remove("WEB_CONCURRENCY");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PREFORK_") {
            cmd.env_remove(name);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("running prefork check")
}

/// The example config files: `serve`'s, and `run`'s (checked with a program).
const EXAMPLES: &[(&str, &str, &[&str])] = &[
    ("config/prefork.toml", "serve", &[]),
    ("config/prefork-run.toml", "run", &["--", "true"]),
];

#[test]
fn docs_example_configs_document_every_option_and_are_valid() {
    for (example, command, check_args) in EXAMPLES {
        example_documents_every_option_and_is_valid(example, command, check_args);
    }
}

fn example_documents_every_option_and_is_valid(example: &str, command: &str, check_args: &[&str]) {
    let text = read(example);
    let keys = config_keys(&text);

    let serve = cli().find_subcommand(command).unwrap().clone();
    let mut missing = Vec::new();
    for arg in serve.get_arguments() {
        let id = arg.get_id().as_str();
        let Some(long) = arg.get_long() else {
            continue;
        };
        if matches!(id, "config" | "help" | "version") {
            continue;
        }
        let key = long.replace('-', "_");
        if !keys.iter().any(|(k, _)| *k == key) {
            missing.push(key);
        }
    }
    assert!(
        missing.is_empty(),
        "{example} does not document these options of `prefork {command}` \
         (as `name = value` or `# name = value`): {}",
        missing.join(", ")
    );

    let mut duplicates: Vec<&str> = keys
        .iter()
        .enumerate()
        .filter(|(i, (k, _))| keys[..*i].iter().any(|(other, _)| other == k))
        .map(|(_, (k, _))| k.as_str())
        .collect();
    duplicates.dedup();
    assert!(
        duplicates.is_empty(),
        "{example} shows these keys more than once, so uncommenting them all would not parse: {}",
        duplicates.join(", ")
    );

    // The file as shipped.
    let out = check(&repo().join(example), &[], check_args);
    assert!(
        out.status.success(),
        "prefork check -c {example} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    // With every commented-out example uncommented: each documented default must be valid.
    let mut uncommented = String::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        let shown = config_keys(line)
            .first()
            .is_some_and(|(_, commented)| *commented);
        if shown {
            let rest = trimmed.strip_prefix('#').unwrap().trim_start();
            writeln!(uncommented, "{rest}").unwrap();
        } else {
            writeln!(uncommented, "{line}").unwrap();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let all = dir.path().join("all-options.toml");
    fs::write(&all, &uncommented).unwrap();
    // The example's TLS files are where a server keeps them; files made here stand in for
    // them, given on the command line, which overrides the file.
    let mut args: Vec<String> = Vec::new();
    if command == "serve" {
        let authority = crate::support::certs::Authority::new("example CA");
        let files = authority.server(1, 30).write(dir.path(), "server");
        let ca = dir.path().join("ca.pem");
        fs::write(&ca, authority.pem()).unwrap();
        for (flag, path) in [
            ("--certfile", &files.cert),
            ("--keyfile", &files.key),
            ("--ca-certs", &ca),
        ] {
            args.extend([flag.to_string(), path.display().to_string()]);
        }
    }
    args.extend(check_args.iter().map(ToString::to_string));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = check(&all, &[], &args);
    assert!(
        out.status.success(),
        "{example} with every `# name = value` line uncommented does not pass prefork check \
         ({}):\n{}\n--- the uncommented file ---\n{uncommented}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Compares the defaults `--help` of `command` states with those `example` shows; collects
/// every default in `defaults` and every disagreement in `wrong`.
fn defaults_agree(
    example: &str,
    command: &str,
    defaults: &mut std::collections::HashMap<String, String>,
    wrong: &mut Vec<String>,
) {
    let text = read(example);
    let cli = cli().find_subcommand(command).unwrap().clone();
    for arg in cli.get_arguments() {
        let (Some(long), Some(default)) = (arg.get_long(), help_default(arg)) else {
            continue;
        };
        let key = long.replace('-', "_");
        let shown = text.lines().find_map(|line| {
            let rest = line
                .trim()
                .strip_prefix('#')?
                .trim_start()
                .strip_prefix(&*key)?;
            let value = rest.trim_start().strip_prefix('=')?.trim();
            Some(value.trim_matches('"').to_string())
        });
        match shown {
            Some(value) if value == default => {}
            other => wrong.push(format!(
                "{key}: --help says {default}, {example} shows {other:?}"
            )),
        }
        defaults.insert(key, default);
    }
}

/// The `[default: X]` at the end of an option's help, when it is one plain value.
fn help_default(arg: &clap::Arg) -> Option<String> {
    let help = arg.get_help()?.to_string();
    let (_, rest) = help.rsplit_once("[default: ")?;
    let value = rest.strip_suffix(']')?;
    (value != "none" && !value.contains([' ', ',', '$'])).then(|| value.to_string())
}

/// A duration as the CLI writes it (`30`, `30s`, `500ms`, `2m`, `1h`), in milliseconds.
fn millis(text: &str) -> u64 {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (n, unit) = text.split_at(split);
    let n: u64 = n
        .parse()
        .unwrap_or_else(|_| panic!("not a duration: {text}"));
    n * match unit {
        "" | "s" => 1_000,
        "ms" => 1,
        "min" | "m" => 60_000,
        "h" => 3_600_000,
        _ => panic!("not a duration: {text}"),
    }
}

/// The defaults shown in the example config are the ones `--help` states, and the systemd
/// unit's stop timeout leaves room for prefork's own deadline.
#[test]
fn docs_defaults_agree_with_the_cli() {
    let mut defaults = std::collections::HashMap::new();
    let mut wrong = Vec::new();
    for (example, command, _) in EXAMPLES {
        defaults_agree(example, command, &mut defaults, &mut wrong);
    }
    assert!(
        wrong.is_empty(),
        "the example configs should show each option commented out with its default \
         (`# key = default`):\n  {}",
        wrong.join("\n  ")
    );

    let prefork_deadline: u64 = ["graceful_timeout", "shutdown_delay"]
        .iter()
        .map(|key| defaults.get(*key).map_or(0, |d| millis(d)))
        .sum();
    for unit_file in ["config/prefork.service", "config/prefork-fastapi.service"] {
        let unit = read(unit_file);
        let stop = unit
            .lines()
            .find_map(|line| line.trim().strip_prefix("TimeoutStopSec="))
            .unwrap_or_else(|| panic!("{unit_file} sets no TimeoutStopSec="));
        assert!(
            millis(stop) > prefork_deadline,
            "TimeoutStopSec={stop} in {unit_file} must be larger than the default \
             shutdown_delay + graceful_timeout ({prefork_deadline} ms)"
        );
    }
}

/// The precedence the example config file states: WEB_CONCURRENCY, then the file, then
/// PREFORK_* variables, then the command line, each overriding the one before.
#[test]
fn docs_precedence_is_as_the_example_config_states() {
    let prose: Vec<String> = read("config/prefork.toml")
        .lines()
        .map(|line| line.trim_start_matches('#').trim().to_string())
        .collect();
    assert!(
        prose.join(" ").contains(
            "Precedence, lowest first: built-in defaults, WEB_CONCURRENCY and PORT, this file, \
             PREFORK_* environment variables, the command line."
        ),
        "config/prefork.toml no longer states the precedence this test checks"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prefork.toml");
    fs::write(&file, "workers = 3\n").unwrap();
    let workers = |env: &[(&str, &str)], args: &[&str]| {
        let out = check(&file, env, args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
            .split_once("valid: ")
            .and_then(|(_, rest)| rest.split_once(" worker(s)"))
            .map(|(n, _)| n.to_string())
            .unwrap_or_else(|| panic!("prefork check printed no worker count: {stdout}"))
    };
    let platform = ("WEB_CONCURRENCY", "2");
    let env = ("PREFORK_WORKERS", "4");
    assert_eq!(
        workers(&[platform], &[]),
        "3",
        "the file over WEB_CONCURRENCY"
    );
    assert_eq!(
        workers(&[platform, env], &[]),
        "4",
        "the environment over the file"
    );
    assert_eq!(
        workers(&[platform, env], &["--workers", "5"]),
        "5",
        "the command line over the environment"
    );
}
