//! The library's one error type.

use std::fmt;

/// An error from configuring or running a prefork server.
///
/// The message is one line that names what went wrong and, for bad input, which option and
/// where its value came from. Use the `is_*` predicates to tell the kinds apart.
pub struct Error {
    kind: Kind,
    message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Config,
    Bind,
    Boot,
    Io,
}

impl Error {
    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self::new(Kind::Config, message)
    }

    pub(crate) fn bind(message: impl Into<String>) -> Self {
        Self::new(Kind::Bind, message)
    }

    pub(crate) fn boot(message: impl Into<String>) -> Self {
        Self::new(Kind::Boot, message)
    }

    pub(crate) fn io(context: impl fmt::Display, err: std::io::Error) -> Self {
        Self::new(Kind::Io, format!("{context}: {err}"))
    }

    fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// A bad option value, config file, or environment variable: nothing was started.
    pub fn is_config(&self) -> bool {
        self.kind == Kind::Config
    }

    /// A listening address could not be bound (in use, permission, bad path): nothing was
    /// started.
    pub fn is_bind(&self) -> bool {
        self.kind == Kind::Bind
    }

    /// No worker could start (the application factory panicked, or every worker died before it
    /// was ready).
    pub fn is_boot(&self) -> bool {
        self.kind == Kind::Boot
    }

    /// The operating system refused something the master needs (fork, signals, sockets).
    pub fn is_io(&self) -> bool {
        self.kind == Kind::Io
    }

    /// The process exit status that reports this error: 2 for bad input (config, bind), 3 when
    /// workers failed to boot, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self.kind {
            Kind::Config | Kind::Bind => crate::exit::USAGE,
            Kind::Boot => crate::exit::BOOT_FAILED,
            Kind::Io => crate::exit::FAILURE,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .finish()
    }
}

impl std::error::Error for Error {}
