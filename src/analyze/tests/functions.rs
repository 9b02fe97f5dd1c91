//! Function volatility: what keeps a statement on a replica or out of the cache.

use super::*;

#[test]
fn nextval_goes_to_primary() {
    let x = a("SELECT nextval('order_seq')");
    assert!(!x.read_only);
    assert_eq!(x.volatility, Volatility::Volatile);
    assert!(!x.cacheable());
    assert!(x.reasons.iter().any(|r| r.contains("nextval")));
    // nextval is a pg_catalog built-in: it does not hide writes to user tables.
    assert!(x.hidden_writes.is_none());
}

#[test]
fn setval_and_txid_current_go_to_primary() {
    for sql in [
        "SELECT setval('s', 10)",
        "SELECT txid_current()",
        "SELECT pg_current_wal_lsn()",
        "INSERT INTO t (id) VALUES (nextval('s'))",
    ] {
        assert!(!a(sql).read_only, "{sql}");
    }
}

#[test]
fn user_function_unknown_to_catalog_is_volatile() {
    let x = a("SELECT compute_discount(42)");
    assert_eq!(x.volatility, Volatility::Volatile);
    assert!(!x.read_only);
    assert_eq!(x.unknown_functions, vec!["compute_discount".to_owned()]);
    assert!(x.hidden_writes.is_some());
    assert!(undeterminable(&x.lock_keys(&t("stock"), STOCK_KEY)));
}

#[test]
fn catalog_rows_make_user_functions_known() {
    let catalog = FunctionCatalog::from_rows([
        ("public", "compute_discount", 's'),
        ("pg_catalog", "now", 's'),
        ("pg_catalog", "lower", 'i'),
        ("billing", "charge", 'v'),
    ]);
    let x = analyze("SELECT compute_discount(42), lower('X')", &catalog);
    assert!(x.read_only);
    assert_eq!(x.volatility, Volatility::Stable);
    assert!(x.unknown_functions.is_empty());
    let x = analyze("SELECT billing.charge(1)", &catalog);
    assert!(!x.read_only);
    assert!(
        x.hidden_writes.is_some(),
        "a user-defined volatile function may write"
    );
    // Qualified lookups must match the schema exactly.
    let x = analyze("SELECT other.compute_discount(1)", &catalog);
    assert_eq!(
        x.unknown_functions,
        vec!["other.compute_discount".to_owned()]
    );
    // Overloads: the most volatile wins.
    let catalog = FunctionCatalog::from_rows([("public", "f", 'i'), ("public", "f", 'v')]);
    assert_eq!(catalog.lookup(None, "f"), Some(Volatility::Volatile));
}

#[test]
fn replica_safe_volatile_functions_stay_read_only_but_are_not_cacheable() {
    let x = a("SELECT random(), gen_random_uuid(), clock_timestamp(), pg_sleep(0.1)");
    assert!(x.read_only);
    assert_eq!(x.volatility, Volatility::Volatile);
    assert!(!x.cacheable());
}

#[test]
fn stable_functions_are_read_only_but_not_cacheable() {
    for sql in [
        "SELECT now()",
        "SELECT CURRENT_TIMESTAMP",
        "SELECT current_date, localtimestamp",
        "SELECT CURRENT_USER",
        "SELECT session_user",
        "SELECT current_schema",
        "SELECT * FROM events WHERE at > now() - interval '1 hour'",
        "SELECT extract(year FROM placed) FROM orders",
    ] {
        let x = a(sql);
        assert!(x.read_only, "{sql}");
        assert_eq!(x.volatility, Volatility::Stable, "{sql}: {:?}", x.functions);
        assert!(!x.cacheable(), "{sql}");
    }
}

#[test]
fn now_string_literal_is_stable() {
    let x = a("SELECT * FROM events WHERE at > 'now'::timestamptz");
    assert_eq!(x.volatility, Volatility::Stable);
    assert!(!x.cacheable());
    let x = a("SELECT * FROM events WHERE day = 'today'");
    assert_eq!(x.volatility, Volatility::Stable);
    let x = a("SELECT * FROM events WHERE day = '2024-01-01'");
    assert!(x.cacheable());
}

#[test]
fn session_advisory_lock_pins_session_but_xact_lock_does_not() {
    for sql in [
        "SELECT pg_advisory_lock(1)",
        "SELECT pg_try_advisory_lock(1, 2)",
        "select pg_catalog.pg_advisory_lock_shared($1)",
    ] {
        let x = a(sql);
        assert_eq!(
            x.session,
            Some(SessionEffect::Pin(PinReason::AdvisoryLock)),
            "{sql}"
        );
        assert!(!x.read_only);
    }
    let x = a("SELECT pg_advisory_xact_lock(1)");
    assert!(x.session.is_none());
    assert!(!x.read_only);
}

#[test]
fn functions_are_lowercased_and_schema_qualified_as_written() {
    let x = a("SELECT LOWER(name), pg_catalog.upper(name), COALESCE(a, b), \"MyFunc\"(1) FROM t");
    assert_eq!(
        x.functions,
        vec!["lower", "pg_catalog.upper", "coalesce", "MyFunc"]
    );
    assert_eq!(x.unknown_functions, vec!["MyFunc"]);
}

#[test]
fn questions_a_standby_answers_differently_go_to_the_primary() {
    for sql in [
        "SELECT pg_is_in_recovery()",
        "SELECT pg_catalog.pg_is_in_recovery()",
        "SELECT current_setting('transaction_read_only')",
        "SELECT current_setting('Transaction_Read_Only'::text)",
        "SELECT pg_catalog.current_setting('in_hot_standby')",
        "SHOW transaction_read_only",
        "SHOW in_hot_standby",
        "SHOW default_transaction_read_only",
    ] {
        let x = a(sql);
        assert!(!x.read_only, "{sql}");
        assert!(
            x.reasons
                .iter()
                .any(|r| r.contains("answered as the primary would")),
            "{sql}: {:?}",
            x.reasons
        );
        assert!(x.hidden_writes.is_none(), "{sql}: writes nothing");
    }
    // Other settings and replica-safe introspection stay on replicas.
    for sql in [
        "SELECT current_setting('work_mem')",
        "SHOW work_mem",
        "SELECT pg_last_wal_replay_lsn()",
    ] {
        assert!(a(sql).read_only, "{sql}");
    }
}
