//! Every integration test of pgsidecar but the driver matrix (`tests/drivers.rs`, which needs
//! the machine to itself), in one test binary: `cargo test --test it`.
//!
//! One module per area (the test binaries they once were). A single binary builds and links
//! `tests/support` once instead of once per area, and runs the areas side by side instead of
//! one after another. Each area keeps a lab of its own ([`support::lab`]: Postgres primary, two
//! streaming replicas, Redis), started on its first use, as when it was a binary.
//!
//! Run one area or one test by its path:
//! `cargo test --test it routing::`, `cargo test --test it outage::primary_restarts_under_load`.
//!
//! Tests of an area run at the same time (`RUST_TEST_THREADS`, 4 in `scripts/test.sh`) against
//! the area's lab, beside tests of other areas, so
//! - a test that stops, pauses or restarts a server, changes a server setting, restarts or
//!   flushes Redis, or pauses Redis clients runs on a private lab ([`support::Lab::start`]) or a
//!   private Redis ([`support::Redis::start`]);
//! - each test uses its own database ([`support::Lab::fresh_db`]) and its own sidecars;
//! - what is process-wide is made once for every area (the driver venv,
//!   [`support::driver_python`]).

#[path = "../support/mod.rs"]
mod support;

mod admin;
mod auth;
mod bluegreen;
mod cache;
mod cache_module;
mod channel_binding;
mod compat;
mod config_builder;
mod consistency;
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
