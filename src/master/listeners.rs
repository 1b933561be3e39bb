//! Binding the listening sockets, once, in the master before any worker exists; every worker
//! inherits them, so all share one accept queue per address.

use std::io;
use std::net::TcpListener;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::Error;
use crate::config::{BindAddr, Config};

/// One bound, listening, non-blocking socket.
#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// What clients connect to, with the port the kernel chose when the config said 0.
    pub(crate) fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => match l.local_addr() {
                Ok(addr) => format!("http://{addr}"),
                Err(_) => "tcp (address unknown)".to_string(),
            },
            Listener::Unix(_, path) => format!("unix:{}", path.display()),
        }
    }

    /// The socket file of a unix listener.
    pub(crate) fn socket_path(&self) -> Option<&Path> {
        match self {
            Listener::Tcp(_) => None,
            Listener::Unix(_, path) => Some(path),
        }
    }
}

/// Binds every configured address. On any failure the sockets bound so far are closed (and
/// their socket files removed) and the error names the address and where it was configured.
pub(crate) fn bind_all(config: &Config) -> Result<Vec<Listener>, Error> {
    let mut bound = Vec::new();
    for addr in &config.bind {
        match bind(addr, config.backlog) {
            Ok(listener) => bound.push(listener),
            Err(e) => {
                remove_socket_files(&socket_files(&bound));
                return Err(Error::bind(format!(
                    "cannot listen on {addr} ({}): {e}",
                    config.bind_source
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

fn bind(addr: &BindAddr, backlog: u32) -> io::Result<Listener> {
    let backlog = i32::try_from(backlog).unwrap_or(i32::MAX);
    match addr {
        BindAddr::Tcp(addr) => {
            let socket = Socket::new(
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
            Ok(Listener::Tcp(socket.into()))
        }
        BindAddr::Unix(path) => {
            remove_stale_socket(path)?;
            let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
            socket.bind(&SockAddr::unix(path)?)?;
            socket.listen(backlog)?;
            socket.set_nonblocking(true)?;
            Ok(Listener::Unix(socket.into(), path.clone()))
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
