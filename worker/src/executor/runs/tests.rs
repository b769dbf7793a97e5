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

#[test]
fn the_progress_table_sits_beside_the_runs_table_and_is_never_it() {
    let table = |name: &str| {
        RunsTable::new(
            name,
            "id",
            "status",
            "finished_at",
            vec!["done".into()],
            Default::default(),
        )
        .unwrap()
    };
    let progress = |t: &RunsTable| progress::ProgressTable::new(&t.table, t.progress.as_deref());
    assert_eq!(
        progress(&table("app.runs")).name(),
        "\"app\".\"cleanup_runs_progress\""
    );
    // Unqualified: the schema the runs table resolves to, read from the database later.
    assert_eq!(progress(&table("runs")).name(), "\"cleanup_runs_progress\"");
    let moved = table("runs").with_progress_table("ops.counts").unwrap();
    assert_eq!(progress(&moved).name(), "\"ops\".\"counts\"");
    for bad in ["app.runs", "x.y.z", "a-b"] {
        assert!(table("app.runs").with_progress_table(bad).is_err(), "{bad}");
    }
}
