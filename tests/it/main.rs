//! Every integration test of pgsidecar, in one test binary: `cargo test --test it`.
//!
//! One module per area (the test binaries they once were). A single binary builds and links
//! `tests/support` once instead of once per area, and starts one shared lab (Postgres primary,
//! two streaming replicas, Redis; [`support::lab`]) for all of them instead of one per area.
//!
//! Run one area or one test by its path:
//! `cargo test --test it routing::`, `cargo test --test it outage::primary_restarts_under_load`.
//!
//! Sharing one process and one lab: tests of every area run at the same time
//! (`RUST_TEST_THREADS`, 4 in `scripts/test.sh`) against the shared lab, so
//! - a test that stops, pauses or restarts a server, changes a server setting, restarts or
//!   flushes Redis, or pauses Redis clients runs on a private lab ([`support::Lab::start`]) or a
//!   private Redis ([`support::Redis::start`]);
//! - each test uses its own database ([`support::Lab::fresh_db`]) and its own sidecars;
//! - the sidecars of one area form their own cache fleet in the shared Redis (their own key
//!   prefix and invalidation channel, see [`support::SidecarConfig::cache`]), as when each area
//!   had a Redis of its own: a sidecar of another area, killed at the end of its test, never
//!   makes this area's writers wait out its lease.

#[path = "../support/mod.rs"]
mod support;

mod admin;
mod auth;
mod bluegreen;
mod cache;
mod cache_module;
mod channel_binding;
mod compat;
mod consistency;
mod drivers;
mod explain_golden;
mod flash_sale;
mod foundation;
mod lab_smoke;
mod locks;
mod nohang;
mod operations;
mod outage;
mod pipeline;
mod read_after_write;
mod routing;
mod security;
mod sqlsafety;
mod timeouts;
mod write_path;
