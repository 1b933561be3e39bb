//! Logging: the error log (every event of the master and the workers, one line each) and the
//! reopenable files behind it and the access log. Writes are synchronous, so the master needs no
//! logging thread, and each line is one `write` to a file opened for appending, so lines from
//! several processes never interleave.

pub(crate) mod access;
mod sink;

use std::io::{self, IsTerminal, Write};
use std::sync::OnceLock;

use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::Error;
use crate::config::{LogFormat, LogTarget, Source};
use sink::{Sink, describe, to_stderr};

static ERROR_LOG: OnceLock<Sink> = OnceLock::new();

/// What logging is set up with: the log options of the configuration and where each came
/// from, so that a file that cannot be opened is reported against its option.
pub(crate) struct Settings<'a> {
    pub(crate) level: tracing::Level,
    pub(crate) format: LogFormat,
    pub(crate) error_log: (&'a LogTarget, &'a Source),
    pub(crate) access_log: Option<(&'a LogTarget, &'a Source)>,
}

/// Opens the log files (a bad path is bad input, reported before anything starts) and installs
/// the global subscriber, unless the application installed one already.
pub(crate) fn init(settings: &Settings) -> Result<(), Error> {
    let (target, source) = settings.error_log;
    let sink = Sink::open(target, to_stderr).map_err(|e| {
        Error::config(format!(
            "cannot open error log {} ({source}): {e}",
            describe(target),
        ))
    })?;
    if let Some((target, source)) = settings.access_log {
        access::init(target, source, settings.format)?;
    }
    let colour = *target == LogTarget::Standard && io::stderr().is_terminal();
    if ERROR_LOG.set(sink).is_err() {
        return Ok(());
    }
    let builder = tracing_subscriber::fmt()
        .with_max_level(settings.level)
        .with_writer(|| ErrorLogWriter)
        .with_target(false);
    let not_the_clients =
        filter_fn(|event| !from_a_client(event)).with_max_level_hint(settings.level);
    let _ = match settings.format {
        LogFormat::Text => builder
            .with_ansi(colour)
            .finish()
            .with(not_the_clients)
            .try_init(),
        LogFormat::Json => builder
            .json()
            .with_ansi(false)
            .finish()
            .with(not_the_clients)
            .try_init(),
    };
    Ok(())
}

/// h2's warnings, which are all about what a client did (too many streams reset, a PING
/// acknowledged that was never sent): one per connection or even per frame, at the client's
/// will, and without the worker's name. They are left out; the worker logs such a
/// connection's end at debug and counts the floods it cuts in a line at most once a second.
fn from_a_client(event: &tracing::Metadata<'_>) -> bool {
    *event.level() == tracing::Level::WARN && event.target().starts_with("h2::")
}

/// Reopens every log file of this process (SIGUSR1 in the master, a message in a worker).
///
/// The master, which keeps its privileges, reopens first; a worker runs as `--user` and may
/// not be allowed to create the file. It then keeps writing to the descriptor it inherited
/// (the rotated file), and workers forked afterwards (a reload) inherit the master's new one.
pub(crate) fn reopen() {
    let sinks = [ERROR_LOG.get(), access::sink()];
    for sink in sinks.into_iter().flatten() {
        if let Err(Some(e)) = sink.reopen() {
            tracing::error!(
                "cannot reopen {}: {e}; still writing to the file opened before \
                 (reported once until a reopen succeeds)",
                describe(&sink.target)
            );
        }
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
