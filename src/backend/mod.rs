//! One connection to a Postgres server: connect, TLS, startup, authentication.
//!
//! The pool owns these; sessions borrow them for a transaction. The connection keeps what a
//! session needs to reuse it safely: the server's ParameterStatus values, its cancel key,
//! which proxy-wide prepared statements it holds, and the session settings applied to it.

pub mod auth_policy;
pub mod prepared;
pub mod resolve;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::auth::{Credentials, ScramClient};
use crate::config::{NodeAddr, TlsMode};
use crate::tls::Stream;
use crate::wire::frame::{self, Frame};
use crate::wire::msg::{self, ErrorFields};
use crate::wire::tag::{back, ssl, txn};

pub use auth_policy::AuthPolicy;
pub use prepared::PreparedSet;

/// Backend messages can legitimately be up to 1 GB (Postgres' MaxAllocSize).
pub const MAX_BACKEND_MESSAGE: usize = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("timed out connecting to {addr} after {after:?}")]
    ConnectTimeout { addr: String, after: Duration },
    #[error("{addr} requires TLS settings that failed: {message}")]
    Tls { addr: String, message: String },
    #[error("{addr} does not support TLS and upstream.tls requires it")]
    TlsRefused { addr: String },
    /// The server answered with an error (bad password, unknown database…): the raw
    /// ErrorResponse is kept so the client sees exactly what Postgres said.
    #[error("server error {}: {}", .fields.code, .fields.message)]
    Server { fields: ErrorFields, raw: Frame },
    #[error("logging in to {addr}: {source}")]
    Auth {
        addr: String,
        source: crate::auth::AuthError,
    },
    #[error("{addr} asked for a password but none is known for user \"{user}\"")]
    NoPassword { addr: String, user: String },
    /// Passthrough only: the server let the sidecar in without checking the client's password
    /// (or checked it where it proves nothing), so the password is not known to be right.
    #[error(
        "{addr} let user \"{user}\" in without checking a password ({how}), so passthrough \
         cannot verify the client's password; make pg_hba.conf require scram-sha-256 (or md5) \
         for the sidecar's connections, or give this user an [[auth.rules]] entry with \
         method = \"trust\" if that is intended"
    )]
    PasswordNotChecked {
        addr: String,
        user: String,
        how: &'static str,
    },
    /// `upstream.require_auth` / `channel_binding` refused the server's request; nothing was
    /// sent.
    #[error(
        "refused to log in to {addr}: the server asked for authentication method \"{method}\", \
         and {why}"
    )]
    AuthMethodRefused {
        addr: String,
        method: &'static str,
        why: auth_policy::Refused,
    },
    #[error("{addr} asked for unsupported authentication (code {code})")]
    UnsupportedAuth { addr: String, code: i32 },
    #[error("protocol error from {addr}: {message}")]
    Protocol { addr: String, message: String },
    #[error("connection to server lost: {0}")]
    Io(#[from] std::io::Error),
}

impl crate::error::ClientFacing for BackendError {
    fn sqlstate(&self) -> &str {
        match self {
            BackendError::Server { fields, .. } => &fields.code,
            BackendError::Auth { .. }
            | BackendError::NoPassword { .. }
            | BackendError::AuthMethodRefused { .. } => "08004",
            BackendError::PasswordNotChecked { .. } => crate::wire::sqlstate::INVALID_PASSWORD,
            _ => crate::wire::sqlstate::CONNECTION_FAILURE,
        }
    }

    /// Actionable, without addresses of internal hosts or credentials: the server's own
    /// message when it refused, else what the client can do about it.
    fn client_message(&self) -> String {
        match self {
            BackendError::Server { fields, .. } => fields.message.clone(),
            BackendError::PasswordNotChecked { user, .. } => {
                format!("password authentication failed for user \"{user}\"")
            }
            BackendError::AuthMethodRefused { method, .. } => format!(
                "pgsidecar refused the database server's request for \"{method}\" authentication \
                 (upstream.require_auth / upstream.channel_binding; see the pgsidecar log)"
            ),
            BackendError::Auth { .. } | BackendError::NoPassword { .. } => {
                "pgsidecar could not log in to the database server for this user (see the pgsidecar log)".into()
            }
            _ => "pgsidecar cannot reach the database server (see the pgsidecar log)".into(),
        }
    }

    fn metric_label(&self) -> &'static str {
        match self {
            BackendError::Server { .. } => "backend_refused",
            BackendError::Auth { .. }
            | BackendError::NoPassword { .. }
            | BackendError::AuthMethodRefused { .. }
            | BackendError::PasswordNotChecked { .. } => "backend_login",
            _ => "backend_unreachable",
        }
    }
}

/// How the proxy logs in to a backend as a given user.
#[derive(Clone, Debug)]
pub enum Login {
    /// No secret known: works with `trust` on the server.
    None,
    /// Plaintext (from the upstream URL, a credentials file, or a passthrough client).
    Password(String),
    /// An `md5…` hash from a credentials file: enough for md5 auth, not for SCRAM.
    Md5Stored(String),
    /// Pre-derived SCRAM keys (SCRAM pass-through of a client's ClientKey).
    Scram(Credentials),
}

impl Login {
    /// A plaintext password, whichever way it was obtained.
    fn password(&self) -> Option<&[u8]> {
        match self {
            Login::Password(p) => Some(p.as_bytes()),
            Login::Scram(Credentials::Password(p)) => Some(p),
            _ => None,
        }
    }
}

/// What the server asked for when the sidecar logged in. Passthrough takes a client's password
/// as verified only when the server really checked it: `AuthenticationOk` alone (trust in
/// pg_hba.conf) proves nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerAuth {
    /// AuthenticationOk without any request (trust, peer, ident…).
    None,
    Cleartext,
    Md5,
    /// SCRAM, with the server's signature verified.
    Scram,
}

/// What a pool needs to open a connection.
#[derive(Clone)]
pub struct ConnectSpec {
    pub node: Arc<NodeAddr>,
    pub database: String,
    pub user: String,
    pub login: Login,
    pub tls: TlsMode,
    pub tls_connector: Option<tokio_rustls::TlsConnector>,
    pub connect_timeout: Duration,
    /// Which authentication requests of the server to answer (`upstream.channel_binding`,
    /// `upstream.require_auth`).
    pub auth_policy: Arc<AuthPolicy>,
    /// Extra startup parameters (e.g. `application_name` for the proxy's own connections).
    pub startup_params: Vec<(String, String)>,
}

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

pub struct Server {
    pub id: u64,
    pub stream: Stream,
    /// Bytes read from the server and not yet processed.
    pub rbuf: BytesMut,
    pub node: Arc<NodeAddr>,
    pub params: Vec<(String, String)>,
    /// `params` as the server reported them at startup (role and database defaults): what a
    /// new client's session starts from, whatever earlier clients SET on this connection.
    pub initial_params: Vec<(String, String)>,
    pub pid: i32,
    pub secret: i32,
    pub created: Instant,
    pub last_used: Instant,
    pub prepared: PreparedSet,
    /// Session settings (`SET name = value`) in force on this connection beyond the server's
    /// defaults, so the next client can be given exactly its own.
    pub settings: crate::settings::Settings,
    /// Last transaction status seen in ReadyForQuery (a [`txn`] byte: idle, in a transaction,
    /// or in a failed one).
    pub txn_status: u8,
    /// Something unexpected happened; close instead of reusing.
    pub broken: bool,
    /// The session worker whose reactor the socket is registered with (`workers::current()` at
    /// connect): checkouts prefer connections of their own worker.
    pub worker: usize,
    /// How the server authenticated the sidecar on this connection.
    pub auth: ServerAuth,
}

impl Server {
    /// Whether logging in here proved the password: SCRAM (the server also proved it knows the
    /// secret) or md5; a cleartext request only on a link nobody can sit in the middle of (TLS,
    /// or Postgres' Unix socket), since anyone answering on a plain TCP link could send
    /// AuthenticationOk after reading the password.
    pub fn checked_password(&self) -> Result<(), &'static str> {
        match self.auth {
            ServerAuth::Scram | ServerAuth::Md5 => Ok(()),
            ServerAuth::Cleartext if !matches!(self.stream, Stream::Plain(_)) => Ok(()),
            ServerAuth::Cleartext => Err("a cleartext password request over unencrypted TCP"),
            ServerAuth::None => {
                Err("AuthenticationOk without asking for one: trust in pg_hba.conf?")
            }
        }
    }

    /// Whether the server spoke (a FATAL before closing) or closed while this connection sat
    /// idle. Postgres sends an idle session nothing else, so such a connection is dead and a
    /// request written to it would fail instead of running. Costs no system call unless the
    /// reactor saw the socket become readable.
    pub async fn ended_while_idle(&mut self) -> bool {
        use tokio::io::AsyncRead;
        let mut scratch = [0u8; 256];
        std::future::poll_fn(|cx| {
            let mut buf = tokio::io::ReadBuf::new(&mut scratch);
            std::task::Poll::Ready(
                std::pin::Pin::new(&mut self.stream)
                    .poll_read(cx, &mut buf)
                    .is_ready(),
            )
        })
        .await
    }

    pub async fn connect(spec: &ConnectSpec) -> Result<Server, BackendError> {
        let addr = spec.node.display();
        match tokio::time::timeout(spec.connect_timeout, Self::connect_inner(spec)).await {
            Ok(r) => r,
            Err(_) => Err(BackendError::ConnectTimeout {
                addr,
                after: spec.connect_timeout,
            }),
        }
    }

    async fn connect_inner(spec: &ConnectSpec) -> Result<Server, BackendError> {
        let addr = spec.node.display();
        let socket = connect_node(&spec.node)
            .await
            .map_err(|source| BackendError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let stream = match socket {
            Stream::Plain(tcp) => {
                tcp.set_nodelay(true)?;
                Self::negotiate_tls(tcp, spec).await?
            }
            // As libpq: `tls` does not apply to a Unix socket, which never leaves the host.
            other => other,
        };
        let mut server = Server {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            stream,
            rbuf: BytesMut::with_capacity(16 * 1024),
            node: spec.node.clone(),
            params: Vec::new(),
            initial_params: Vec::new(),
            pid: 0,
            secret: 0,
            created: Instant::now(),
            last_used: Instant::now(),
            worker: crate::workers::current(),
            prepared: PreparedSet::default(),
            settings: Default::default(),
            txn_status: txn::IDLE,
            broken: false,
            auth: ServerAuth::None,
        };
        server.startup(spec).await?;
        Ok(server)
    }

    async fn negotiate_tls(mut tcp: TcpStream, spec: &ConnectSpec) -> Result<Stream, BackendError> {
        let addr = spec.node.display();
        let Some(connector) = spec
            .tls_connector
            .as_ref()
            .filter(|_| spec.tls != TlsMode::Disable)
        else {
            return Ok(Stream::Plain(tcp));
        };
        tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await?;
        match answer[0] {
            ssl::WILLING => {
                let tls = connector
                    .connect(crate::tls::server_name(&spec.node.host), tcp)
                    .await
                    .map_err(|e| BackendError::Tls {
                        addr,
                        message: e.to_string(),
                    })?;
                Ok(Stream::Client(Box::new(tls)))
            }
            ssl::UNWILLING if spec.tls == TlsMode::Prefer => Ok(Stream::Plain(tcp)),
            ssl::UNWILLING => Err(BackendError::TlsRefused { addr }), // require, verify-full
            other => Err(BackendError::Protocol {
                addr,
                message: format!("unexpected SSLRequest answer {other:#x}"),
            }),
        }
    }

    async fn startup(&mut self, spec: &ConnectSpec) -> Result<(), BackendError> {
        let addr = spec.node.display();
        let mut out = BytesMut::new();
        let mut params: Vec<(&str, &str)> =
            vec![("user", &spec.user), ("database", &spec.database)];
        params.extend(
            spec.startup_params
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        postgres_protocol::message::frontend::startup_message(params.iter().copied(), &mut out)?;
        self.stream.write_all(&out).await?;
        let mut scram: Option<ScramClient> = None;
        // SCRAM started: AuthenticationOk counts only after the server's signature was checked
        // (else whoever answers could skip SASLFinal and claim success).
        let mut scram_pending = false;
        let policy_addr = addr.clone();
        let refuse = |method: crate::auth::BackendMethod| -> Result<(), BackendError> {
            spec.auth_policy.check(method).map_err(|why| {
                crate::metrics::security_event("backend_auth_refused");
                tracing::warn!(server = %policy_addr, user = %spec.user, method = method.name(),
                    %why, "refused the server's authentication request before sending anything");
                BackendError::AuthMethodRefused {
                    addr: policy_addr.clone(),
                    method: method.name(),
                    why,
                }
            })
        };
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                back::AUTHENTICATION => {
                    let body = f.body();
                    if body.len() < 4 {
                        return Err(BackendError::Protocol {
                            addr,
                            message: "short authentication request".into(),
                        });
                    }
                    let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                    let data = &body[4..];
                    out.clear();
                    match code {
                        msg::AUTH_OK if scram_pending => {
                            return Err(BackendError::Protocol {
                                addr,
                                message: "AuthenticationOk before the SCRAM exchange finished"
                                    .into(),
                            })
                        }
                        msg::AUTH_OK => {
                            if self.auth == ServerAuth::None {
                                refuse(crate::auth::BackendMethod::None)?;
                            }
                            continue;
                        }
                        msg::AUTH_CLEARTEXT => {
                            refuse(crate::auth::BackendMethod::Password)?;
                            self.auth = ServerAuth::Cleartext;
                            let Some(pw) = spec.login.password() else {
                                return Err(BackendError::NoPassword {
                                    addr,
                                    user: spec.user.clone(),
                                });
                            };
                            postgres_protocol::message::frontend::password_message(pw, &mut out)?;
                        }
                        msg::AUTH_MD5 => {
                            refuse(crate::auth::BackendMethod::Md5)?;
                            self.auth = ServerAuth::Md5;
                            if data.len() < 4 {
                                return Err(BackendError::Protocol {
                                    addr,
                                    message: "short md5 salt".into(),
                                });
                            }
                            let salt = [data[0], data[1], data[2], data[3]];
                            let secret = match &spec.login {
                                Login::Md5Stored(h) => h.as_bytes(),
                                other => match other.password() {
                                    Some(p) => p,
                                    None => {
                                        return Err(BackendError::NoPassword {
                                            addr,
                                            user: spec.user.clone(),
                                        })
                                    }
                                },
                            };
                            let resp = crate::auth::md5_response(&spec.user, secret, salt)
                                .map_err(|source| BackendError::Auth {
                                    addr: addr.clone(),
                                    source,
                                })?;
                            postgres_protocol::message::frontend::password_message(
                                &resp, &mut out,
                            )?;
                        }
                        msg::AUTH_SASL => {
                            refuse(crate::auth::BackendMethod::ScramSha256)?;
                            let creds = match &spec.login {
                                Login::Password(p) => Credentials::Password(p.clone().into_bytes()),
                                Login::Scram(c) => c.clone(),
                                _ => {
                                    return Err(BackendError::NoPassword {
                                        addr,
                                        user: spec.user.clone(),
                                    })
                                }
                            };
                            let mechs: Vec<&str> = data
                                .split(|&c| c == 0)
                                .filter(|m| !m.is_empty())
                                .filter_map(|m| std::str::from_utf8(m).ok())
                                .collect();
                            let (mech, gs2) = crate::auth::choose_mechanism(
                                &mechs,
                                spec.auth_policy.channel_binding,
                                self.tls_end_point(),
                            )
                            .map_err(|source| {
                                tracing::warn!(server = %addr, user = %spec.user, error = %source,
                                    "cannot log in with SCRAM");
                                BackendError::Auth {
                                    addr: addr.clone(),
                                    source,
                                }
                            })?;
                            let client = ScramClient::new(creds).with_channel_binding(gs2);
                            let first = client.client_first();
                            postgres_protocol::message::frontend::sasl_initial_response(
                                mech.name(),
                                &first,
                                &mut out,
                            )?;
                            scram = Some(client);
                            scram_pending = true;
                        }
                        msg::AUTH_SASL_CONTINUE => {
                            let mut client =
                                scram.take().ok_or_else(|| BackendError::Protocol {
                                    addr: addr.clone(),
                                    message: "SASL continue without SASL start".into(),
                                })?;
                            // PBKDF2 with a password costs milliseconds: keep it off the session
                            // workers, which serve other clients meanwhile.
                            let server_first = data.to_vec();
                            let (client, reply) = tokio::task::spawn_blocking(move || {
                                let reply = client.handle_server_first(&server_first);
                                (client, reply)
                            })
                            .await
                            .map_err(|e| BackendError::Protocol {
                                addr: addr.clone(),
                                message: format!("SCRAM key derivation failed: {e}"),
                            })?;
                            scram = Some(client);
                            let reply = reply.map_err(|source| BackendError::Auth {
                                addr: addr.clone(),
                                source,
                            })?;
                            postgres_protocol::message::frontend::sasl_response(&reply, &mut out)?;
                        }
                        msg::AUTH_SASL_FINAL => {
                            let client = scram.as_mut().ok_or_else(|| BackendError::Protocol {
                                addr: addr.clone(),
                                message: "SASL final without SASL start".into(),
                            })?;
                            client.handle_server_final(data).map_err(|source| {
                                BackendError::Auth {
                                    addr: addr.clone(),
                                    source,
                                }
                            })?;
                            scram_pending = false;
                            self.auth = ServerAuth::Scram;
                            continue;
                        }
                        code => return Err(BackendError::UnsupportedAuth { addr, code }),
                    }
                    self.stream.write_all(&out).await?;
                }
                back::ERROR_RESPONSE => {
                    return Err(BackendError::Server {
                        fields: ErrorFields::decode(f.body()),
                        raw: f,
                    })
                }
                back::PARAMETER_STATUS => {
                    if let Some((k, v)) = msg::decode_parameter_status(f.body()) {
                        self.set_param(k, v);
                    }
                }
                back::BACKEND_KEY_DATA => {
                    let b = f.body();
                    if b.len() >= 8 {
                        self.pid = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                        self.secret = i32::from_be_bytes([b[4], b[5], b[6], b[7]]);
                    }
                }
                back::READY_FOR_QUERY => {
                    self.initial_params = self.params.clone();
                    return Ok(());
                }
                back::NOTICE_RESPONSE | back::NEGOTIATE_PROTOCOL_VERSION => {}
                other => {
                    return Err(BackendError::Protocol {
                        addr,
                        message: format!("unexpected message '{}' during startup", other as char),
                    })
                }
            }
        }
    }

    /// `None` on a plain link; else the `tls-server-end-point` hash of the certificate the
    /// server presented on this connection (channel binding).
    fn tls_end_point(
        &self,
    ) -> Option<Result<Vec<u8>, crate::auth::channel_binding::ChannelBindingError>> {
        let Stream::Client(tls) = &self.stream else {
            return None;
        };
        Some(
            match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                Some(cert) => crate::auth::channel_binding::tls_server_end_point(cert),
                None => Err(crate::auth::channel_binding::ChannelBindingError::NoCertificate),
            },
        )
    }

    pub fn set_param(&mut self, k: String, v: String) {
        match self.params.iter_mut().find(|(n, _)| *n == k) {
            Some(p) => p.1 = v,
            None => self.params.push((k, v)),
        }
    }

    /// Reads one whole message (used outside the relay loop: startup, health checks, resets).
    pub async fn read_frame(&mut self) -> Result<Frame, BackendError> {
        loop {
            let next = frame::split(&mut self.rbuf, MAX_BACKEND_MESSAGE).map_err(|e| {
                BackendError::Protocol {
                    addr: self.node.display(),
                    message: e.to_string(),
                }
            })?;
            if let Some(f) = next {
                return Ok(f);
            }
            if !frame::fill(&mut self.stream, &mut self.rbuf).await? {
                return Err(BackendError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    /// Runs a simple query for the proxy's own purposes and discards its rows; returns the
    /// first error the server reported, if any. Leaves the connection at ReadyForQuery.
    pub async fn simple(&mut self, sql: &str) -> Result<Option<ErrorFields>, BackendError> {
        let mut out = BytesMut::new();
        msg::query(&mut out, sql);
        self.stream.write_all(&out).await?;
        let mut err = None;
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                back::READY_FOR_QUERY => {
                    self.txn_status = f.body().first().copied().unwrap_or(txn::IDLE);
                    return Ok(err);
                }
                back::ERROR_RESPONSE if err.is_none() => err = Some(ErrorFields::decode(f.body())),
                back::PARAMETER_STATUS => {
                    if let Some((k, v)) = msg::decode_parameter_status(f.body()) {
                        self.set_param(k, v);
                    }
                }
                _ => {}
            }
        }
    }

    /// Runs a query and returns the first column of every row as text.
    pub async fn query_column(&mut self, sql: &str) -> Result<Vec<Option<String>>, BackendError> {
        let mut out = BytesMut::new();
        msg::query(&mut out, sql);
        self.stream.write_all(&out).await?;
        let mut rows = Vec::new();
        let mut err = None;
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                back::DATA_ROW => {
                    let b = f.body();
                    if b.len() >= 6 {
                        let len = i32::from_be_bytes([b[2], b[3], b[4], b[5]]);
                        rows.push(if len < 0 {
                            None
                        } else {
                            b.get(6..6 + len as usize)
                                .map(|v| String::from_utf8_lossy(v).into_owned())
                        });
                    }
                }
                back::ERROR_RESPONSE if err.is_none() => err = Some(f),
                back::READY_FOR_QUERY => {
                    self.txn_status = f.body().first().copied().unwrap_or(txn::IDLE);
                    return match err {
                        Some(f) => Err(BackendError::Server {
                            fields: ErrorFields::decode(f.body()),
                            raw: f,
                        }),
                        None => Ok(rows),
                    };
                }
                _ => {}
            }
        }
    }

    /// Politely ends the session so the server logs a clean disconnect.
    pub async fn terminate(mut self) {
        let _ = tokio::time::timeout(Duration::from_millis(200), async {
            let _ = self.stream.write_all(msg::TERMINATE).await;
            let _ = self.stream.shutdown().await;
        })
        .await;
    }
}

/// A plain connection to `node`: its Unix socket when the host is a directory, else TCP with
/// the host resolved, the last good addresses kept ([`resolve`]) and each address tried in
/// turn, as libpq does.
pub async fn connect_node(node: &NodeAddr) -> std::io::Result<Stream> {
    if let Some(path) = node.unix_socket() {
        return Ok(Stream::Unix(tokio::net::UnixStream::connect(path).await?));
    }
    let addrs = resolve::resolve(&node.host, node.port).await?;
    Ok(Stream::Plain(TcpStream::connect(&addrs[..]).await?))
}

/// Sends a CancelRequest on a fresh connection and waits (briefly) for the server to close it.
pub async fn send_cancel(tcp: &mut Stream, pid: i32, secret: i32) -> std::io::Result<()> {
    let mut b = BytesMut::with_capacity(16);
    b.put_i32(16);
    b.put_i32(crate::wire::frame::CANCEL_REQUEST);
    b.put_i32(pid);
    b.put_i32(secret);
    tcp.write_all(&b).await?;
    let mut sink = [0u8; 1];
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut sink)).await;
    Ok(())
}
