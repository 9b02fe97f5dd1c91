//! The work that needs the whole shared `Context`: background tasks (a monitor per node, the
//! NOTIFY invalidation listener, the pg_proc loader, the WAL flusher, the mirroring task),
//! metrics observation, and the SWITCH procedure.
//!
//! Why a layer of its own: each of these serves one lower module (`route`, `cache`, `switch`,
//! `metrics`) but reads several parts of the context at once (topology, monitor login, pools,
//! analyzer, write log). Were they kept beside the module they serve, that module would import
//! `Context`, which imports it back: one circle through most of the crate. Here they stand
//! above `context.rs`, and the modules they serve hold only the state they act on (`Flusher`,
//! `Reload`, `Mirror`, `Environments`) and import nothing above themselves.

pub mod catalog;
pub mod cutover;
pub mod flush;
pub mod mirror;
pub mod monitor;
pub mod notify;
pub mod observe;

pub use cutover::{close, switch, Switched};

/// Why a background task's round (or a step of SWITCH) failed. The tasks log it and try again
/// later; the messages are the log lines' `error` field.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// No login for the proxy's own connections yet (none configured, no client logged in);
    /// the message says what waits for one.
    #[error("{0}")]
    NoLogin(&'static str),
    #[error(transparent)]
    Backend(#[from] crate::backend::BackendError),
    #[error(transparent)]
    Pool(#[from] crate::pool::PoolError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The server answered a statement with an error: its message.
    #[error("{0}")]
    Refused(String),
    /// `what` took longer than the task waits.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// A query answered without the row it must return; the message names it.
    #[error("{0}")]
    NoAnswer(&'static str),
    #[error("unexpected probe answer '{0}'")]
    UnexpectedProbe(String),
    #[error("no connection")]
    NoConnection,
    /// A SWITCH happened meanwhile: the round starts again on the new environment.
    #[error("environment switched")]
    Switched,
    #[error("environment \"{0}\" is no longer defined")]
    EnvironmentGone(String),
    #[error(transparent)]
    Url(#[from] crate::config::UrlError),
    #[error("database {database}: {source}")]
    Database {
        database: String,
        source: Box<TaskError>,
    },
}
