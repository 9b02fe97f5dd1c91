//! The Postgres wire protocol, as little of it as a proxy needs.
//!
//! Messages are framed by their 5-byte header (tag + length) and kept as the raw bytes they
//! arrived as ([`Frame`]); only the few messages the proxy must inspect or synthesize are
//! decoded or built here. `pgwire` was considered and not used: it decodes every message into
//! owned structs, which is the opposite of a pass-through data path.

pub mod frame;
pub mod msg;
pub mod tag;

pub use frame::{Frame, FrameError, FrameReader, StartupPacket};

/// SQLSTATE codes the proxy itself emits, named so call sites read as intent.
pub mod sqlstate {
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const IDLE_SESSION_TIMEOUT: &str = "57P05";
    pub const QUERY_CANCELED: &str = "57014";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
    pub const CONFIGURATION_LIMIT_EXCEEDED: &str = "53400";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const INVALID_AUTHORIZATION: &str = "28000";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const INTERNAL_ERROR: &str = "XX000";
    pub const LOCK_NOT_AVAILABLE: &str = "55P03";
    pub const READ_ONLY_TRANSACTION: &str = "25006";
    pub const UNDEFINED_OBJECT: &str = "42704";
    pub const SYNTAX_ERROR: &str = "42601";
    pub const DUPLICATE_PSTATEMENT: &str = "42P05";
    pub const UNDEFINED_PSTATEMENT: &str = "26000";
}
