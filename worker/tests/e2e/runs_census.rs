//! The census that decides whether a partition may go whole, read straight against
//! PostgreSQL: the proof from indexes must reach the verdict of reading every row, on
//! partitions built to fool it, and the catalog must choose it only where it applies.

use std::collections::BTreeSet;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::PgPool;
use worker::executor::runs::partitions::{candidates, census, proof, Proof};
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

/// The indexes of the proof: a text status walked byte by byte.
const INDEXES: &str =
    "CREATE INDEX ON runs (status COLLATE \"C\"); CREATE INDEX ON runs (finished_at, id);";
/// The same for an enum status, walked in the enum's order.
const ENUM_INDEXES: &str = "CREATE INDEX ON runs (status); CREATE INDEX ON runs (finished_at, id);";
const BYTES: Proof = Proof::Indexes { bytewise: true };

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
/// (partition, rows, may go by a scan, may go by the indexes walked as `bytewise` says).
async fn verdicts(
    pool: &PgPool,
    statuses: &[&str],
    cutoff: DateTime<Utc>,
    bytewise: bool,
) -> (Vec<(String, u64, bool, bool)>, Vec<Proof>) {
    let (table, schema) = table_and_schema(pool).await;
    let statuses: Vec<String> = statuses.iter().map(|s| s.to_string()).collect();
    let found = candidates(pool, &table, &schema, cutoff).await.unwrap();
    let mut chosen = Vec::new();
    let mut out = Vec::new();
    for candidate in found {
        chosen.push(proof(pool, &table, candidate.oid).await.unwrap());
        let by = |proof, count| {
            census(
                pool,
                &table,
                &schema,
                &candidate.name,
                proof,
                count,
                &statuses,
                cutoff,
            )
        };
        let scan = by(Proof::Scan, true).await.unwrap();
        let indexes = by(Proof::Indexes { bytewise }, true).await.unwrap();
        assert_eq!(scan.rows, indexes.rows, "{}", candidate.name);
        // Not counting (a removal that takes the statistics' estimate) changes no verdict.
        let uncounted = by(Proof::Indexes { bytewise }, false).await.unwrap();
        assert_eq!(uncounted.rows, None, "{}", candidate.name);
        assert_eq!(uncounted.blocking, indexes.blocking, "{}", candidate.name);
        out.push((
            candidate.name.clone(),
            scan.rows.expect("a scan counts"),
            scan.blocking.is_none(),
            indexes.blocking.is_none(),
        ));
    }
    (out, chosen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proof_from_indexes_reaches_the_verdict_of_reading_every_row() {
    for (status_type, indexes, proof) in [
        ("text", INDEXES, BYTES),
        ("text", "", Proof::Scan),
        ("varchar(20)", INDEXES, BYTES),
        (
            "run_status",
            ENUM_INDEXES,
            Proof::Indexes { bytewise: false },
        ),
    ] {
        let bytewise = status_type != "run_status";
        let (_db, pool) = database(&layout(status_type, indexes)).await;
        let (found, chosen) =
            verdicts(&pool, &["succeeded", "failed"], at(2020, 6, 1), bytewise).await;
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
        let (found, _) = verdicts(
            &pool,
            &["succeeded", "failed", "cancelled"],
            at(2020, 6, 1),
            bytewise,
        )
        .await;
        assert!(found[3].2 && found[3].3, "{found:?}");

        // A cutoff inside a partition's range (as a wrong bound or a clock would make
        // it): rows not older than the cutoff keep it, whatever the catalog said.
        let (table, schema) = table_and_schema(&pool).await;
        let january = candidates(&pool, &table, &schema, at(2020, 6, 1))
            .await
            .unwrap()
            .remove(0);
        for proof in [Proof::Scan, Proof::Indexes { bytewise }] {
            let found = census(
                &pool,
                &table,
                &schema,
                &january.name,
                proof,
                false,
                &["succeeded".to_owned(), "failed".to_owned()],
                at(2020, 1, 2),
            )
            .await
            .unwrap();
            assert!(found.blocking.is_some(), "{proof:?}: {found:?}");
        }
    }
}

/// Only where the indexes' walk cannot disagree with the eligibility test does the
/// catalog choose them: a text status indexed byte by byte (`COLLATE "C"`), whatever the
/// column's own collation, or an enum; never an index in a linguistic collation (an
/// operating system or ICU upgrade can leave it out of order until it is rebuilt), a type
/// whose equality is looser than its text (`citext` would hide `SUCCEEDED` behind
/// `succeeded`, and the partition would go with a row the scan keeps), an index on only
/// one of the two columns, or a partial one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_chooses_the_indexes_only_where_they_apply() {
    let loose = "CREATE COLLATION loose (provider = icu, locale = 'und-u-ks-level2',
                                         deterministic = false);";
    let shouting = "INSERT INTO runs VALUES (999, 'SUCCEEDED', '2020-01-15');";
    let c_status = "CREATE INDEX ON runs (status COLLATE \"C\");";
    let partial = "CREATE INDEX ON runs (status COLLATE \"C\") WHERE status <> 'running';
                   CREATE INDEX ON runs (finished_at);";
    // (prelude, status type, indexes, extra rows, the proof chosen, whether January may
    // go by the scan)
    let cases = [
        // The collation calls `SUCCEEDED` `succeeded`, and so does the row-by-row test.
        (loose, "text COLLATE loose", INDEXES, shouting, BYTES, true),
        // `::text` compares the letters as they are: `SUCCEEDED` is not `succeeded`.
        (
            "CREATE EXTENSION citext;",
            "citext",
            INDEXES,
            shouting,
            Proof::Scan,
            false,
        ),
        ("", "text", ENUM_INDEXES, "", Proof::Scan, true),
        ("", "text", c_status, "", Proof::Scan, true),
        (
            "",
            "text",
            "CREATE INDEX ON runs (finished_at, id);",
            "",
            Proof::Scan,
            true,
        ),
        (
            "",
            "text",
            "CREATE INDEX ON runs (finished_at, status);",
            "",
            Proof::Scan,
            true,
        ),
        ("", "text", partial, "", Proof::Scan, true),
    ];
    for (prelude, status_type, indexes, extra, proof, january) in cases {
        let setup = format!("{prelude} {} {extra}", layout(status_type, indexes));
        let (_db, pool) = database(&setup).await;
        let (found, chosen) = verdicts(&pool, &["succeeded", "failed"], at(2020, 6, 1), true).await;
        assert!(
            chosen.iter().all(|p| *p == proof),
            "{status_type} {indexes}: {chosen:?}"
        );
        let by_scan: Vec<bool> = found.iter().map(|f| f.2).collect();
        assert_eq!(
            by_scan,
            [january, false, false, false, true],
            "{status_type}"
        );
        // Where the catalog chooses the indexes, byte by byte is never looser than the
        // column's own equality: where the scan keeps a partition, so do the indexes.
        // (Forced onto `citext`, whose `>` ignores case, they would not be.)
        for f in found.iter().filter(|_| proof != Proof::Scan) {
            assert!(f.2 || !f.3, "{status_type} {indexes}: {f:?}");
        }
    }
}

/// A proof chosen for a text status and used after the column became `citext` (a dry run
/// counts without a lock): the walk still compares text byte by byte, so `SUCCEEDED`
/// keeps January instead of being folded into `succeeded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_walk_chosen_for_text_stays_byte_by_byte_when_the_type_changes() {
    let (_db, pool) = database(&format!(
        "CREATE EXTENSION citext; {}",
        layout("text", INDEXES)
    ))
    .await;
    let (table, schema) = table_and_schema(&pool).await;
    let january = candidates(&pool, &table, &schema, at(2020, 6, 1))
        .await
        .unwrap()
        .remove(0);
    let chosen = proof(&pool, &table, january.oid).await.unwrap();
    assert_eq!(chosen, BYTES);
    sqlx::raw_sql(
        "ALTER TABLE runs ALTER COLUMN status TYPE citext;
         INSERT INTO runs VALUES (999, 'SUCCEEDED', '2020-01-15');",
    )
    .execute(&pool)
    .await
    .unwrap();
    let statuses = ["succeeded".to_owned(), "failed".to_owned()];
    let found = census(
        &pool,
        &table,
        &schema,
        &january.name,
        chosen,
        true,
        &statuses,
        at(2020, 6, 1),
    )
    .await
    .unwrap();
    assert_eq!(found.rows, Some(2001));
    assert!(found.blocking.is_some(), "{found:?}");
}
