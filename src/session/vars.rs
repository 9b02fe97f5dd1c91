//! What the client has set for its session, as far as the proxy must follow it.

use super::lexing::LexState;
use super::settings::Settings;

/// The client's session variables. It exists because under pooling the client's settings must
/// follow it from backend to backend (`settings`), and the analyser must lex its text as the
/// server will (`lexing`): both change with what the client sends and the server reports.
pub(super) struct ClientVars {
    pub settings: Settings,
    /// How the server lexes this client's text (standard_conforming_strings, client_encoding).
    pub lex: LexState,
}
