//! Lock keys: which inventory rows a statement touches, or why that cannot be known.

use super::*;

#[test]
fn lock_keys_from_where_equalities_in_either_order() {
    let k =
        stock_keys("UPDATE stock SET on_hand = on_hand - 1 WHERE 2 = warehouse_id AND sku_id = 5");
    assert_eq!(k, KeyExtraction::Keys(vec![vec![lit("5"), lit("2")]]));
    let k = stock_keys("UPDATE stock SET on_hand = on_hand - $3 WHERE sku_id = $1 AND warehouse_id = $2 AND on_hand >= $3");
    assert_eq!(
        k,
        KeyExtraction::Keys(vec![vec![KeyValue::Param(1), KeyValue::Param(2)]])
    );
}

#[test]
fn lock_keys_strip_casts_and_canonicalize_literals() {
    let k = stock_keys(
        "DELETE FROM stock WHERE sku_id = $1::bigint AND warehouse_id = CAST($2 AS int)",
    );
    assert_eq!(
        k,
        KeyExtraction::Keys(vec![vec![KeyValue::Param(1), KeyValue::Param(2)]])
    );
    let k = stock_keys("DELETE FROM stock WHERE sku_id = '007'::int AND warehouse_id = -3");
    assert_eq!(k, KeyExtraction::Keys(vec![vec![lit("7"), lit("-3")]]));
    let k = keys(
        "DELETE FROM bins WHERE code = 'W1' AND zone = E'a\\'b'",
        "bins",
        &["code", "zone"],
    );
    assert_eq!(k, KeyExtraction::Keys(vec![vec![lit("W1"), lit("a'b")]]));
    // A numeric literal cast to int rounds: not a key.
    assert!(undeterminable(&stock_keys(
        "DELETE FROM stock WHERE sku_id = 5.7::int AND warehouse_id = 1"
    )));
}

#[test]
fn lock_keys_from_multi_row_values() {
    let k = stock_keys("INSERT INTO stock (warehouse_id, sku_id, on_hand) VALUES (1, 10, 5), (1, 11, 0), ($1, $2, $3)");
    assert_eq!(
        k,
        KeyExtraction::Keys(vec![
            vec![lit("10"), lit("1")],
            vec![lit("11"), lit("1")],
            vec![KeyValue::Param(2), KeyValue::Param(1)],
        ])
    );
}

#[test]
fn lock_keys_from_insert_on_conflict() {
    let k = stock_keys(
        "INSERT INTO stock (sku_id, warehouse_id, on_hand) VALUES ($1, $2, $3) ON CONFLICT (sku_id, warehouse_id) DO UPDATE SET on_hand = stock.on_hand + EXCLUDED.on_hand",
    );
    assert_eq!(
        k,
        KeyExtraction::Keys(vec![vec![KeyValue::Param(1), KeyValue::Param(2)]])
    );
    let k =
        stock_keys("INSERT INTO stock (sku_id, warehouse_id) VALUES (1, 2) ON CONFLICT DO NOTHING");
    assert_eq!(k, KeyExtraction::Keys(vec![vec![lit("1"), lit("2")]]));
    let k = stock_keys("INSERT INTO stock (sku_id, warehouse_id) VALUES (1, 2) ON CONFLICT (sku_id, warehouse_id) DO UPDATE SET sku_id = 3");
    assert!(undeterminable(&k));
}

#[test]
fn lock_keys_from_any_array_param() {
    let k = stock_keys("UPDATE stock SET on_hand = 0 WHERE sku_id = ANY($1) AND warehouse_id = $2");
    assert_eq!(
        k,
        KeyExtraction::Keys(vec![vec![KeyValue::ParamArray(1), KeyValue::Param(2)]])
    );
    let k = stock_keys(
        "UPDATE stock SET on_hand = 0 WHERE sku_id = ANY($1::int[]) AND warehouse_id = ANY ($2)",
    );
    assert_eq!(
        k,
        KeyExtraction::Keys(vec![vec![KeyValue::ParamArray(1), KeyValue::ParamArray(2)]])
    );
}

#[test]
fn lock_keys_from_any_array_literal_and_in_lists() {
    let k =
        stock_keys("DELETE FROM stock WHERE sku_id = ANY(ARRAY[1, 2]) AND warehouse_id IN ($1, 9)");
    assert_eq!(
        k,
        KeyExtraction::Keys(vec![
            vec![lit("1"), KeyValue::Param(1)],
            vec![lit("1"), lit("9")],
            vec![lit("2"), KeyValue::Param(1)],
            vec![lit("2"), lit("9")],
        ])
    );
}

#[test]
fn lock_keys_from_row_constructors() {
    let k =
        stock_keys("DELETE FROM stock WHERE (sku_id, warehouse_id) IN ((1, 2), (3, 4), (1, 2))");
    assert_eq!(
        k,
        KeyExtraction::Keys(vec![vec![lit("1"), lit("2")], vec![lit("3"), lit("4")]])
    );
    let k = stock_keys("UPDATE stock SET on_hand = 1 WHERE (warehouse_id, sku_id) = ($1, $2)");
    assert_eq!(
        k,
        KeyExtraction::Keys(vec![vec![KeyValue::Param(2), KeyValue::Param(1)]])
    );
}

#[test]
fn lock_keys_where_on_hand_lt_5_is_undeterminable() {
    let k = stock_keys("UPDATE stock SET on_hand = 0 WHERE on_hand < 5");
    match k {
        KeyExtraction::Undeterminable(r) => assert!(r.contains("sku_id"), "{r}"),
        other => panic!("expected undeterminable, got {other:?}"),
    }
}

#[test]
fn lock_keys_missing_key_column_is_undeterminable() {
    assert!(undeterminable(&stock_keys(
        "UPDATE stock SET on_hand = 0 WHERE sku_id = 5"
    )));
    assert!(undeterminable(&stock_keys(
        "UPDATE stock SET on_hand = 0 WHERE sku_id = 5 AND warehouse_id > 2"
    )));
    assert!(undeterminable(&stock_keys(
        "UPDATE stock SET on_hand = 0 WHERE sku_id = 5 AND NOT (warehouse_id = 2)"
    )));
    assert!(undeterminable(&stock_keys("UPDATE stock SET on_hand = 0 WHERE sku_id = 5 AND warehouse_id IN (SELECT id FROM warehouses)")));
}

#[test]
fn lock_keys_top_level_or_needs_every_branch_determinable() {
    let k = stock_keys("UPDATE stock SET on_hand = 1 WHERE (sku_id = 1 AND warehouse_id = 2) OR (sku_id = 3 AND warehouse_id = 4)");
    assert_eq!(
        k,
        KeyExtraction::Keys(vec![vec![lit("1"), lit("2")], vec![lit("3"), lit("4")]])
    );
    let k = stock_keys(
        "UPDATE stock SET on_hand = 1 WHERE warehouse_id = 2 AND (sku_id = 1 OR sku_id = 3)",
    );
    assert_eq!(
        k,
        KeyExtraction::Keys(vec![vec![lit("1"), lit("2")], vec![lit("3"), lit("2")]])
    );
    assert!(undeterminable(&stock_keys(
        "UPDATE stock SET on_hand = 1 WHERE (sku_id = 1 AND warehouse_id = 2) OR on_hand = 0"
    )));
    assert!(undeterminable(&stock_keys(
        "UPDATE stock SET on_hand = 1 WHERE sku_id = 1 OR warehouse_id = 2"
    )));
}

#[test]
fn lock_keys_insert_select_and_other_unbounded_sources_are_undeterminable() {
    for sql in [
        "INSERT INTO stock (sku_id, warehouse_id) SELECT id, 1 FROM skus",
        "INSERT INTO stock VALUES (1, 2, 3)",
        "INSERT INTO stock (sku_id, warehouse_id) VALUES (DEFAULT, 1)",
        "INSERT INTO stock (sku_id, warehouse_id) VALUES (nextval('s'), 1)",
        "INSERT INTO stock (sku_id) VALUES (1)",
        "INSERT INTO stock DEFAULT VALUES",
        "TRUNCATE stock",
        "DELETE FROM stock",
        "MERGE INTO stock s USING incoming i ON s.sku_id = i.sku_id AND s.warehouse_id = i.wh WHEN MATCHED THEN DELETE",
    ] {
        assert!(undeterminable(&stock_keys(sql)), "{sql}: {:?}", stock_keys(sql));
    }
}

#[test]
fn lock_keys_merge_with_constant_on_and_no_insert() {
    let k = stock_keys("MERGE INTO stock s USING (SELECT 1) x ON s.sku_id = $1 AND s.warehouse_id = $2 WHEN MATCHED THEN UPDATE SET on_hand = 0");
    assert_eq!(
        k,
        KeyExtraction::Keys(vec![vec![KeyValue::Param(1), KeyValue::Param(2)]])
    );
    let k = stock_keys("MERGE INTO stock s USING (SELECT 1) x ON s.sku_id = $1 AND s.warehouse_id = $2 WHEN NOT MATCHED THEN INSERT (sku_id, warehouse_id) VALUES (7, 7)");
    assert!(undeterminable(&k));
}

#[test]
fn lock_keys_bounded_by_max_keys() {
    let list: Vec<String> = (0..1001).map(|i| i.to_string()).collect();
    let sql = format!(
        "DELETE FROM stock WHERE sku_id IN ({}) AND warehouse_id = 1",
        list.join(",")
    );
    assert!(undeterminable(&stock_keys(&sql)));
    let l40: Vec<String> = (0..40).map(|i| i.to_string()).collect();
    let sql = format!(
        "DELETE FROM stock WHERE sku_id IN ({0}) AND warehouse_id IN ({0})",
        l40.join(",")
    );
    match stock_keys(&sql) {
        KeyExtraction::Undeterminable(r) => assert!(r.contains("1600"), "{r}"),
        other => panic!("{other:?}"),
    }
    let sql = format!(
        "DELETE FROM stock WHERE sku_id IN ({}) AND warehouse_id = 1",
        l40.join(",")
    );
    match stock_keys(&sql) {
        KeyExtraction::Keys(k) => assert_eq!(k.len(), 40),
        other => panic!("{other:?}"),
    }
}

#[test]
fn lock_keys_in_lists_any_arrays_and_row_lists_share_one_bound() {
    let many: Vec<String> = (0..1001).map(|i| i.to_string()).collect();
    let sql = format!(
        "DELETE FROM stock WHERE sku_id = ANY(ARRAY[{}]) AND warehouse_id = 1",
        many.join(",")
    );
    assert!(undeterminable(&stock_keys(&sql)), "ANY(ARRAY[1001 values])");
    let rows: Vec<String> = (0..1001).map(|i| format!("({i}, 1)")).collect();
    let sql = format!(
        "DELETE FROM stock WHERE (sku_id, warehouse_id) IN ({})",
        rows.join(",")
    );
    assert!(undeterminable(&stock_keys(&sql)), "1001 row constructors");
    for sql in [
        "DELETE FROM stock WHERE sku_id = ANY(ARRAY[]::int[]) AND warehouse_id = 1",
        "DELETE FROM stock WHERE sku_id IN (1, other_col) AND warehouse_id = 1",
        "DELETE FROM stock WHERE sku_id = ANY(ARRAY[1, other_col]) AND warehouse_id = 1",
        "DELETE FROM stock WHERE (sku_id, warehouse_id) IN ((1, 2), (3, other_col))",
    ] {
        assert!(undeterminable(&stock_keys(sql)), "{sql}");
    }
}

#[test]
fn lock_keys_not_touched_and_schema_matching() {
    assert_eq!(
        stock_keys("UPDATE skus SET name = 'x' WHERE id = 1"),
        KeyExtraction::NotTouched
    );
    assert_eq!(stock_keys("SELECT 1"), KeyExtraction::NotTouched);
    let sql = "UPDATE public.stock SET on_hand = 0 WHERE sku_id = 1 AND warehouse_id = 2";
    assert!(matches!(
        keys(sql, "stock", STOCK_KEY),
        KeyExtraction::Keys(_)
    ));
    assert!(matches!(
        keys(sql, "public.stock", STOCK_KEY),
        KeyExtraction::Keys(_)
    ));
    assert_eq!(
        keys(sql, "archive.stock", STOCK_KEY),
        KeyExtraction::NotTouched
    );
}

#[test]
fn lock_keys_update_moving_a_row_includes_the_new_key() {
    let k = stock_keys("UPDATE stock SET warehouse_id = 9 WHERE sku_id = 1 AND warehouse_id = 2");
    assert_eq!(
        k,
        KeyExtraction::Keys(vec![vec![lit("1"), lit("2")], vec![lit("1"), lit("9")]])
    );
    assert!(undeterminable(&stock_keys(
        "UPDATE stock SET warehouse_id = warehouse_id + 1 WHERE sku_id = 1 AND warehouse_id = 2"
    )));
}

#[test]
fn lock_keys_select_for_update_uses_the_read_predicate() {
    let k =
        stock_keys("SELECT on_hand FROM stock WHERE sku_id = $1 AND warehouse_id = $2 FOR UPDATE");
    assert_eq!(
        k,
        KeyExtraction::Keys(vec![vec![KeyValue::Param(1), KeyValue::Param(2)]])
    );
}

#[test]
fn lock_keys_prefer_writes_over_reads_of_the_same_table() {
    let k = stock_keys(
        "UPDATE stock SET on_hand = (SELECT sum(on_hand) FROM stock s2 WHERE s2.sku_id = 1) WHERE sku_id = 1 AND warehouse_id = 2",
    );
    assert_eq!(k, KeyExtraction::Keys(vec![vec![lit("1"), lit("2")]]));
}

#[test]
fn lock_keys_attribute_columns_to_the_right_table() {
    // Unqualified columns with another table in scope are not attributed.
    assert!(undeterminable(&stock_keys(
        "UPDATE stock SET on_hand = 0 FROM orders WHERE sku_id = 1 AND warehouse_id = 2"
    )));
    let k = stock_keys("UPDATE stock SET on_hand = 0 FROM orders o WHERE stock.sku_id = 1 AND stock.warehouse_id = o.wh AND o.wh = 3");
    assert_eq!(k, KeyExtraction::Keys(vec![vec![lit("1"), lit("3")]]));
    let k = stock_keys("DELETE FROM stock s USING skus k WHERE s.sku_id = k.id AND k.id = 4 AND s.warehouse_id = 2");
    assert_eq!(k, KeyExtraction::Keys(vec![vec![lit("4"), lit("2")]]));
    // Columns of the outer query inside a subquery are not the subquery table's.
    let x = a("SELECT * FROM skus WHERE EXISTS (SELECT 1 FROM stock WHERE sku_id = 1 AND warehouse_id = 2)");
    assert!(undeterminable(&x.lock_keys(&t("stock"), STOCK_KEY)));
}

#[test]
fn lock_keys_multi_statement_unites_keys() {
    let k = stock_keys(
        "BEGIN; UPDATE stock SET on_hand = 1 WHERE sku_id = 1 AND warehouse_id = 1; UPDATE stock SET on_hand = 2 WHERE sku_id = 2 AND warehouse_id = 1; COMMIT",
    );
    assert_eq!(
        k,
        KeyExtraction::Keys(vec![vec![lit("1"), lit("1")], vec![lit("2"), lit("1")]])
    );
}

#[test]
fn lock_keys_undeterminable_when_writes_may_be_hidden() {
    for sql in [
        "DO $$ BEGIN END $$",
        "CALL restock(1)",
        "SELECT adjust_stock(1, 2)",
        "EXECUTE p(1)",
        "SELEC 1",
    ] {
        assert!(undeterminable(&stock_keys(sql)), "{sql}");
    }
    // Built-in volatile functions do not hide writes.
    assert!(matches!(
        stock_keys("UPDATE stock SET touched = clock_timestamp(), ver = nextval('v') WHERE sku_id = 1 AND warehouse_id = 1"),
        KeyExtraction::Keys(_)
    ));
}

#[test]
fn lock_keys_with_no_key_columns_is_undeterminable() {
    assert!(undeterminable(
        &stock_keys("UPDATE stock SET a = 1 WHERE sku_id = 1").clone()
    ));
    assert!(undeterminable(
        &a("UPDATE stock SET a = 1 WHERE sku_id = 1").lock_keys(&t("stock"), &[])
    ));
}

#[test]
fn bind_substitutes_parameters_and_expands_arrays() {
    let k = stock_keys("UPDATE stock SET on_hand = 0 WHERE sku_id = ANY($1) AND warehouse_id = $2");
    let bound = k
        .bind(
            |n| (n == 2).then(|| "007".to_owned()),
            |n| (n == 1).then(|| vec!["10".to_owned(), "11".to_owned(), "10".to_owned()]),
        )
        .unwrap();
    assert_eq!(
        bound,
        vec![
            vec!["10".to_owned(), "7".to_owned()],
            vec!["11".to_owned(), "7".to_owned()]
        ]
    );
    assert!(k.bind(|_| None, |_| None).is_err());
    assert_eq!(
        KeyExtraction::NotTouched.bind(|_| None, |_| None),
        Ok(vec![])
    );
    let big = stock_keys(
        "UPDATE stock SET on_hand = 0 WHERE sku_id = ANY($1) AND warehouse_id = ANY($2)",
    );
    let many = |_| Some((0..100).map(|i| i.to_string()).collect());
    assert!(
        big.bind(|_| None, many).is_err(),
        "100 x 100 exceeds MAX_KEYS"
    );
}

#[test]
fn canonical_key_text_merges_numeric_spellings() {
    assert_eq!(canonical_key_text("007"), "7");
    assert_eq!(canonical_key_text("+7.50"), "7.5");
    assert_eq!(canonical_key_text("-0"), "0");
    assert_eq!(canonical_key_text("W1"), "W1");
}
