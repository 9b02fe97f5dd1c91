//! A typed builder for a sidecar's TOML configuration, so a test names the settings it is about
//! and the topology it runs in instead of hand-writing TOML:
//!
//! ```ignore
//! let sc = SidecarConfig::full_topology(lab())
//!     .cache_rule("catalog prices", &["prices"], "90s")
//!     .set("pool.max_size", 4)
//!     .start();
//! ```
//!
//! Keys are those of `config/pgsidecar.toml` (see `src/config/`); the sidecar refuses unknown
//! ones, so a misspelt key fails the test at start.

use toml::{Table, Value};

use super::{free_port, Lab, Sidecar, APP_PASSWORD, APP_USER};

/// A sidecar's configuration, listening on a free loopback port of its own.
#[derive(Clone, Debug)]
pub struct SidecarConfig {
    port: u16,
    doc: Table,
}

impl Default for SidecarConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl SidecarConfig {
    /// `[listen] addr` on a free port, nothing else: say where the servers are with
    /// [`SidecarConfig::upstream`] (or use one of the constructors below).
    pub fn new() -> Self {
        let port = free_port();
        SidecarConfig {
            port,
            doc: Table::new(),
        }
        .set("listen.addr", format!("127.0.0.1:{port}"))
    }

    /// In front of the Postgres on `port` (no replicas), over plain TCP; clients log in to it as
    /// themselves.
    pub fn primary_at(port: u16) -> Self {
        Self::new().upstream(&format!("postgres://127.0.0.1:{port}"))
    }

    /// In front of `l`'s primary alone (no replicas, so no monitor), over plain TCP; clients log
    /// in to it as themselves.
    pub fn primary(l: &Lab) -> Self {
        Self::primary_at(l.primary_port())
    }

    /// In front of `l`'s primary and all its replicas, over plain TCP, the primary with the app's
    /// credentials (so the monitor verifies every role from the start).
    pub fn in_front_of(l: &Lab) -> Self {
        Self::new()
            .upstream(&format!(
                "postgres://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{}/postgres",
                l.primary_port()
            ))
            .replicas_of(l)
    }

    /// [`SidecarConfig::in_front_of`] `l`, every server probed every 100 ms (not 500 ms), so
    /// the replicas serve reads soon after start.
    pub fn routed(l: &Lab) -> Self {
        Self::in_front_of(l).set("routing.health_interval", "100ms")
    }

    /// The topology pgsidecar exists for: [`SidecarConfig::routed`] in front of `l`, the result
    /// cache on `l`'s Redis and advisory locks on `inventory (sku_id, warehouse_id)`. No cache
    /// rule: add the test's own.
    pub fn full_topology(l: &Lab) -> Self {
        Self::routed(l)
            .cache(&l.redis_url())
            .lock("inventory", &["sku_id", "warehouse_id"])
    }

    /// `config/pgsidecar.toml` in front of `l` ([`SidecarConfig::in_front_of`]): its routing
    /// and cache rules ([`SidecarConfig::example_rules`]), the result cache on `l`'s Redis and
    /// its lock on `inventory (sku_id, warehouse_id)`.
    pub fn example_topology(l: &Lab) -> Self {
        Self::in_front_of(l)
            .example_rules()
            .cache(&l.redis_url())
            .lock("inventory", &["sku_id", "warehouse_id"])
    }

    /// `[upstream] primary = url`, `tls = "disable"`.
    pub fn upstream(self, primary: &str) -> Self {
        self.set("upstream.primary", primary)
            .set("upstream.tls", "disable")
    }

    /// `[upstream] replicas`: every replica of `l`, without credentials.
    pub fn replicas_of(self, l: &Lab) -> Self {
        let replicas: Vec<String> = l
            .replica_ports()
            .iter()
            .map(|p| format!("postgres://127.0.0.1:{p}"))
            .collect();
        self.set("upstream.replicas", replicas)
    }

    /// Replica lag limits wide open (`routing.max_lag_bytes`, `routing.max_lag`): only what a
    /// read must see (commit positions) keeps a lagging or paused replica from serving it.
    pub fn no_lag_limits(self) -> Self {
        self.set("routing.max_lag_bytes", 1_000_000_000_000i64)
            .set("routing.max_lag", "1h")
    }

    /// Any key, by its dotted path (`"pool.max_size"`, `"listen.startup_timeout"`); replaces
    /// what was there.
    pub fn set(mut self, path: &str, value: impl Into<Value>) -> Self {
        let (table, key) = self.table_for(path);
        table.insert(key.to_string(), value.into());
        self
    }

    /// Removes a key set before (by its dotted path), e.g. `"upstream.tls"` to get the default.
    pub fn unset(mut self, path: &str) -> Self {
        let (table, key) = self.table_for(path);
        table.remove(key);
        self
    }

    /// The result cache on `redis` (a URL, or Redis Cluster seeds comma-separated), with the
    /// default key prefix and invalidation channel: every sidecar on that Redis shares entries
    /// and invalidations ([`SidecarConfig::fleet`] for a fleet of a test's own).
    pub fn cache(self, redis: &str) -> Self {
        self.set("cache.enabled", true).set("cache.redis", redis)
    }

    /// The cache's key prefix `name` and invalidation channel `name:invalidate`: the sidecars
    /// with the same name share entries and invalidations, and no other.
    pub fn fleet(self, name: &str) -> Self {
        self.set("cache.key_prefix", name)
            .set("cache.invalidation_channel", format!("{name}:invalidate"))
    }

    /// A `[[routing.rules]]` entry, after those added before.
    pub fn rule(mut self, rule: Rule) -> Self {
        self.push("routing.rules", rule.0);
        self
    }

    /// A rule caching reads of `tables` for `ttl`.
    pub fn cache_rule(self, name: &str, tables: &[&str], ttl: &str) -> Self {
        self.rule(Rule::named(name).tables(tables).set("cache_ttl", ttl))
    }

    /// The routing rules of `config/pgsidecar.toml`: catalog reads (`products`, `prices`,
    /// `categories`) cached for 90 s, `reporting*` applications on the primary.
    pub fn example_rules(self) -> Self {
        self.rule(
            Rule::named("catalog reads")
                .set("kind", "read")
                .tables(&["products", "prices", "categories"])
                .set("cache_ttl", "90s"),
        )
        .rule(
            Rule::named("reports on the primary")
                .set("application_name", "reporting*")
                .set("route", "primary"),
        )
    }

    /// An `[[auth.rules]]` entry (`user`, `database`, `address`, `method`), after those added
    /// before.
    pub fn auth_rule(mut self, fields: &[(&str, &str)]) -> Self {
        let rule = fields
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(*v)))
            .collect();
        self.push("auth.rules", rule);
        self
    }

    /// A `[[locks]]` entry: writes to `table` lock by `key`'s columns.
    pub fn lock(self, table: &str, key: &[&str]) -> Self {
        self.lock_with(table, key, &[])
    }

    /// A `[[locks]]` entry with more settings (`lock_timeout`, `undeterminable`, …).
    pub fn lock_with(mut self, table: &str, key: &[&str], more: &[(&str, Value)]) -> Self {
        let mut lock = Table::new();
        lock.insert("table".into(), table.into());
        lock.insert("key".into(), strings(key));
        for (k, v) in more {
            lock.insert(k.to_string(), v.clone());
        }
        self.push("locks", lock);
        self
    }

    /// The HTTP endpoint (`/metrics`, `/healthz`, `/readyz`) on a free port
    /// ([`Sidecar::http_port`] once started).
    pub fn http(self) -> Self {
        self.set("admin.http_addr", format!("127.0.0.1:{}", free_port()))
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The configuration as the sidecar reads it.
    pub fn to_toml(&self) -> String {
        toml::to_string(&self.doc).expect("a TOML table always serializes")
    }

    /// `pgsidecar run` with this configuration ([`Sidecar::start`]).
    pub fn start(&self) -> Sidecar {
        Sidecar::start(&self.to_toml())
    }

    /// Appends `entry` to the array of tables at `path`.
    fn push(&mut self, path: &str, entry: Table) {
        let (table, key) = self.table_for(path);
        table
            .entry(key)
            .or_insert_with(|| Value::Array(Vec::new()))
            .as_array_mut()
            .unwrap_or_else(|| panic!("{path} is not an array of tables"))
            .push(Value::Table(entry));
    }

    /// The table that holds `path`'s last key (made on the way), and that key.
    fn table_for<'a, 'p>(&'a mut self, path: &'p str) -> (&'a mut Table, &'p str) {
        let mut parts: Vec<&str> = path.split('.').collect();
        let key = parts.pop().expect("split gives at least one part");
        let mut table = &mut self.doc;
        for part in parts {
            table = table
                .entry(part)
                .or_insert_with(|| Value::Table(Table::new()))
                .as_table_mut()
                .unwrap_or_else(|| panic!("{part} in {path} is not a table"));
        }
        (table, key)
    }
}

/// One `[[routing.rules]]` entry.
#[derive(Clone, Debug, Default)]
pub struct Rule(Table);

impl Rule {
    /// A rule named `name` (shown by SHOW RULES and EXPLAIN).
    pub fn named(name: &str) -> Rule {
        Rule::unnamed().set("name", name)
    }

    /// A rule without a name (the console numbers it).
    pub fn unnamed() -> Rule {
        Rule(Table::new())
    }

    /// The `tables` condition.
    pub fn tables(self, tables: &[&str]) -> Rule {
        self.set("tables", strings(tables))
    }

    /// Any other key: a condition (`kind`, `user`, `application_name`, …) or an action
    /// (`route`, `cache_ttl`, a timeout).
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Rule {
        self.0.insert(key.to_string(), value.into());
        self
    }
}

fn strings(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| Value::from(*s)).collect())
}
