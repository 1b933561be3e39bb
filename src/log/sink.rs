//! A log destination: standard error or output, or a file opened for appending that can be
//! reopened by path after logrotate moved it. Each line is one `write`, so lines from several
//! processes appending to one file never interleave.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::LogTarget;

/// A log destination that can be reopened by path.
pub(crate) struct Sink {
    pub(super) target: LogTarget,
    file: Mutex<Option<File>>,
    standard: fn(&[u8]) -> io::Result<()>,
    /// The last reopen failed: the next failure in a row is not reported again.
    reopen_failed: AtomicBool,
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
            reopen_failed: AtomicBool::new(false),
        })
    }

    /// Opens the path again: after logrotate moved the file, new lines go to a new file. On
    /// failure the file opened before is kept, and written to. The error is returned only for
    /// the first failure in a row: a worker that dropped privileges fails at every rotation of
    /// a file only root may create, and says so once.
    pub(crate) fn reopen(&self) -> Result<(), Option<io::Error>> {
        if let LogTarget::File(path) = &self.target {
            match append(path) {
                Ok(file) => {
                    *self.file.lock().unwrap_or_else(|e| e.into_inner()) = Some(file);
                    self.reopen_failed.store(false, Ordering::Relaxed);
                }
                Err(e) => {
                    let again = self.reopen_failed.swap(true, Ordering::Relaxed);
                    return Err((!again).then_some(e));
                }
            }
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

pub(crate) fn describe(target: &LogTarget) -> String {
    match target {
        LogTarget::Standard => "-".to_string(),
        LogTarget::File(path) => path.display().to_string(),
    }
}
