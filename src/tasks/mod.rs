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
