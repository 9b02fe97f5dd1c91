//! pgsidecar: a Postgres wire-protocol proxy deployed next to an application.
//!
//! The data path, in order: `wire` (framing) → `session` (startup, auth, relay) → `pool`
//! (backend connections) → `backend` (one server connection). See docs/ARCHITECTURE.md.

pub mod admin;
pub mod analyze;
pub mod auth;
pub mod backend;
pub mod cache;
pub mod cancel;
pub mod clients;
pub mod config;
pub mod context;
pub mod error;
pub mod explain;
pub mod frontend;
pub mod http;
pub mod idle_spin;
pub mod lifecycle;
pub mod listen;
pub mod locks;
pub mod metrics;
pub mod pool;
#[cfg(test)]
mod proptests;
pub mod quota;
pub mod route;
pub mod server;
pub mod session;
pub mod settings;
pub mod stats;
pub mod switch;
pub mod tasks;
pub mod tls;
pub mod wire;
pub mod workers;
