//! Named protocol bytes: message tags by direction, ReadyForQuery statuses, ErrorResponse
//! field codes, Describe/Close targets and the SSLRequest answer.
//!
//! Postgres reuses its letters across directions: a `D` from the client is Describe but a `D`
//! from the server is DataRow; likewise `C` (Close / CommandComplete), `E` (Execute /
//! ErrorResponse), `S` (Sync / ParameterStatus), `H` (Flush / CopyOutResponse), and `E`, `I`,
//! `S`, `T` mean other things again as a transaction status, a field code or a target kind. A
//! bare `b'D'` says nothing about which one a line means, and a match that mixes directions
//! reads as correct; the names below carry the direction, so such a mix shows on the page.
//! Names and letters follow the protocol documentation's "Message Formats" chapter.

/// Messages a client sends (frontend to backend).
pub mod front {
    pub const BIND: u8 = b'B';
    pub const CLOSE: u8 = b'C';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';
    pub const DESCRIBE: u8 = b'D';
    pub const EXECUTE: u8 = b'E';
    pub const FLUSH: u8 = b'H';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const PARSE: u8 = b'P';
    /// PasswordMessage, and the GSSResponse, SASLInitialResponse and SASLResponse sharing its tag.
    pub const PASSWORD: u8 = b'p';
    pub const QUERY: u8 = b'Q';
    pub const SYNC: u8 = b'S';
    pub const TERMINATE: u8 = b'X';
}

/// Messages a server sends (backend to frontend).
pub mod back {
    /// Every AuthenticationXxx request; the sub-code follows the length.
    pub const AUTHENTICATION: u8 = b'R';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const BIND_COMPLETE: u8 = b'2';
    pub const CLOSE_COMPLETE: u8 = b'3';
    pub const COMMAND_COMPLETE: u8 = b'C';
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_IN_RESPONSE: u8 = b'G';
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    pub const DATA_ROW: u8 = b'D';
    /// EmptyQueryResponse.
    pub const EMPTY_QUERY: u8 = b'I';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
    pub const NO_DATA: u8 = b'n';
    pub const NOTICE_RESPONSE: u8 = b'N';
    /// NotificationResponse (LISTEN/NOTIFY).
    pub const NOTIFICATION: u8 = b'A';
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const PARSE_COMPLETE: u8 = b'1';
    pub const PORTAL_SUSPENDED: u8 = b's';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const ROW_DESCRIPTION: u8 = b'T';
}

/// The transaction status a ReadyForQuery carries.
pub mod txn {
    pub const IDLE: u8 = b'I';
    pub const IN_TRANSACTION: u8 = b'T';
    /// In a failed transaction block: statements are refused until it ends.
    pub const FAILED: u8 = b'E';
}

/// Field codes inside an ErrorResponse or NoticeResponse body.
pub mod field {
    /// Localized severity.
    pub const SEVERITY: u8 = b'S';
    /// Severity, never localized (Postgres 9.6+).
    pub const SEVERITY_NONLOCALIZED: u8 = b'V';
    /// SQLSTATE.
    pub const CODE: u8 = b'C';
    pub const MESSAGE: u8 = b'M';
    pub const FILE: u8 = b'F';
    pub const ROUTINE: u8 = b'R';
}

/// What a Describe or Close names: a prepared statement or a portal.
pub mod target {
    pub const STATEMENT: u8 = b'S';
    pub const PORTAL: u8 = b'P';
}

/// The one-byte answer to an SSLRequest (or GSSENCRequest), before any message.
pub mod ssl {
    pub const WILLING: u8 = b'S';
    pub const UNWILLING: u8 = b'N';
}
