//! Where a setting's value came from, so that an error can say so.

use std::fmt;
use std::path::PathBuf;

/// The layer a value was taken from. Later layers override earlier ones: defaults, then the
/// config file, then the environment, then the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Source {
    /// The built-in default.
    #[default]
    Default,
    /// Set through the library API.
    Api,
    /// A TOML config file.
    File(PathBuf),
    /// An environment variable, by name.
    Env(String),
    /// A command-line flag, by its long name without the dashes.
    Cli(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("the default"),
            Source::Api => f.write_str("set by the application"),
            Source::File(path) => write!(f, "in config file {}", path.display()),
            Source::Env(name) => write!(f, "from environment variable {name}"),
            Source::Cli(flag) => write!(f, "from --{flag}"),
        }
    }
}
