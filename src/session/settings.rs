//! Moved to [`crate::settings`]: the session-settings vocabulary lies below the session, so
//! backends, pools and locks can use it without importing the session.
pub use crate::settings::*;
