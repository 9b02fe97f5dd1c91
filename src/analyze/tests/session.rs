//! Transaction control and session state (SET, RESET, DISCARD, temp objects, cursors).

use super::*;

// ------------------------------------------------------------------ transactions

#[test]
fn begin_read_only_is_a_read_only_transaction() {
    let x = a("BEGIN READ ONLY");
    assert_eq!(
        x.txn,
        Some(TxnControl::Begin {
            read_only: Some(true),
            serializable: false
        })
    );
    assert_eq!(
        x.kind,
        StatementKind::Transaction(TxnControl::Begin {
            read_only: Some(true),
            serializable: false
        })
    );
    assert_eq!(
        a("BEGIN").txn,
        Some(TxnControl::Begin {
            read_only: None,
            serializable: false
        })
    );
    assert_eq!(
        a("BEGIN READ WRITE").txn,
        Some(TxnControl::Begin {
            read_only: Some(false),
            serializable: false
        })
    );
    assert_eq!(
        a("START TRANSACTION ISOLATION LEVEL SERIALIZABLE READ ONLY").txn,
        Some(TxnControl::Begin {
            read_only: Some(true),
            serializable: true
        })
    );
    assert_eq!(
        a("BEGIN ISOLATION LEVEL REPEATABLE READ, READ WRITE").txn,
        Some(TxnControl::Begin {
            read_only: Some(false),
            serializable: false
        })
    );
    assert_eq!(
        a("START TRANSACTION READ ONLY, DEFERRABLE").txn,
        Some(TxnControl::Begin {
            read_only: Some(true),
            serializable: false
        })
    );
}

#[test]
fn set_transaction_read_only_is_transaction_control() {
    assert_eq!(
        a("SET TRANSACTION READ ONLY").txn,
        Some(TxnControl::SetTransaction {
            read_only: Some(true)
        })
    );
    assert_eq!(
        a("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE").txn,
        Some(TxnControl::SetTransaction { read_only: None })
    );
}

#[test]
fn commit_rollback_savepoint_release() {
    let cases = [
        ("COMMIT", TxnControl::Commit),
        ("END", TxnControl::Commit),
        ("COMMIT AND CHAIN", TxnControl::Commit),
        ("ROLLBACK", TxnControl::Rollback),
        ("ABORT", TxnControl::Rollback),
        ("SAVEPOINT sp1", TxnControl::Savepoint),
        ("RELEASE SAVEPOINT sp1", TxnControl::Release),
        ("RELEASE sp1", TxnControl::Release),
        ("ROLLBACK TO SAVEPOINT sp1", TxnControl::RollbackTo),
        ("ROLLBACK TO sp1", TxnControl::RollbackTo),
        (
            "PREPARE TRANSACTION 'gid-1'",
            TxnControl::PrepareTransaction,
        ),
        ("COMMIT PREPARED 'gid-1'", TxnControl::CommitPrepared),
        ("ROLLBACK PREPARED 'gid-1'", TxnControl::RollbackPrepared),
    ];
    for (sql, want) in cases {
        let x = a(sql);
        assert_eq!(x.txn.as_ref(), Some(&want), "{sql}");
        assert_eq!(x.kind, StatementKind::Transaction(want.clone()), "{sql}");
        assert!(!x.read_only, "{sql}");
    }
    assert!(TxnControl::CommitPrepared.is_two_phase());
}

// ------------------------------------------------------------------ session state

#[test]
fn set_local_is_tracked_as_local() {
    let x = a("SET LOCAL statement_timeout = '5s'");
    assert_eq!(
        x.session,
        Some(SessionEffect::Set {
            name: "statement_timeout".into(),
            value: "'5s'".into(),
            local: true
        })
    );
    assert!(!x.read_only);
    assert_eq!(
        a("SET SESSION statement_timeout TO 0").session,
        Some(SessionEffect::Set {
            name: "statement_timeout".into(),
            value: "0".into(),
            local: false
        })
    );
}

#[test]
fn set_keeps_value_text_postgres_accepts_back() {
    assert_eq!(
        a("SET search_path TO \"$user\", public").session,
        Some(SessionEffect::Set {
            name: "search_path".into(),
            value: "\"$user\", public".into(),
            local: false
        })
    );
    assert_eq!(
        a("SET Application_Name = 'it''s me'").session,
        Some(SessionEffect::Set {
            name: "application_name".into(),
            value: "'it''s me'".into(),
            local: false
        })
    );
    assert_eq!(
        a("set myapp.tenant_id = 42").session,
        Some(SessionEffect::Set {
            name: "myapp.tenant_id".into(),
            value: "42".into(),
            local: false
        })
    );
}

#[test]
fn set_time_zone_and_names_map_to_their_settings() {
    assert_eq!(
        a("SET TIME ZONE 'Europe/Paris'").session,
        Some(SessionEffect::Set {
            name: "timezone".into(),
            value: "'Europe/Paris'".into(),
            local: false
        })
    );
    assert_eq!(
        a("SET TIME ZONE LOCAL").session,
        Some(SessionEffect::Reset {
            name: "timezone".into()
        })
    );
    assert_eq!(
        a("SET TIME ZONE DEFAULT").session,
        Some(SessionEffect::Reset {
            name: "timezone".into()
        })
    );
    assert_eq!(
        a("SET TIME ZONE INTERVAL '+05:30' HOUR TO MINUTE").session,
        Some(SessionEffect::Pin(PinReason::UntrackedSetting))
    );
    assert_eq!(
        a("SET NAMES 'UTF8'").session,
        Some(SessionEffect::Set {
            name: "client_encoding".into(),
            value: "'UTF8'".into(),
            local: false
        })
    );
    assert_eq!(
        a("SET timezone TO 'UTC'").session,
        Some(SessionEffect::Set {
            name: "timezone".into(),
            value: "'UTC'".into(),
            local: false
        })
    );
}

#[test]
fn set_to_default_reset_and_discard() {
    assert_eq!(
        a("SET search_path TO DEFAULT").session,
        Some(SessionEffect::Reset {
            name: "search_path".into()
        })
    );
    // A local reset must not become a session-level reset.
    assert_eq!(
        a("SET LOCAL search_path TO DEFAULT").session,
        Some(SessionEffect::Set {
            name: "search_path".into(),
            value: "DEFAULT".into(),
            local: true
        })
    );
    assert_eq!(
        a("SET LOCAL TIME ZONE DEFAULT").session,
        Some(SessionEffect::Set {
            name: "timezone".into(),
            value: "DEFAULT".into(),
            local: true
        })
    );
    assert_eq!(
        a("RESET search_path").session,
        Some(SessionEffect::Reset {
            name: "search_path".into()
        })
    );
    assert_eq!(a("RESET ALL").session, Some(SessionEffect::ResetAll));
    assert_eq!(a("DISCARD ALL").session, Some(SessionEffect::ResetAll));
    assert_eq!(
        a("DISCARD PLANS").session,
        Some(SessionEffect::Discard("plans".into()))
    );
    assert_eq!(
        a("RESET TIME ZONE").session,
        Some(SessionEffect::Reset {
            name: "timezone".into()
        })
    );
    assert_eq!(
        a("RESET ROLE").session,
        Some(SessionEffect::Reset {
            name: "role".into()
        })
    );
}

#[test]
fn set_role_and_session_authorization_pin() {
    assert_eq!(
        a("SET ROLE admin").session,
        Some(SessionEffect::Pin(PinReason::Role))
    );
    assert_eq!(
        a("SET SESSION ROLE admin").session,
        Some(SessionEffect::Pin(PinReason::Role))
    );
    assert_eq!(
        a("SET ROLE NONE").session,
        Some(SessionEffect::Reset {
            name: "role".into()
        })
    );
    assert_eq!(
        a("SET LOCAL ROLE admin").session,
        Some(SessionEffect::Set {
            name: "role".into(),
            value: "admin".into(),
            local: true
        })
    );
    assert_eq!(
        a("SET SESSION AUTHORIZATION bob").session,
        Some(SessionEffect::Pin(PinReason::SessionAuthorization))
    );
    assert_eq!(
        a("SET SESSION AUTHORIZATION DEFAULT").session,
        Some(SessionEffect::Reset {
            name: "session_authorization".into()
        })
    );
}

#[test]
fn set_session_characteristics_sets_defaults() {
    assert_eq!(
        a("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY").session,
        Some(SessionEffect::Set {
            name: "default_transaction_read_only".into(),
            value: "on".into(),
            local: false
        })
    );
}

#[test]
fn set_config_with_literals_is_a_set() {
    assert_eq!(
        a("SELECT set_config('search_path', 'app, public', false)").session,
        Some(SessionEffect::Set {
            name: "search_path".into(),
            value: "'app, public'".into(),
            local: false
        })
    );
    assert_eq!(
        a("SELECT set_config('app.user', $1, true)").session,
        Some(SessionEffect::Pin(PinReason::UntrackedSetting))
    );
}

#[test]
fn create_temp_table_pins_session() {
    for sql in [
        "CREATE TEMP TABLE scratch (a int)",
        "CREATE TEMPORARY TABLE scratch AS SELECT * FROM stock",
        "CREATE TEMPORARY VIEW v AS SELECT 1",
        "CREATE GLOBAL TEMPORARY TABLE g (a int)",
        "CREATE TEMP SEQUENCE s",
        "CREATE TEMP TABLE scratch (a int) ON COMMIT DROP",
    ] {
        let x = a(sql);
        assert_eq!(
            x.session,
            Some(SessionEffect::Pin(PinReason::TempObject)),
            "{sql}"
        );
        assert_eq!(x.kind, StatementKind::Ddl, "{sql}");
    }
    assert!(a("CREATE TABLE temp (a int)").session.is_none());
    assert_eq!(
        a("CREATE TEMPORARY TABLE scratch AS SELECT * FROM stock").tables_read,
        vec![t("stock")]
    );
}

#[test]
fn cursors_prepared_statements_and_load_pin() {
    assert_eq!(
        a("DECLARE c CURSOR WITH HOLD FOR SELECT * FROM stock").session,
        Some(SessionEffect::Pin(PinReason::HoldCursor))
    );
    assert_eq!(a("DECLARE c CURSOR FOR SELECT * FROM stock").session, None);
    for sql in [
        "PREPARE p (int) AS SELECT * FROM stock WHERE sku_id = $1",
        "EXECUTE p(1)",
        "DEALLOCATE p",
        "DEALLOCATE ALL",
    ] {
        let x = a(sql);
        assert_eq!(
            x.session,
            Some(SessionEffect::Pin(PinReason::PreparedStatement)),
            "{sql}"
        );
        assert!(!x.read_only);
    }
    assert!(a("EXECUTE p(1)").hidden_writes.is_some());
    assert_eq!(
        a("LOAD 'auto_explain'").session,
        Some(SessionEffect::Pin(PinReason::Load))
    );
}

#[test]
fn session_effects_of_multi_statement_strings_are_all_listed() {
    let x = a("SET a = 1; SET LOCAL b = 2; SELECT pg_advisory_lock(7)");
    let effects: Vec<_> = x.session_effects().cloned().collect();
    assert_eq!(effects.len(), 3);
    assert_eq!(
        x.session,
        Some(SessionEffect::Pin(PinReason::AdvisoryLock)),
        "a pin wins the summary"
    );
}
