//! TLS on both sides of the proxy (rustls), and one stream type for plain or encrypted sockets
//! so the data path is written once.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("{path} contains no usable {what}")]
    Empty { path: String, what: &'static str },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// `listen.tls_cert` holds no certificate to bind SCRAM to.
    #[error("{path} contains no certificate")]
    NoCertificate { path: String },
    /// The certificate allows no `tls-server-end-point` binding.
    #[error(transparent)]
    EndPoint(#[from] crate::auth::channel_binding::ChannelBindingError),
}

/// A socket, encrypted or not. TLS runs over TCP only: on a Unix socket both ends are on one
/// host, and libpq never asks for it there either.
pub enum Stream {
    Plain(TcpStream),
    Unix(tokio::net::UnixStream),
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// An in-memory pipe (`tokio::io::duplex`): the handshake and the relay run over it in
    /// unit tests, with no socket. Never produced by the listeners.
    Memory(tokio::io::DuplexStream),
}

impl From<crate::listen::ClientSocket> for Stream {
    fn from(s: crate::listen::ClientSocket) -> Self {
        match s {
            crate::listen::ClientSocket::Tcp(s) => Stream::Plain(s),
            crate::listen::ClientSocket::Unix(s) => Stream::Unix(s),
            crate::listen::ClientSocket::Memory(s) => Stream::Memory(s),
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Plain($s) => $e,
            Stream::Unix($s) => $e,
            Stream::Server($s) => $e,
            Stream::Client($s) => $e,
            Stream::Memory($s) => $e,
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_shutdown(cx))
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Server-side TLS for clients, from PEM files.
pub fn acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &read_file(cert)?[..])
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: cert.display().to_string(),
            what: "certificate",
        });
    }
    let key = rustls_pemfile::private_key(&mut &read_file(key)?[..])
        .ok()
        .flatten()
        .ok_or_else(|| TlsError::Empty {
            path: key.display().to_string(),
            what: "private key",
        })?;
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// The `tls-server-end-point` channel-binding hash of the first (end-entity) certificate in a
/// PEM file: what SCRAM clients bound to this proxy must send.
pub fn certificate_end_point(cert: &Path) -> Result<Vec<u8>, TlsError> {
    let first = rustls_pemfile::certs(&mut &read_file(cert)?[..])
        .find_map(Result::ok)
        .ok_or_else(|| TlsError::NoCertificate {
            path: cert.display().to_string(),
        })?;
    Ok(crate::auth::channel_binding::tls_server_end_point(&first)?)
}

/// Client-side TLS towards Postgres. With a CA file the server certificate is verified
/// (libpq's verify-full); without one the channel is encrypted but unauthenticated, which is
/// what libpq's `sslmode=require`/`prefer` give.
pub fn connector(ca_file: Option<&Path>) -> Result<tokio_rustls::TlsConnector, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let cfg = match ca_file {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pemfile::certs(&mut &read_file(path)?[..]).filter_map(Result::ok) {
                roots.add(c)?;
            }
            if roots.is_empty() {
                return Err(TlsError::Empty {
                    path: path.display().to_string(),
                    what: "CA certificate",
                });
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth(),
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
}

pub fn server_name(host: &str) -> ServerName<'static> {
    ServerName::try_from(host.to_string())
        .unwrap_or_else(|_| ServerName::try_from("localhost").expect("static name"))
}

#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
