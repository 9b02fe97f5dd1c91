//! `[stats]`: how many statement shapes `SHOW QUERIES` and the metrics keep (how: `stats/`).

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatsConfig {
    /// Statement shapes tracked for SHOW QUERIES (0 turns statement statistics off).
    pub max_queries: usize,
    /// Of those, the ones with the most total time exported as `pgsidecar_query_*` metrics
    /// (each shape is one series per metric: keep it small).
    pub metrics_queries: usize,
}

impl Default for StatsConfig {
    fn default() -> Self {
        StatsConfig {
            max_queries: 1000,
            metrics_queries: 50,
        }
    }
}
