//! `[switch]`: mirroring reads to another environment before a switch (what is mirrored and
//! why: `switch/mirror.rs`). Beside the rest of the configuration, so that `config` imports
//! nothing above it.

use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MirrorConfig {
    /// The environment (`[environments.<name>]`) mirrored reads run on; none: mirroring off.
    pub mirror_to: Option<String>,
    /// Share of eligible reads copied there, 0.0 (off) to 1.0. Hot-reloadable.
    pub mirror_sample: f64,
    /// Copies waiting for the mirroring task at most; beyond it they are dropped and counted.
    /// Read at startup.
    pub mirror_queue: usize,
    /// Longest a copy may take on the target (connect included) before it counts as an error.
    #[serde(with = "crate::config::duration")]
    pub mirror_timeout: Duration,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig {
            mirror_to: None,
            mirror_sample: 0.0,
            mirror_queue: 1000,
            mirror_timeout: Duration::from_secs(5),
        }
    }
}

impl MirrorConfig {
    /// Problems for `Config::validate`.
    pub fn problems(&self, environments: &[String], active: &str) -> Vec<String> {
        let mut p = Vec::new();
        if !(0.0..=1.0).contains(&self.mirror_sample) || self.mirror_sample.is_nan() {
            p.push(format!(
                "switch.mirror_sample = {} must be between 0.0 and 1.0",
                self.mirror_sample
            ));
        }
        if let Some(to) = &self.mirror_to {
            if !environments.iter().any(|e| e == to) {
                p.push(format!(
                    "switch.mirror_to = \"{to}\" is not a defined environment (defined: {})",
                    environments.join(", ")
                ));
            }
            if to == active && self.mirror_sample > 0.0 {
                p.push(format!(
                    "switch.mirror_to = \"{to}\" is the active environment: mirror to the one you will switch to"
                ));
            }
        }
        if self.mirror_queue == 0 {
            p.push("switch.mirror_queue must be at least 1".into());
        }
        p
    }
}
