//! prefork: a multi-worker prefork HTTP server for any tower service.
//!
//! A master process binds the listening sockets and forks worker processes that share them;
//! each worker runs its own tokio runtime and serves HTTP/1.1 and HTTP/2 (cleartext) with
//! hyper. The master supervises the workers: graceful stop with a deadline, quick stop, crash
//! recovery, scaling. Stopping never loses a request the server accepted and never hangs.
//!
//! Hand prefork a factory for your service instead of calling `axum::serve`:
//!
//! ```no_run
//! use axum::{Router, routing::get};
//!
//! fn main() -> std::process::ExitCode {
//!     // Parses `serve` / `check`, the config file and PREFORK_* variables, then runs.
//!     prefork::main(|_worker| Router::new().route("/", get(|| async { "Hello" })))
//! }
//! ```
//!
//! The factory runs in every worker after the fork, inside the worker's runtime. Call
//! [`main`] (or [`Server::serve`]) from a plain `fn main`, before any thread or async runtime
//! exists: the master forks, and a fork from a multi-threaded process is unsafe.

pub mod app;
mod application;
mod cli;
mod config;
mod drain;
mod error;
pub mod exit;
mod log;
mod master;
mod process;
mod program;
mod stall;
mod worker;

use std::process::ExitCode;

pub use application::{
    AppService, BoxError, ClientAddr, FileSender, FileSpan, RequestBody, WorkerContext,
};
pub use cli::command;
pub use config::{BindAddr, Config, LogFormat, LogTarget, Source};
pub use drain::Drain;
pub use error::Error;

/// Reads the configuration again when the master is told to reload (SIGHUP).
type Reconfigure = Box<dyn Fn() -> Result<Config, Error>>;

/// A prefork server, ready to bind and run.
pub struct Server {
    config: Config,
    reconfigure: Option<Reconfigure>,
    /// The command line, when [`main`] parsed it: a reload then executes the binary on disk.
    command_line: Option<Vec<std::ffi::OsString>>,
}

impl Server {
    /// A server that runs with `config`.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            reconfigure: None,
            command_line: None,
        }
    }

    /// A reload executes the binary at the path this one was started from, run with
    /// `command_line`, in the master's own pid: the way to deploy new code. Only [`main`] knows
    /// a command line the binary on disk understands, so only it sets this.
    fn upgrades(mut self, command_line: Vec<std::ffi::OsString>) -> Self {
        self.command_line = Some(command_line);
        self
    }

    /// How a reload (SIGHUP) gets its new configuration, when it does not execute a new binary
    /// (see [`main`]). An error keeps the running workers
    /// and is logged. Default: the configuration the server started with, so a reload
    /// replaces every worker with a fresh one.
    pub fn reload_with(
        mut self,
        reconfigure: impl Fn() -> Result<Config, Error> + 'static,
    ) -> Self {
        self.reconfigure = Some(Box::new(reconfigure));
        self
    }

    /// Binds the listeners, forks the workers, and supervises them until a signal stops the
    /// server. `factory` builds the service in each worker, after the fork; if it panics, the
    /// worker fails to boot and, at startup, the whole server stops with [`Error::is_boot`].
    ///
    /// Returns `Ok(())` after a graceful or quick stop. Must be called while the process has
    /// a single thread.
    pub fn serve<F, S>(mut self, factory: F) -> Result<(), Error>
    where
        F: Fn(&WorkerContext) -> S,
        S: AppService,
    {
        self.config.validate()?;
        if let Some(program) = &self.config.program {
            program::check(program)?;
        }
        let config = &self.config;
        log::init(&log::Settings {
            level: config.log_level,
            format: config.log_format,
            error_log: (&config.error_logfile, &config.error_logfile_source),
            access_log: config
                .access_logfile
                .as_ref()
                .map(|target| (target, &config.access_logfile_source)),
        })?;
        for warning in self.config.warnings() {
            tracing::warn!("{warning}");
        }
        let initial = self.config.clone();
        // The same settings, with the TLS files read again: a reload takes up a renewed
        // certificate.
        let same = move || {
            let mut config = initial.clone();
            config.validate()?;
            Ok(config)
        };
        let reconfigure: &dyn Fn() -> Result<Config, Error> = match &self.reconfigure {
            Some(f) => f.as_ref(),
            None => &same,
        };
        match master::Master::start(self.config, reconfigure, self.command_line)?.run() {
            master::Ran::Stopped(result) => result,
            master::Ran::Worker(handoff) => {
                let code = if handoff.program.is_some() {
                    program::exec(*handoff)
                } else {
                    worker::run(*handoff, &factory)
                };
                std::process::exit(i32::from(code))
            }
        }
    }
}

/// The whole command line: parses `serve` or `check` with their options, the config file and
/// the environment, then serves with `factory`. Bad input prints one line and returns exit
/// status 2 (see [`exit`] for the others).
pub fn main<F, S>(factory: F) -> ExitCode
where
    F: Fn(&WorkerContext) -> S,
    S: AppService,
{
    let fail = |message: &dyn std::fmt::Display, code: u8| {
        eprintln!("prefork: error: {message}");
        ExitCode::from(code)
    };
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match cli::parse(args.iter().cloned()) {
        Err(cli::Exit::Printed) => ExitCode::SUCCESS,
        Err(cli::Exit::Usage(message)) => fail(&message, exit::USAGE),
        Ok(cli::Action::Check(config)) => {
            if let Some(Err(e)) = config.program.as_deref().map(program::check) {
                return fail(&e, e.exit_code());
            }
            for warning in config.warnings() {
                eprintln!("prefork: warning: {warning}");
            }
            let https = config
                .https_bind
                .iter()
                .map(|addr| format!("https://{addr}"));
            println!(
                "prefork: configuration is valid: {} worker(s) on {}",
                config.workers,
                config
                    .bind
                    .iter()
                    .map(ToString::to_string)
                    .chain(https)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            ExitCode::SUCCESS
        }
        Ok(cli::Action::Serve(config)) => match Server::new(config)
            .upgrades(args.clone())
            .reload_with(move || cli::reload(&args))
            .serve(factory)
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e, e.exit_code()),
        },
        // A reload starts the programs anew, which is how their new code is deployed; the
        // master itself is not executed again.
        Ok(cli::Action::Run(config)) => match Server::new(config)
            .reload_with(move || cli::reload(&args))
            .serve(factory)
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e, e.exit_code()),
        },
    }
}
