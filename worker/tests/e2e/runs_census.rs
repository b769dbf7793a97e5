//! The census that decides whether a partition may go whole, read straight against
//! PostgreSQL: the proof from indexes must reach the verdict of reading every row, on
//! partitions built to fool it, and the catalog must choose it only where it applies.

use std::collections::BTreeSet;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::PgPool;
use worker::executor::runs::partitions::{candidates, census, Candidate, Proof};
use worker::executor::runs::schema::{inspect, Schema};
use worker::executor::runs::RunsTable;

use crate::runs_safety::database;

/// Months of 2020 and a catch-all. `status` may be NULL; its type and the indexes vary.
fn layout(status_type: &str, indexes: &str) -> String {
    format!(
        "CREATE TYPE run_status AS ENUM ('queued', 'running', 'succeeded', 'failed', 'cancelled');
         CREATE TABLE runs (id bigint NOT NULL, status {status_type},
                            finished_at timestamptz NOT NULL,
                            PRIMARY KEY (id, finished_at)) PARTITION BY RANGE (finished_at);
         {indexes}
         CREATE TABLE runs_01 PARTITION OF runs FOR VALUES FROM ('2020-01-01') TO ('2020-02-01');
         CREATE TABLE runs_02 PARTITION OF runs FOR VALUES FROM ('2020-02-01') TO ('2020-03-01');
         CREATE TABLE runs_03 PARTITION OF runs FOR VALUES FROM ('2020-03-01') TO ('2020-04-01');
         CREATE TABLE runs_04 PARTITION OF runs FOR VALUES FROM ('2020-04-01') TO ('2020-05-01');
         CREATE TABLE runs_05 PARTITION OF runs FOR VALUES FROM ('2020-05-01') TO ('2020-06-01');
         CREATE TABLE runs_later PARTITION OF runs FOR VALUES FROM ('2020-06-01') TO (MAXVALUE);
         -- January: all finished. February: one running in the middle of the order.
         -- March: one without a status. April: one cancelled (not among the task's). May: empty.
         INSERT INTO runs SELECT g, (ARRAY['succeeded', 'failed'])[1 + g % 2]::text::{status_type},
                                 timestamptz '2020-01-01' + make_interval(mins => g)
         FROM generate_series(1, 2000) g;
         INSERT INTO runs SELECT 10000 + g, (CASE WHEN g = 700 THEN 'running' ELSE 'succeeded' END)::{status_type},
                                 timestamptz '2020-02-01' + make_interval(mins => g)
         FROM generate_series(1, 2000) g;
         INSERT INTO runs SELECT 20000 + g, (CASE WHEN g = 1999 THEN NULL ELSE 'failed' END)::{status_type},
                                 timestamptz '2020-03-01' + make_interval(mins => g)
         FROM generate_series(1, 2000) g;
         INSERT INTO runs SELECT 30000 + g, (CASE WHEN g = 1 THEN 'cancelled' ELSE 'succeeded' END)::{status_type},
                                 timestamptz '2020-04-01' + make_interval(mins => g)
         FROM generate_series(1, 2000) g;
         ANALYZE runs;"
    )
}

const INDEXES: &str = "CREATE INDEX ON runs (status); CREATE INDEX ON runs (finished_at, id);";

fn at(y: i32, m: u32, d: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, 0, 0, 0).unwrap()
}

async fn table_and_schema(pool: &PgPool) -> (RunsTable, Schema) {
    let table = RunsTable::new(
        "runs",
        "id",
        "status",
        "finished_at",
        vec!["succeeded".into(), "failed".into(), "cancelled".into()],
        BTreeSet::new(),
    )
    .unwrap();
    let schema = inspect(pool, &table, None).await.unwrap();
    (table, schema)
}

/// Both proofs' verdicts on every old partition, with the task's statuses and cutoff:
/// (partition, rows, may go by a scan, may go by the indexes).
async fn verdicts(
    pool: &PgPool,
    statuses: &[&str],
    cutoff: DateTime<Utc>,
) -> (Vec<(String, u64, bool, bool)>, Vec<Proof>) {
    let (table, schema) = table_and_schema(pool).await;
    let statuses: Vec<String> = statuses.iter().map(|s| s.to_string()).collect();
    let found = candidates(pool, &table, &schema, cutoff).await.unwrap();
    let chosen = found.iter().map(|c| c.proof).collect();
    let mut out = Vec::new();
    for candidate in found {
        let by = |proof| Candidate {
            proof,
            ..candidate.clone()
        };
        let scan = census(pool, &table, &schema, &by(Proof::Scan), &statuses, cutoff)
            .await
            .unwrap();
        let indexes = census(
            pool,
            &table,
            &schema,
            &by(Proof::Indexes),
            &statuses,
            cutoff,
        )
        .await
        .unwrap();
        assert_eq!(scan.rows, indexes.rows, "{}", candidate.name);
        out.push((
            candidate.name.clone(),
            scan.rows,
            scan.blocking.is_none(),
            indexes.blocking.is_none(),
        ));
    }
    (out, chosen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proof_from_indexes_reaches_the_verdict_of_reading_every_row() {
    for (status_type, indexes, proof) in [
        ("text", INDEXES, Proof::Indexes),
        ("text", "", Proof::Scan),
        ("run_status", INDEXES, Proof::Indexes),
    ] {
        let (_db, pool) = database(&layout(status_type, indexes)).await;
        let (found, chosen) = verdicts(&pool, &["succeeded", "failed"], at(2020, 6, 1)).await;
        assert!(
            chosen.iter().all(|p| *p == proof),
            "{status_type} {indexes}: {chosen:?}"
        );
        let expected = [
            ("public.runs_01", 2000, true),
            ("public.runs_02", 2000, false),
            ("public.runs_03", 2000, false),
            ("public.runs_04", 2000, false),
            ("public.runs_05", 0, true),
        ];
        let expected: Vec<(String, u64, bool, bool)> = expected
            .iter()
            .map(|(n, rows, go)| (n.to_string(), *rows, *go, *go))
            .collect();
        assert_eq!(found, expected, "{status_type} {indexes}");

        // With `cancelled` among the task's statuses, April may go too.
        let (found, _) =
            verdicts(&pool, &["succeeded", "failed", "cancelled"], at(2020, 6, 1)).await;
        assert!(found[3].2 && found[3].3, "{found:?}");

        // A cutoff inside a partition's range (as a wrong bound or a clock would make
        // it): rows not older than the cutoff keep it, whatever the catalog said.
        let (table, schema) = table_and_schema(&pool).await;
        let january = candidates(&pool, &table, &schema, at(2020, 6, 1))
            .await
            .unwrap()
            .remove(0);
        for proof in [Proof::Scan, Proof::Indexes] {
            let found = census(
                &pool,
                &table,
                &schema,
                &Candidate {
                    proof,
                    ..january.clone()
                },
                &["succeeded".to_owned(), "failed".to_owned()],
                at(2020, 1, 2),
            )
            .await
            .unwrap();
            assert!(found.blocking.is_some(), "{proof:?}: {found:?}");
        }
    }
}

/// Only where the indexes' order agrees with the eligibility test does the catalog choose
/// them: never for a status whose equality is looser than its text (a nondeterministic
/// collation, `citext`: the distinct values would hide `SUCCEEDED` behind `succeeded`, and
/// the partition would go with a row the scan keeps), nor with an index on only one of the
/// two columns, or a partial one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_chooses_the_indexes_only_where_they_apply() {
    let loose = "CREATE COLLATION loose (provider = icu, locale = 'und-u-ks-level2',
                                         deterministic = false);";
    let shouting = "INSERT INTO runs VALUES (999, 'SUCCEEDED', '2020-01-15');";
    let cases = [
        // The collation's equality is the test's too: `SUCCEEDED` is `succeeded` here.
        (loose, "text COLLATE loose", INDEXES, shouting, true),
        // `::text` compares the letters as they are: `SUCCEEDED` is not `succeeded`.
        (
            "CREATE EXTENSION citext;",
            "citext",
            INDEXES,
            shouting,
            false,
        ),
        ("", "text", "CREATE INDEX ON runs (status);", "", true),
        (
            "",
            "text",
            "CREATE INDEX ON runs (finished_at, id);",
            "",
            true,
        ),
        (
            "",
            "text",
            "CREATE INDEX ON runs (finished_at, status);",
            "",
            true,
        ),
        (
            "",
            "text",
            "CREATE INDEX ON runs (status) WHERE status <> 'running';
             CREATE INDEX ON runs (finished_at);",
            "",
            true,
        ),
    ];
    for (prelude, status_type, indexes, extra, january) in cases {
        let setup = format!("{prelude} {} {extra}", layout(status_type, indexes));
        let (_db, pool) = database(&setup).await;
        let (found, chosen) = verdicts(&pool, &["succeeded", "failed"], at(2020, 6, 1)).await;
        assert!(
            chosen.iter().all(|p| *p == Proof::Scan),
            "{status_type} {indexes}: {chosen:?}"
        );
        let go: Vec<bool> = found.iter().map(|f| f.2).collect();
        assert_eq!(
            go,
            [january, false, false, false, true],
            "{status_type} {indexes}"
        );
    }
}
