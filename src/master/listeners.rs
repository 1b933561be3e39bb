//! Binding the listening sockets, once, in the master before any worker exists; every worker
//! inherits them, so all share one accept queue per address.

use std::io;
use std::net::TcpListener;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use socket2::{Domain, Protocol, SockAddr, Type};

use crate::Error;
use crate::config::{BindAddr, Config};

/// One bound, listening, non-blocking socket, with the address it was configured as.
#[derive(Debug)]
pub(crate) struct Listener {
    /// As configured: port 0 stays 0 here, so that a reload keeps the port the kernel chose.
    pub(crate) addr: BindAddr,
    pub(crate) socket: Socket,
}

#[derive(Debug)]
pub(crate) enum Socket {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    /// What clients connect to, with the port the kernel chose when the config said 0.
    pub(crate) fn describe(&self) -> String {
        match &self.socket {
            Socket::Tcp(l) => match l.local_addr() {
                Ok(addr) => format!("http://{addr}"),
                Err(_) => "tcp (address unknown)".to_string(),
            },
            Socket::Unix(_) => self.addr.to_string(),
        }
    }

    /// The socket file of a unix listener.
    pub(crate) fn socket_path(&self) -> Option<&Path> {
        match &self.addr {
            BindAddr::Tcp(_) => None,
            BindAddr::Unix(path) => Some(path),
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
        })
    }
}

/// Binds every configured address, reusing the socket of any address in `current` (so a
/// reload keeps unchanged addresses, and their accept queues, open). On any failure the
/// sockets bound here are closed (and their new socket files removed), and the error names
/// the address and where it was configured.
pub(crate) fn bind_all(config: &Config, current: &[Listener]) -> Result<Vec<Listener>, Error> {
    let mut bound = Vec::new();
    let mut created = Vec::new();
    for addr in &config.bind {
        let result = match current.iter().find(|l| l.addr == *addr) {
            Some(existing) => existing.try_clone(),
            None => bind(addr, config.backlog)
                .inspect(|l| created.extend(l.socket_path().map(PathBuf::from))),
        };
        match result {
            Ok(listener) => bound.push(listener),
            Err(e) => {
                remove_socket_files(&created);
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
            })
        }
        BindAddr::Unix(path) => {
            remove_stale_socket(path)?;
            let socket = socket2::Socket::new(Domain::UNIX, Type::STREAM, None)?;
            socket.bind(&SockAddr::unix(path)?)?;
            socket.listen(backlog)?;
            socket.set_nonblocking(true)?;
            Ok(Listener {
                addr: BindAddr::Unix(path.clone()),
                socket: Socket::Unix(socket.into()),
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
