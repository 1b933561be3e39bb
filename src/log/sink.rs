//! A log destination: standard error or output, or a file opened for appending that can be
//! reopened by path after logrotate moved it. Each line is one `write`, so lines from several
//! processes appending to one file never interleave.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Mutex;

use crate::config::LogTarget;

/// A log destination that can be reopened by path.
pub(crate) struct Sink {
    pub(super) target: LogTarget,
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

pub(crate) fn describe(target: &LogTarget) -> String {
    match target {
        LogTarget::Standard => "-".to_string(),
        LogTarget::File(path) => path.display().to_string(),
    }
}
