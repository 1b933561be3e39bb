//! Logging: the error log (every event of the master and the workers, one line each) and the
//! reopenable files behind it and the access log. Writes are synchronous, so the master needs no
//! logging thread, and each line is one `write` to a file opened for appending, so lines from
//! several processes never interleave.

use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use crate::Error;
use crate::config::{Config, LogFormat, LogTarget};

/// A log destination that can be reopened by path.
pub(crate) struct Sink {
    target: LogTarget,
    file: Mutex<Option<File>>,
    standard: fn(&[u8]) -> io::Result<()>,
}

impl Sink {
    pub(crate) fn open(
        target: &LogTarget,
        standard: fn(&[u8]) -> io::Result<()>,
    ) -> io::Result<Sink> {
        let file = match target {
            LogTarget::Standard => None,
            LogTarget::File(path) => Some(append(path)?),
        };
        Ok(Sink {
            target: target.clone(),
            file: Mutex::new(file),
            standard,
        })
    }

    /// Opens the path again: after logrotate moved the file, new lines go to a new file.
    pub(crate) fn reopen(&self) -> io::Result<()> {
        if let LogTarget::File(path) = &self.target {
            let file = append(path)?;
            *self.file.lock().unwrap_or_else(|e| e.into_inner()) = Some(file);
        }
        Ok(())
    }

    /// Writes one whole line with a single call.
    pub(crate) fn write_line(&self, line: &[u8]) -> io::Result<()> {
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        match file.as_mut() {
            Some(file) => file.write_all(line),
            None => (self.standard)(line),
        }
    }
}

fn append(path: &PathBuf) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

pub(crate) fn to_stderr(line: &[u8]) -> io::Result<()> {
    io::stderr().lock().write_all(line)
}

pub(crate) fn to_stdout(line: &[u8]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(line)?;
    out.flush()
}

static ERROR_LOG: OnceLock<Sink> = OnceLock::new();

/// Opens the log files (a bad path is bad input, reported before anything starts) and installs
/// the global subscriber, unless the application installed one already.
pub(crate) fn init(config: &Config) -> Result<(), Error> {
    let sink = Sink::open(&config.error_logfile, to_stderr).map_err(|e| {
        Error::config(format!(
            "cannot open error log {} ({}): {e}",
            describe(&config.error_logfile),
            config.error_logfile_source
        ))
    })?;
    crate::access_log::init(config)?;
    let colour = config.error_logfile == LogTarget::Standard && io::stderr().is_terminal();
    if ERROR_LOG.set(sink).is_err() {
        return Ok(());
    }
    let builder = tracing_subscriber::fmt()
        .with_max_level(config.log_level)
        .with_writer(|| ErrorLogWriter)
        .with_target(false);
    let _ = match config.log_format {
        LogFormat::Text => builder.with_ansi(colour).try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
    Ok(())
}

/// Reopens every log file of this process (SIGUSR1 in the master, a message in a worker).
pub(crate) fn reopen() {
    let sinks = [ERROR_LOG.get(), crate::access_log::sink()];
    for sink in sinks.into_iter().flatten() {
        if let Err(e) = sink.reopen() {
            tracing::error!("cannot reopen {}: {e}", describe(&sink.target));
        }
    }
}

pub(crate) fn describe(target: &LogTarget) -> String {
    match target {
        LogTarget::Standard => "-".to_string(),
        LogTarget::File(path) => path.display().to_string(),
    }
}

struct ErrorLogWriter;

impl Write for ErrorLogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match ERROR_LOG.get() {
            Some(sink) => sink.write_line(buf)?,
            None => to_stderr(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
