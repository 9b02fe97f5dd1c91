//! The typed sidecar configuration of `tests/support` (`SidecarConfig`, `Rule`) writes what the
//! sidecar accepts.

use crate::support::{self, Rule, SidecarConfig};

/// The builder's TOML is a configuration the sidecar accepts: `pgsidecar check` passes it.
#[test]
fn the_built_configuration_passes_pgsidecar_check() {
    let cfg = SidecarConfig::primary_at(5432)
        .set("upstream.replicas", vec!["postgres://127.0.0.1:5433"])
        .cache("redis://127.0.0.1:6379")
        .example_rules()
        .cache_rule("prices", &["prices"], "60s")
        .rule(
            Rule::unnamed()
                .set("user", "batch")
                .set("query_timeout", "10m"),
        )
        .lock("inventory", &["sku_id", "warehouse_id"])
        .lock_with("stock", &["sku_id"], &[("lock_timeout", "1s".into())])
        .set("pool.max_size", 4)
        .set("listen.unix_socket_mode", 0o700)
        .http();
    let text = cfg.to_toml();
    let dir = support::new_subdir("config-check");
    let file = dir.join("pgsidecar.toml");
    std::fs::write(&file, &text).unwrap();
    support::run(
        std::process::Command::new(env!("CARGO_BIN_EXE_pgsidecar"))
            .arg("check")
            .arg("--config")
            .arg(&file),
        "pgsidecar check",
    )
    .unwrap_or_else(|e| panic!("{e}\n{text}"));
}
