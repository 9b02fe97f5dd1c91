//! Text read the way the server reads it: the session's standard_conforming_strings and
//! client_encoding, string continuation, Unicode escapes, dollar quotes, nested comments.

use super::*;

const ATTACK: &str = "SELECT 'a\\' , ' ; UPDATE prices SET amount = 0 WHERE sku_id = 7 ; --'";

const SCS_OFF: LexSettings = LexSettings {
    backslash_strings: true,
    foreign_encoding: false,
};

const FOREIGN: LexSettings = LexSettings {
    backslash_strings: false,
    foreign_encoding: true,
};

/// What the server may run, as far as routing, caching and locking go.
fn unparseable(x: &Analysis) -> bool {
    x.kind == StatementKind::Unknown
        && !x.read_only
        && !x.cacheable()
        && x.hidden_writes.is_some()
        && undeterminable(&x.lock_keys(&t("prices"), &["sku_id"]))
}

#[test]
fn a_backslash_quote_with_standard_conforming_strings_off_is_not_read_as_a_harmless_select() {
    let an = Analyzer::default();
    // What the analyser's own lexer sees: one read (right, for a session with the setting on).
    let on = an.analyze_for(ATTACK.as_bytes(), LexSettings::default());
    assert!(on.read_only && on.cacheable(), "{:?}", on.kind);
    // With it off, the server reads the literal `a' , ` and then an UPDATE.
    let off = an.analyze_for(ATTACK.as_bytes(), SCS_OFF);
    assert!(unparseable(&off), "{:?} {:?}", off.kind, off.reasons);
    assert!(off
        .parse_error
        .as_deref()
        .unwrap()
        .contains("standard_conforming_strings"));
    // N'…' literals follow the same rule; so does an unterminated one.
    for sql in [
        "SELECT N'a\\' , ' ; DELETE FROM prices; --'",
        "SELECT 'a\\'",
    ] {
        assert!(
            unparseable(&an.analyze_for(sql.as_bytes(), SCS_OFF)),
            "{sql}"
        );
    }
    // The session's setting is not lost in the analysis cache: the on-reading is cached, the
    // off-reading of the same text is not taken from it.
    assert!(
        an.analyze_for(ATTACK.as_bytes(), LexSettings::default())
            .read_only
    );
    assert!(unparseable(&an.analyze_for(ATTACK.as_bytes(), SCS_OFF)));
}

#[test]
fn text_that_lexes_the_same_under_both_settings_keeps_its_analysis() {
    let an = Analyzer::default();
    for sql in [
        "SELECT amount FROM prices WHERE sku_id = 7 AND note = 'it''s'",
        // Backslashes outside plain literals mean the same either way.
        "SELECT amount FROM prices WHERE note = E'a\\'b' AND note <> $q$c:\\$q$ -- \\",
        "SELECT amount FROM prices /* \\ */ WHERE note ~ E'\\\\d'",
    ] {
        let off = an.analyze_for(sql.as_bytes(), SCS_OFF);
        let on = an.analyze_for(sql.as_bytes(), LexSettings::default());
        assert!(
            off.read_only && off.cacheable(),
            "{sql}: {:?}",
            off.parse_error
        );
        assert_eq!(off.tables_read, on.tables_read, "{sql}");
    }
}

#[test]
fn client_encodings_whose_second_bytes_can_be_a_backslash_are_not_lexed_bytewise() {
    let an = Analyzer::default();
    // Shift-JIS 0x95 0x5C is one character (表); a byte-wise lexer sees `\'` and reads on.
    let mut sjis = b"SELECT E'\x95\\' ; UPDATE prices SET amount = 0; --'".to_vec();
    let x = an.analyze_for(&sjis, FOREIGN);
    assert!(unparseable(&x), "{:?}", x.kind);
    // BIG5, GBK, UHC, GB18030 alike: any non-ASCII byte in a non-UTF8 session.
    sjis = "SELECT amount FROM prices WHERE note = 'é'"
        .as_bytes()
        .to_vec();
    assert!(unparseable(&an.analyze_for(&sjis, FOREIGN)));
    // ASCII is the same text in every client encoding.
    let x = an.analyze_for(b"SELECT amount FROM prices WHERE sku_id = 7", FOREIGN);
    assert!(x.read_only && x.cacheable());
}

#[test]
fn a_literal_continued_on_the_next_line_is_not_split_where_the_server_joins_it() {
    // Postgres joins `E'x'` and the next line's `' \' ; '` into one escape string, so the
    // UPDATE below is a statement of its own to the server; byte-wise it hides in a literal.
    for sql in [
        "SELECT E'x'\n' \\' ; '; UPDATE prices SET amount = 1; --'",
        "SELECT 'a' -- c\n  'b' FROM prices",
        "SELECT U&'a'\r\n'b'",
    ] {
        assert!(unparseable(&a(sql)), "{sql:?}");
    }
    // On one line they are two tokens to the server too.
    assert!(!unparseable(&a("SELECT 'a' AS x, 'b' FROM prices")));
}

#[test]
fn a_unicode_escaped_identifier_is_not_taken_for_another_table() {
    let x = a("UPDATE U&\"pr\\0069ces\" SET amount = 1");
    assert!(unparseable(&x), "{:?}", x.tables_written);
    // U&'…' strings (with UESCAPE) end where plain ones do; sqlparser refuses UESCAPE.
    let x = a("SELECT U&'d!0061t!+000061' UESCAPE '!' FROM prices; UPDATE prices SET amount = 2");
    assert!(!x.read_only);
}

#[test]
fn dollar_quotes_with_odd_tags_and_nested_comments_end_where_the_server_ends_them() {
    let x = a("SELECT $a$ $b$ $ab$ $a $a$, $_$x$_$, $é$;$é$ FROM prices");
    assert!(x.read_only && x.statements.len() == 1);
    assert_eq!(x.tables_read, vec![t("prices")]);
    let x = a("SELECT /* /* */ ; UPDATE prices SET amount = 1; */ 1 FROM prices");
    assert!(x.read_only && x.statements.len() == 1);
    // An identifier may hold `$`: `a$b$` is no dollar quote.
    let x = a("SELECT a$b$, 1 FROM prices; UPDATE prices SET amount = 1 -- $b$");
    assert!(!x.read_only);
    assert_eq!(x.tables_written, vec![t("prices")]);
}
