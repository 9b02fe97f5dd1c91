//! The one contract by which an error reaches a client.
//!
//! Why: every module has its own error enum (joined with `#[from]` where one wraps another),
//! but a client sees only three things of any of them — the SQLSTATE its driver maps to an
//! exception type, a message that must not leak internal addresses or credentials, and the
//! count an operator watches. Deciding those in one trait per error type, instead of at each
//! place that writes an ErrorResponse, keeps the choice in one place per module and makes
//! every error sent to a client counted under `pgsidecar_client_errors_total{kind}`.

use bytes::{Bytes, BytesMut};

use crate::wire::msg::{self, Severity};

/// An error as a client is told of it.
pub trait ClientFacing: std::fmt::Display + Send + Sync {
    /// The SQLSTATE (drivers map it to their exception types).
    fn sqlstate(&self) -> &str;

    /// What the client reads: actionable, without internal addresses, credentials or server
    /// internals (those stay in the log). By default the error's own text.
    fn client_message(&self) -> String {
        self.to_string()
    }

    /// The `kind` label of `pgsidecar_client_errors_total`: the module and the variant's
    /// family, a fixed set.
    fn metric_label(&self) -> &'static str;
}

/// Appends `e` as an ErrorResponse of `severity` to `buf`, and counts it.
pub fn respond(buf: &mut BytesMut, severity: Severity, e: &dyn ClientFacing) {
    crate::metrics::client_error(e.metric_label());
    msg::error_response(buf, severity, e.sqlstate(), &e.client_message());
}

/// [`respond`] into a buffer of its own.
pub fn response(severity: Severity, e: &dyn ClientFacing) -> Bytes {
    let mut buf = BytesMut::new();
    respond(&mut buf, severity, e);
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("connect to 10.0.0.7:5432 refused")]
    struct Internal;

    impl ClientFacing for Internal {
        fn sqlstate(&self) -> &str {
            "08006"
        }
        fn client_message(&self) -> String {
            "cannot reach the database server".into()
        }
        fn metric_label(&self) -> &'static str {
            "test_internal"
        }
    }

    #[test]
    fn a_client_gets_the_sqlstate_and_the_scrubbed_message_and_the_error_is_counted() {
        let before = crate::metrics::client_errors_total("test_internal");
        let bytes = response(Severity::Fatal, &Internal);
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("08006") && text.contains("cannot reach the database server"));
        assert!(
            !text.contains("10.0.0.7"),
            "the internal address stays in the log"
        );
        assert_eq!(
            crate::metrics::client_errors_total("test_internal"),
            before + 1
        );
    }
}
