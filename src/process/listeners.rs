//! Binding the listening sockets, once, in the master before any worker exists; every worker
//! inherits them, so all share one accept queue per address.

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use socket2::{Domain, Protocol, SockAddr, Type};

use crate::Error;
use crate::config::{BindAddr, Config, Source};

/// One bound, listening, non-blocking socket, with the address it was configured as.
#[derive(Debug)]
pub(crate) struct Listener {
    /// As configured: port 0 stays 0 here, so that a reload keeps the port the kernel chose.
    pub(crate) addr: BindAddr,
    pub(crate) socket: Socket,
    /// Passed by systemd (socket activation): kept whatever the config says, and its socket
    /// file is systemd's to remove.
    pub(crate) activated: bool,
    /// Serves the metrics (`--metrics-bind`), never the application.
    pub(crate) metrics: bool,
    /// Serves TLS (`https://` addresses, or every one with a certificate and none such).
    pub(crate) tls: bool,
}

#[derive(Debug)]
pub(crate) enum Socket {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    /// What clients connect to, with the port the kernel chose when the config said 0.
    pub(crate) fn describe(&self) -> String {
        let place = match &self.socket {
            Socket::Tcp(l) => match l.local_addr() {
                Ok(addr) if self.tls => format!("https://{addr}"),
                Ok(addr) => format!("http://{addr}"),
                Err(_) => "tcp (address unknown)".to_string(),
            },
            Socket::Unix(_) if self.tls => format!("https://{}", self.addr),
            Socket::Unix(_) => self.addr.to_string(),
        };
        if self.activated {
            format!("{place} (from systemd)")
        } else if self.metrics {
            format!("{place} (metrics)")
        } else {
            place
        }
    }

    /// The socket file of a unix listener that prefork created.
    pub(crate) fn socket_path(&self) -> Option<&Path> {
        match &self.addr {
            BindAddr::Unix(path) if !self.activated => Some(path),
            _ => None,
        }
    }

    /// The socket's descriptor, to hand over to a new master image.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        match &self.socket {
            Socket::Tcp(l) => l.as_fd(),
            Socket::Unix(l) => l.as_fd(),
        }
    }

    /// Another descriptor for the same socket, for a second generation of workers.
    fn try_clone(&self) -> io::Result<Listener> {
        let socket = match &self.socket {
            Socket::Tcp(l) => Socket::Tcp(l.try_clone()?),
            Socket::Unix(l) => Socket::Unix(l.try_clone()?),
        };
        Ok(Listener {
            addr: self.addr.clone(),
            socket,
            activated: self.activated,
            metrics: self.metrics,
            tls: self.tls,
        })
    }
}

/// The sockets systemd passed (`LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`), each checked to
/// be a listening stream socket. The variables are cleared, so that no worker takes them for
/// its own.
///
/// Must be called while the process is single-threaded, as the environment changes.
pub(crate) fn activated() -> Result<Vec<Listener>, Error> {
    // SAFETY: the master calls this before any fork and never starts a thread, so nothing
    // reads the environment concurrently.
    let fds = unsafe { sd_notify::listen_fds_with_names_and_unset_env() }
        .map_err(|e| Error::config(format!("socket activation: {e}")))?;
    let mut listeners = Vec::new();
    for (fd, name) in fds {
        // SAFETY: by the activation protocol these descriptors are open and ours alone.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let listener = inherited(owned, None, true)
            .map_err(|e| Error::bind(format!("socket activation: fd {fd} ({name}): {e}")))?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// A listening socket this process was handed (by systemd, or by the master image it replaced
/// on an upgrade), checked to be a listening stream socket. `addr` is what it was configured
/// as; without one, it is the address the socket is bound to.
pub(crate) fn inherited(
    fd: OwnedFd,
    addr: Option<BindAddr>,
    activated: bool,
) -> io::Result<Listener> {
    let socket = socket2::Socket::from(fd);
    if socket.r#type()? != Type::STREAM || !socket.is_listener()? {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a listening stream socket",
        ));
    }
    socket.set_nonblocking(true)?;
    socket.set_cloexec(true)?;
    let local = socket.local_addr()?;
    Ok(match (local.as_socket(), local.as_pathname()) {
        (Some(bound), _) => Listener {
            addr: addr.unwrap_or(BindAddr::Tcp(bound)),
            socket: Socket::Tcp(socket.into()),
            activated,
            metrics: false,
            tls: false,
        },
        (None, path) => Listener {
            addr: addr
                .unwrap_or_else(|| BindAddr::Unix(path.map(PathBuf::from).unwrap_or_default())),
            socket: Socket::Unix(socket.into()),
            activated,
            metrics: false,
            tls: false,
        },
    })
}

/// Binds every configured address, the metrics' last, reusing the socket of any address in
/// `current` (so a reload keeps unchanged addresses, and their accept queues, open). On any
/// failure the sockets bound here are closed (and their new socket files removed), and the
/// error names the address and where it was configured.
pub(crate) fn bind_all(config: &Config, current: &[Listener]) -> Result<Vec<Listener>, Error> {
    let mut bound = Vec::new();
    let tls_by_default = config.tls_by_default();
    for listener in current.iter().filter(|l| l.activated) {
        let mut copy = listener
            .try_clone()
            .map_err(|e| Error::bind(format!("cannot keep {}: {e}", listener.describe())))?;
        copy.tls = tls_by_default;
        bound.push(copy);
    }
    // With sockets from systemd, the default address is not wanted too; explicit ones are.
    let wanted: &[BindAddr] = if !bound.is_empty() && config.bind_source == Source::Default {
        &[]
    } else {
        &config.bind
    };
    // (address, serves the metrics, serves TLS)
    let application = wanted.iter().map(|addr| (addr, false, tls_by_default));
    let https = config.https_bind.iter().map(|addr| (addr, false, true));
    let metrics = config.metrics_bind.iter().map(|addr| (addr, true, false));
    let mut created = Vec::new();
    for (addr, serves_metrics, tls) in application.chain(https).chain(metrics) {
        // Port 0 may be configured for several roles: each has its own socket.
        let same = |l: &&Listener| l.addr == *addr && l.metrics == serves_metrics && l.tls == tls;
        if bound.iter().any(|l| same(&l)) {
            continue;
        }
        let result = match current.iter().find(same) {
            Some(existing) => existing.try_clone(),
            None => {
                bind(addr, config).inspect(|l| created.extend(l.socket_path().map(PathBuf::from)))
            }
        };
        match result {
            Ok(mut listener) => {
                listener.metrics = serves_metrics;
                listener.tls = tls;
                bound.push(listener);
            }
            Err(e) => {
                remove_socket_files(&created);
                let source = if serves_metrics {
                    &config.metrics_bind_source
                } else {
                    &config.bind_source
                };
                return Err(Error::bind(format!(
                    "cannot listen on {addr} ({source}): {e}"
                )));
            }
        }
    }
    Ok(bound)
}

/// The socket files of the unix listeners among `listeners`.
pub(crate) fn socket_files(listeners: &[Listener]) -> Vec<PathBuf> {
    listeners
        .iter()
        .filter_map(|l| l.socket_path().map(PathBuf::from))
        .collect()
}

/// Removes the socket files of unix listeners. Only the master calls this, at exit: a worker's
/// copy of a listener must never take the path away from its siblings.
pub(crate) fn remove_socket_files(paths: &[PathBuf]) {
    for path in paths {
        let _ = std::fs::remove_file(path);
    }
}

fn bind(addr: &BindAddr, config: &Config) -> io::Result<Listener> {
    let backlog = i32::try_from(config.backlog).unwrap_or(i32::MAX);
    match addr {
        BindAddr::Tcp(addr) => {
            let socket = socket2::Socket::new(
                Domain::for_address(*addr),
                Type::STREAM,
                Some(Protocol::TCP),
            )?;
            // A restarted server must be able to bind while old connections sit in TIME_WAIT.
            socket.set_reuse_address(true)?;
            if addr.is_ipv6() {
                socket.set_only_v6(true)?;
            }
            socket.bind(&(*addr).into())?;
            socket.listen(backlog)?;
            socket.set_nonblocking(true)?;
            Ok(Listener {
                addr: BindAddr::Tcp(*addr),
                socket: Socket::Tcp(socket.into()),
                activated: false,
                metrics: false,
                tls: false,
            })
        }
        BindAddr::Unix(path) => {
            remove_stale_socket(path)?;
            let socket = socket2::Socket::new(Domain::UNIX, Type::STREAM, None)?;
            socket.bind(&SockAddr::unix(path)?)?;
            let finish = || -> io::Result<()> {
                // Who may connect is decided by the file: set it before anyone can.
                if let Some(mode) = config.bind_mode {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
                }
                let (uid, gid) = config.credentials.owner();
                if uid.is_some() || gid.is_some() {
                    nix::unistd::chown(path.as_path(), uid, gid)?;
                }
                socket.listen(backlog)?;
                socket.set_nonblocking(true)
            };
            if let Err(e) = finish() {
                let _ = std::fs::remove_file(path);
                return Err(e);
            }
            Ok(Listener {
                addr: BindAddr::Unix(path.clone()),
                socket: Socket::Unix(socket.into()),
                activated: false,
                metrics: false,
                tls: false,
            })
        }
    }
}

/// A socket file left by a server that did not stop cleanly would make bind fail; remove it,
/// but only when nothing answers on it, so a running server is never robbed of its address.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the path exists and is not a socket",
        ));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another server is listening on this socket",
        )),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path),
        Err(e) => Err(e),
    }
}
