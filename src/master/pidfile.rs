//! The pid file: claimed before binding (refused when it names a live process), written
//! atomically once the sockets are bound, removed at exit.

use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::{Pid, getpid};

use crate::Error;

pub(crate) struct Pidfile {
    path: PathBuf,
}

impl Pidfile {
    /// Refuses a path that names a running process: another server, most likely, whose pid
    /// file must not be taken from it. A file naming a dead process is stale and is replaced.
    pub(crate) fn claim(path: &Path) -> Result<Pidfile, Error> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                if let Ok(pid) = text.trim().parse::<i32>() {
                    let alive = pid > 0
                        && pid != getpid().as_raw()
                        && matches!(kill(Pid::from_raw(pid), None), Ok(()) | Err(Errno::EPERM));
                    if alive {
                        return Err(Error::config(format!(
                            "pid file {} names running process {pid}",
                            path.display()
                        )));
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::config(format!(
                    "cannot read pid file {}: {e}",
                    path.display()
                )));
            }
        }
        Ok(Pidfile {
            path: path.to_path_buf(),
        })
    }

    /// Writes this process's pid: to a temporary file beside it, then renamed over it, so a
    /// reader never sees a half-written file.
    pub(crate) fn write(&self) -> Result<(), Error> {
        let name = self.path.file_name().unwrap_or_default().to_string_lossy();
        let temporary = self.path.with_file_name(format!(".{name}.{}", getpid()));
        std::fs::write(&temporary, format!("{}\n", getpid()))
            .and_then(|()| std::fs::rename(&temporary, &self.path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&temporary);
                Error::config(format!(
                    "cannot write pid file {}: {e}",
                    self.path.display()
                ))
            })
    }

    /// Removes the file if it is still ours.
    pub(crate) fn remove(&self) {
        let ours = std::fs::read_to_string(&self.path)
            .is_ok_and(|text| text.trim() == getpid().to_string());
        if ours && let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!("cannot remove pid file {}: {e}", self.path.display());
        }
    }
}
