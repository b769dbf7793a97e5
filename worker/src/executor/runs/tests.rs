use super::*;

#[test]
fn identifiers_are_validated_and_quoted() {
    assert_eq!(quote_ident("finished_at", "X").unwrap(), "\"finished_at\"");
    for bad in [
        "",
        "1abc",
        "a-b",
        "a\"b",
        "runs; DROP TABLE x",
        &"a".repeat(64),
    ] {
        assert!(quote_ident(bad, "X").is_err(), "{bad}");
    }
    let t = RunsTable::new(
        "app.runs",
        "id",
        "status",
        "finished_at",
        vec!["done".into()],
        Default::default(),
    )
    .unwrap();
    assert_eq!(t.table, "\"app\".\"runs\"");
    assert!(RunsTable::new(
        "a.b.c",
        "id",
        "s",
        "t",
        vec!["x".into()],
        Default::default()
    )
    .is_err());
    assert!(RunsTable::new("runs", "id", "s", "t", vec![], Default::default()).is_err());
}
