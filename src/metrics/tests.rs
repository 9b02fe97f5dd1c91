use super::*;

/// A user name with a quote and a newline (any client may send one in its startup packet)
/// must stay one label value, not end it and start a forged series.
#[test]
fn label_values_from_clients_are_escaped() {
    let mut registry = Registry::default();
    let family = Family::<PoolLabels, Gauge>::default();
    registry.register("pool_active", "x", family.clone());
    family
        .get_or_create(&PoolLabels {
            node: Label("db:5432".into()),
            database: Label("shop".into()),
            user: Label("a\"} 1\npgsidecar_forged{x=\"\\".into()),
        })
        .set(1);
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
    assert!(
        !out.lines().any(|l| l.starts_with("pgsidecar_forged")),
        "{out}"
    );
    assert!(
        out.contains(r#"user="a\"} 1\npgsidecar_forged{x=\"\\""#),
        "{out}"
    );
}
