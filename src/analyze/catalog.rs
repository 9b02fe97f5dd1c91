//! Function volatility catalog.

use std::collections::{HashMap, HashSet};

use super::types::{TableRef, Volatility};

/// One function (or the union of several with the same schema, name and arity) of `pg_proc`.
#[derive(Debug, Clone, PartialEq)]
struct Overload {
    schema: String,
    /// Fewest arguments a call may pass (`pronargs - pronargdefaults`).
    min_args: u16,
    /// Most arguments (`pronargs`; `u16::MAX` for VARIADIC and for built-in defaults, whose
    /// arity is not recorded).
    max_args: u16,
    volatility: Volatility,
}

impl Overload {
    fn accepts(&self, nargs: Option<usize>) -> bool {
        nargs.is_none_or(|n| (self.min_args as usize..=self.max_args as usize).contains(&n))
    }
}

/// Function name → volatility, as in `pg_proc.provolatile`, and the names of views (whose
/// results depend on tables the statement does not name).
///
/// Resolution follows what Postgres can pick, erring towards "unknown":
/// * a schema-qualified call (`myschema.f`) considers that schema's functions only;
/// * an unqualified call considers every schema that has the name, not only `pg_catalog` and
///   the session's `search_path` (which the analysis, cached by text for all sessions, cannot
///   know): Postgres picks among all overloads on the path by argument types, so a user's
///   `public.upper(int)` can be what `upper(x)` calls;
/// * candidates are the overloads that accept the call's argument count (defaults and
///   VARIADIC counted); if candidates in different schemas differ in volatility, the call is
///   ambiguous and resolves to unknown (the statement goes to the primary, uncached);
///   otherwise the most volatile candidate counts;
/// * a function that is not in the catalog is [`Volatility::Volatile`].
///
/// SQL-standard value functions (`CURRENT_TIMESTAMP`, `CURRENT_USER`, `LOCALTIME`, …) and
/// syntax-level functions (`COALESCE`, `NULLIF`, `GREATEST`, `LEAST`) are not in `pg_proc`;
/// the analyzer handles them itself, whatever the catalog.
///
/// A sidecar serves several databases with one catalog: it holds the functions and views of
/// every database (`route::functions`), so a name is as volatile as its most volatile
/// meaning in any of them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FunctionCatalog {
    by_name: HashMap<String, Vec<Overload>>,
    /// View names, both bare (`v`) and qualified (`s.v`).
    views: HashSet<String>,
}

/// Built-in defaults, all in `pg_catalog`. Where overloads differ (e.g. `date_trunc` on
/// `timestamptz` is stable, on `timestamp` immutable), the max is used.
const BUILTIN: &[(&str, Volatility)] = {
    use Volatility::*;
    &[
        // aggregates
        ("count", Immutable),
        ("sum", Immutable),
        ("min", Immutable),
        ("max", Immutable),
        ("avg", Immutable),
        ("array_agg", Immutable),
        ("string_agg", Immutable),
        ("json_agg", Stable),
        ("jsonb_agg", Stable),
        ("json_object_agg", Stable),
        ("jsonb_object_agg", Stable),
        ("bool_and", Immutable),
        ("bool_or", Immutable),
        ("every", Immutable),
        ("bit_and", Immutable),
        ("bit_or", Immutable),
        ("stddev", Immutable),
        ("stddev_pop", Immutable),
        ("stddev_samp", Immutable),
        ("variance", Immutable),
        ("var_pop", Immutable),
        ("var_samp", Immutable),
        ("percentile_cont", Immutable),
        ("percentile_disc", Immutable),
        ("mode", Immutable),
        // window functions
        ("row_number", Immutable),
        ("rank", Immutable),
        ("dense_rank", Immutable),
        ("percent_rank", Immutable),
        ("cume_dist", Immutable),
        ("ntile", Immutable),
        ("lag", Immutable),
        ("lead", Immutable),
        ("first_value", Immutable),
        ("last_value", Immutable),
        ("nth_value", Immutable),
        // strings
        ("lower", Immutable),
        ("upper", Immutable),
        ("initcap", Immutable),
        ("length", Immutable),
        ("char_length", Immutable),
        ("character_length", Immutable),
        ("octet_length", Immutable),
        ("bit_length", Immutable),
        ("substring", Immutable),
        ("substr", Immutable),
        ("position", Immutable),
        ("strpos", Immutable),
        ("overlay", Immutable),
        ("trim", Immutable),
        ("btrim", Immutable),
        ("ltrim", Immutable),
        ("rtrim", Immutable),
        ("lpad", Immutable),
        ("rpad", Immutable),
        ("left", Immutable),
        ("right", Immutable),
        ("repeat", Immutable),
        ("replace", Immutable),
        ("reverse", Immutable),
        ("split_part", Immutable),
        ("translate", Immutable),
        ("starts_with", Immutable),
        ("md5", Immutable),
        ("sha256", Immutable),
        ("encode", Immutable),
        ("decode", Immutable),
        ("quote_ident", Immutable),
        ("quote_literal", Immutable),
        ("quote_nullable", Stable),
        ("regexp_replace", Immutable),
        ("regexp_match", Immutable),
        ("regexp_matches", Immutable),
        ("regexp_split_to_array", Immutable),
        ("regexp_split_to_table", Immutable),
        ("concat", Stable),
        ("concat_ws", Stable),
        ("format", Stable),
        ("to_char", Stable),
        ("to_number", Stable),
        ("to_date", Stable),
        ("to_timestamp", Stable),
        ("string_to_array", Immutable),
        ("array_to_string", Stable),
        // math
        ("abs", Immutable),
        ("round", Immutable),
        ("ceil", Immutable),
        ("ceiling", Immutable),
        ("floor", Immutable),
        ("trunc", Immutable),
        ("mod", Immutable),
        ("power", Immutable),
        ("pow", Immutable),
        ("sqrt", Immutable),
        ("exp", Immutable),
        ("ln", Immutable),
        ("log", Immutable),
        ("sign", Immutable),
        ("div", Immutable),
        ("width_bucket", Immutable),
        // arrays
        ("array_length", Immutable),
        ("array_lower", Immutable),
        ("array_upper", Immutable),
        ("array_position", Immutable),
        ("array_positions", Immutable),
        ("array_remove", Immutable),
        ("array_replace", Immutable),
        ("array_append", Immutable),
        ("array_prepend", Immutable),
        ("array_cat", Immutable),
        ("cardinality", Immutable),
        ("unnest", Immutable),
        ("generate_series", Stable),
        ("generate_subscripts", Immutable),
        // json
        ("to_json", Stable),
        ("to_jsonb", Stable),
        ("json_build_object", Stable),
        ("jsonb_build_object", Stable),
        ("json_build_array", Stable),
        ("jsonb_build_array", Stable),
        ("row_to_json", Stable),
        ("json_array_length", Immutable),
        ("jsonb_array_length", Immutable),
        ("json_array_elements", Immutable),
        ("jsonb_array_elements", Immutable),
        ("json_array_elements_text", Immutable),
        ("jsonb_array_elements_text", Immutable),
        ("json_each", Immutable),
        ("jsonb_each", Immutable),
        ("json_each_text", Immutable),
        ("jsonb_each_text", Immutable),
        ("json_extract_path", Immutable),
        ("jsonb_extract_path", Immutable),
        ("json_extract_path_text", Immutable),
        ("jsonb_extract_path_text", Immutable),
        ("json_object_keys", Immutable),
        ("jsonb_object_keys", Immutable),
        ("jsonb_set", Immutable),
        ("jsonb_insert", Immutable),
        ("jsonb_strip_nulls", Immutable),
        ("jsonb_pretty", Immutable),
        ("json_typeof", Immutable),
        ("jsonb_typeof", Immutable),
        ("jsonb_path_query", Immutable),
        ("jsonb_path_exists", Immutable),
        ("json_populate_record", Stable),
        ("jsonb_populate_record", Stable),
        ("json_to_recordset", Stable),
        ("jsonb_to_recordset", Stable),
        // date/time
        ("now", Stable),
        ("transaction_timestamp", Stable),
        ("statement_timestamp", Stable),
        ("date_trunc", Stable),
        ("date_part", Stable),
        ("extract", Stable),
        ("age", Stable),
        ("make_date", Immutable),
        ("make_time", Immutable),
        ("make_timestamp", Immutable),
        ("make_timestamptz", Stable),
        ("make_interval", Immutable),
        ("justify_days", Immutable),
        ("justify_hours", Immutable),
        ("justify_interval", Immutable),
        ("isfinite", Immutable),
        ("date_bin", Immutable),
        // session / system information
        ("current_setting", Stable),
        ("current_database", Stable),
        ("current_schema", Stable),
        ("current_schemas", Stable),
        ("version", Stable),
        ("pg_backend_pid", Stable),
        ("inet_client_addr", Stable),
        ("has_table_privilege", Stable),
        ("pg_typeof", Stable),
        ("col_description", Stable),
        ("obj_description", Stable),
        ("pg_get_userbyid", Stable),
        ("pg_table_size", Volatile),
        ("pg_total_relation_size", Volatile),
        ("pg_relation_size", Volatile),
        ("pg_is_in_recovery", Volatile),
        ("pg_postmaster_start_time", Stable),
        ("uuid_in", Immutable),
        ("hashtext", Immutable),
        ("hashtextextended", Immutable),
        ("hashint4", Immutable),
        ("hashint8", Immutable),
        ("pg_column_size", Stable),
        ("pg_get_viewdef", Stable),
        ("pg_get_indexdef", Stable),
        ("pg_get_constraintdef", Stable),
        ("pg_get_expr", Stable),
        ("format_type", Stable),
        ("pg_table_is_visible", Stable),
        ("array_dims", Immutable),
        ("array_ndims", Immutable),
        ("array_fill", Immutable),
        ("num_nonnulls", Immutable),
        ("num_nulls", Immutable),
        ("gcd", Immutable),
        ("lcm", Immutable),
        ("chr", Immutable),
        ("ascii", Immutable),
        ("to_hex", Immutable),
        ("crc32", Immutable),
        ("sha224", Immutable),
        ("sha384", Immutable),
        ("sha512", Immutable),
        ("bool_and", Immutable),
        ("any_value", Immutable),
        ("json_object", Stable),
        ("jsonb_object", Immutable),
        ("jsonb_path_query_first", Immutable),
        ("jsonb_path_query_array", Immutable),
        ("to_tsvector", Stable),
        ("to_tsquery", Stable),
        ("plainto_tsquery", Stable),
        ("websearch_to_tsquery", Stable),
        ("ts_rank", Immutable),
        ("ts_headline", Stable),
        // volatile: writes, sequences, locks, randomness, time of day, sleeps
        ("nextval", Volatile),
        ("setval", Volatile),
        ("currval", Volatile),
        ("lastval", Volatile),
        ("random", Volatile),
        ("random_normal", Volatile),
        ("setseed", Volatile),
        ("gen_random_uuid", Volatile),
        ("uuidv4", Volatile),
        ("uuidv7", Volatile),
        ("clock_timestamp", Volatile),
        ("timeofday", Volatile),
        ("pg_sleep", Volatile),
        ("pg_sleep_for", Volatile),
        ("pg_sleep_until", Volatile),
        ("txid_current", Volatile),
        ("txid_current_if_assigned", Volatile),
        ("pg_current_xact_id", Volatile),
        ("pg_current_xact_id_if_assigned", Volatile),
        ("pg_current_wal_lsn", Volatile),
        ("pg_current_wal_insert_lsn", Volatile),
        ("pg_switch_wal", Volatile),
        ("set_config", Volatile),
        ("pg_notify", Volatile),
        ("pg_cancel_backend", Volatile),
        ("pg_terminate_backend", Volatile),
        ("pg_reload_conf", Volatile),
        ("pg_advisory_lock", Volatile),
        ("pg_advisory_lock_shared", Volatile),
        ("pg_try_advisory_lock", Volatile),
        ("pg_try_advisory_lock_shared", Volatile),
        ("pg_advisory_unlock", Volatile),
        ("pg_advisory_unlock_shared", Volatile),
        ("pg_advisory_unlock_all", Volatile),
        ("pg_advisory_xact_lock", Volatile),
        ("pg_advisory_xact_lock_shared", Volatile),
        ("pg_try_advisory_xact_lock", Volatile),
        ("pg_try_advisory_xact_lock_shared", Volatile),
        ("lo_import", Volatile),
        ("lo_export", Volatile),
        ("lo_unlink", Volatile),
        ("lo_create", Volatile),
        ("dblink", Volatile),
        ("dblink_exec", Volatile),
    ]
};

impl FunctionCatalog {
    /// An empty catalog: every function is unknown, hence volatile.
    pub fn empty() -> FunctionCatalog {
        FunctionCatalog::default()
    }

    /// Defaults for common built-in functions (all in `pg_catalog`), for use until the real
    /// `pg_proc` has been loaded.
    pub fn builtin() -> FunctionCatalog {
        let mut c = FunctionCatalog {
            by_name: HashMap::with_capacity(BUILTIN.len() * 2),
            views: HashSet::new(),
        };
        for (name, v) in BUILTIN {
            c.insert("pg_catalog", name, *v);
        }
        c
    }

    /// From `SELECT n.nspname, p.proname, p.provolatile FROM pg_proc p JOIN pg_namespace n ON
    /// n.oid = p.pronamespace`. Names are taken verbatim (they are stored case-exact in pg_proc).
    /// Rows without argument counts accept any number of arguments.
    pub fn from_rows<I, S, N>(rows: I) -> FunctionCatalog
    where
        I: IntoIterator<Item = (S, N, char)>,
        S: AsRef<str>,
        N: AsRef<str>,
    {
        let mut c = FunctionCatalog::empty();
        c.extend_rows(rows);
        c
    }

    /// Adds rows (same shape as [`FunctionCatalog::from_rows`]) to this catalog.
    pub fn extend_rows<I, S, N>(&mut self, rows: I)
    where
        I: IntoIterator<Item = (S, N, char)>,
        S: AsRef<str>,
        N: AsRef<str>,
    {
        for (schema, name, v) in rows {
            self.insert(
                schema.as_ref(),
                name.as_ref(),
                Volatility::from_provolatile(v),
            );
        }
    }

    /// Adds one function of any arity.
    pub fn insert(&mut self, schema: &str, name: &str, v: Volatility) {
        self.insert_overload(schema, name, 0, u16::MAX, v);
    }

    /// Adds one `pg_proc` row: `nargs` arguments of which `ndefaults` have defaults; a
    /// VARIADIC function takes any number beyond.
    pub fn insert_proc(
        &mut self,
        schema: &str,
        name: &str,
        nargs: u16,
        ndefaults: u16,
        variadic: bool,
        v: Volatility,
    ) {
        let max = if variadic { u16::MAX } else { nargs };
        self.insert_overload(schema, name, nargs.saturating_sub(ndefaults), max, v);
    }

    fn insert_overload(&mut self, schema: &str, name: &str, min: u16, max: u16, v: Volatility) {
        let list = self.by_name.entry(name.to_owned()).or_default();
        match list
            .iter_mut()
            .find(|o| o.schema == schema && o.min_args == min && o.max_args == max)
        {
            Some(o) => o.volatility = o.volatility.max(v),
            None => list.push(Overload {
                schema: schema.to_owned(),
                min_args: min,
                max_args: max,
                volatility: v,
            }),
        }
    }

    /// Records a view (`relkind = 'v'`).
    pub fn insert_view(&mut self, schema: &str, name: &str) {
        self.views.insert(name.to_owned());
        self.views.insert(format!("{schema}.{name}"));
    }

    /// Whether `t` may be a view (unqualified: a view of that name in any schema).
    pub fn is_view(&self, t: &TableRef) -> bool {
        if self.views.is_empty() {
            return false;
        }
        match &t.schema {
            Some(s) => self.views.contains(&format!("{s}.{}", t.name)),
            None => self.views.contains(&t.name),
        }
    }

    /// Adds everything `other` knows (another database's functions and views).
    pub fn merge(&mut self, other: &FunctionCatalog) {
        for (name, list) in &other.by_name {
            for o in list {
                self.insert_overload(&o.schema, name, o.min_args, o.max_args, o.volatility);
            }
        }
        self.views.extend(other.views.iter().cloned());
    }

    /// Number of distinct function names.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Volatility of `schema.name` called with any number of arguments (see the type docs for
    /// the rules); `None` when unknown or ambiguous.
    pub fn lookup(&self, schema: Option<&str>, name: &str) -> Option<Volatility> {
        self.resolve(schema, name, None)
    }

    /// Volatility of a call of `schema.name` with `nargs` arguments (`None`: not known), as
    /// Postgres could resolve it; `None` when no function fits or the candidates disagree.
    /// `name` and `schema` must already be normalized (lower-cased unless quoted).
    pub fn resolve(
        &self,
        schema: Option<&str>,
        name: &str,
        nargs: Option<usize>,
    ) -> Option<Volatility> {
        let mut candidates = self.candidates(schema, name, nargs).peekable();
        let first: &Overload = candidates.peek().copied()?;
        let (mut lo, mut hi, mut schemas) = (first.volatility, first.volatility, 1);
        for o in candidates {
            lo = lo.min(o.volatility);
            hi = hi.max(o.volatility);
            if o.schema != first.schema {
                schemas += 1;
            }
        }
        // Which one Postgres picks depends on types and search_path: unknown.
        if schemas > 1 && lo != hi {
            return None;
        }
        Some(hi)
    }

    /// Whether every function a call of `name` with `nargs` arguments could resolve to is in
    /// `pg_catalog` (and there is one).
    pub fn only_in_pg_catalog(&self, name: &str, nargs: Option<usize>) -> bool {
        let mut any = false;
        for o in self.candidates(None, name, nargs) {
            if o.schema != "pg_catalog" {
                return false;
            }
            any = true;
        }
        any
    }

    fn candidates<'a>(
        &'a self,
        schema: Option<&'a str>,
        name: &str,
        nargs: Option<usize>,
    ) -> impl Iterator<Item = &'a Overload> + 'a {
        self.by_name
            .get(name)
            .into_iter()
            .flatten()
            .filter(move |o| schema.is_none_or(|s| o.schema == s) && o.accepts(nargs))
    }

    /// Like [`FunctionCatalog::lookup`] but unknown functions are `Volatile`.
    pub fn volatility(&self, schema: Option<&str>, name: &str) -> Volatility {
        self.lookup(schema, name).unwrap_or(Volatility::Volatile)
    }
}
