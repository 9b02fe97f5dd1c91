//! Where clients connect: the TCP port and, optionally, a Unix-domain socket in a directory
//! (`listen.unix_socket_dir`), named as libpq expects (`.s.PGSQL.<port>`), so
//! `psql "host=/run/pgsidecar port=6432"` works unchanged.
//!
//! Why a Unix socket for a sidecar: the application runs on the same host (or in the same pod,
//! sharing a volume), and a local socket skips the loopback TCP stack on every message — the
//! kernel's share of a proxied transaction. It is what PgBouncer's `unix_socket_dir` and Cloud
//! SQL's proxy offer for the same reason.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    pub addr: String,
    pub source: std::io::Error,
}

/// Who connected: a TCP peer, or a local process on the Unix socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Tcp(SocketAddr),
    Local,
}

impl Peer {
    /// The address auth rules match; `None` for the Unix socket (matched by `address = "local"`).
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Peer::Tcp(a) => Some(a.ip()),
            Peer::Local => None,
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Tcp(a) => a.fmt(f),
            // What Postgres shows for such clients (log_connections, pg_stat_activity).
            Peer::Local => f.write_str("[local]"),
        }
    }
}

/// An accepted client connection.
pub enum ClientSocket {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// An in-memory client (`tokio::io::duplex`), for unit tests of the handshake and relay.
    Memory(tokio::io::DuplexStream),
}

/// A client connection detached from any runtime, to be registered on a session worker's.
pub enum DetachedSocket {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl ClientSocket {
    pub fn detach(self) -> std::io::Result<DetachedSocket> {
        Ok(match self {
            ClientSocket::Tcp(s) => DetachedSocket::Tcp(s.into_std()?),
            ClientSocket::Unix(s) => DetachedSocket::Unix(s.into_std()?),
            ClientSocket::Memory(_) => {
                return Err(std::io::Error::other(
                    "an in-memory client cannot move to another runtime",
                ))
            }
        })
    }
}

impl DetachedSocket {
    /// Registers the socket with the current runtime's reactor.
    pub fn attach(self) -> std::io::Result<ClientSocket> {
        Ok(match self {
            DetachedSocket::Tcp(s) => ClientSocket::Tcp(TcpStream::from_std(s)?),
            DetachedSocket::Unix(s) => ClientSocket::Unix(UnixStream::from_std(s)?),
        })
    }
}

/// Binds with SO_REUSEPORT so a new process can take over the port while this one drains.
pub fn bind_tcp(addr: &str) -> Result<TcpListener, BindError> {
    let err = |source| BindError {
        addr: addr.to_string(),
        source,
    };
    let sa: SocketAddr = addr
        .parse()
        .map_err(|_| err(std::io::ErrorKind::InvalidInput.into()))?;
    let domain = if sa.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))
        .map_err(err)?;
    sock.set_reuse_address(true).map_err(err)?;
    sock.set_reuse_port(true).map_err(err)?;
    sock.set_nonblocking(true).map_err(err)?;
    sock.bind(&sa.into()).map_err(err)?;
    sock.listen(1024).map_err(err)?;
    TcpListener::from_std(sock.into()).map_err(err)
}

/// The socket file libpq connects to for `host=<dir> port=<port>`.
pub fn socket_path(dir: &Path, port: u16) -> PathBuf {
    dir.join(format!(".s.PGSQL.{port}"))
}

/// A listening Unix socket that removes its file when dropped — unless a successor has
/// replaced it by then.
pub struct UnixSocketListener {
    listener: UnixListener,
    path: PathBuf,
    inode: u64,
}

/// Binds the Unix socket for `port` in `dir` with permissions `mode`.
///
/// The socket is bound under a temporary name, given its mode, then renamed over the final
/// name. The rename is atomic: a client always finds a socket that accepts — the old process's
/// until the rename, the new one's after — which is what a zero-downtime restart needs (the
/// old process keeps accepting on its own, now unnamed, socket until it stops listening). A
/// stale file left by a crashed process is replaced the same way.
pub fn bind_unix(dir: &Path, port: u16, mode: u32) -> Result<UnixSocketListener, BindError> {
    let path = socket_path(dir, port);
    let err = |source| BindError {
        addr: path.display().to_string(),
        source,
    };
    let tmp = dir.join(format!(".s.PGSQL.{port}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(err)?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .and_then(|()| std::fs::metadata(&path));
    match placed {
        Ok(meta) => Ok(UnixSocketListener {
            listener,
            path,
            inode: meta.ino(),
        }),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(err(e))
        }
    }
}

impl UnixSocketListener {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for UnixSocketListener {
    fn drop(&mut self) {
        // Removing a successor's socket would cut the restarted sidecar off from new clients.
        if std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Either kind of listening socket, accepted from by one loop.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixSocketListener),
}

impl Listener {
    pub async fn accept(&self) -> std::io::Result<(ClientSocket, Peer)> {
        match self {
            Listener::Tcp(l) => {
                let (s, a) = l.accept().await?;
                Ok((ClientSocket::Tcp(s), Peer::Tcp(a)))
            }
            Listener::Unix(l) => {
                let (s, _) = l.listener.accept().await?;
                Ok((ClientSocket::Unix(s), Peer::Local))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A restarted sidecar binds over the old socket; the old one, dropped later, leaves the
    /// successor's socket in place, and both accepted on their own socket meanwhile.
    #[tokio::test]
    async fn a_successor_takes_over_the_socket_file_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let old = bind_unix(dir.path(), 6432, 0o700).unwrap();
        let path = old.path().to_path_buf();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let _old_client = UnixStream::connect(&path).await.unwrap();
        old.listener.accept().await.unwrap();

        let new = bind_unix(dir.path(), 6432, 0o777).unwrap();
        let _new_client = UnixStream::connect(&path).await.unwrap();
        new.listener.accept().await.unwrap();
        drop(old);
        assert!(
            path.exists(),
            "the old listener removed its successor's socket"
        );
        UnixStream::connect(&path).await.unwrap();
        drop(new);
        assert!(
            !path.exists(),
            "the last listener leaves no socket file behind"
        );
    }

    #[test]
    fn local_clients_show_as_postgres_shows_them() {
        assert_eq!(Peer::Local.to_string(), "[local]");
        assert_eq!(Peer::Local.ip(), None);
        let tcp = Peer::Tcp("10.0.0.1:5000".parse().unwrap());
        assert_eq!(tcp.to_string(), "10.0.0.1:5000");
    }
}
