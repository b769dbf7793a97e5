//! The census of a partition that may go whole: how many rows it holds, and whether every
//! one of them is eligible. Run in one statement (one snapshot), under a lock that holds
//! off writes to the partition when it decides a removal.
//!
//! Reading and checking every row costs about a third of deleting it. Where the partition
//! has valid btree indexes led by the status column and by the timestamp column, the proof
//! needs no row read: the distinct statuses come from one index descent each (a loose
//! index scan), the newest timestamp and any missing one from one descent each, and only
//! the count is left to the planner, which takes the cheapest way (an index-only or
//! parallel scan, a tenth of checking every row). The verdict is the same either way: a
//! status outside the task's, a missing status or timestamp, or a timestamp at or after
//! the cutoff keeps the partition. The indexes only decide the speed: the statements mean
//! the same whatever plan runs them. A status column whose equality is looser than its
//! text (`citext`, a nondeterministic collation) always gets the full scan.

use chrono::{DateTime, Utc};

use super::Candidate;
use crate::executor::runs::schema::Schema;
use crate::executor::runs::{eligible_sql, RunsTable};

/// How a census proves that every row is eligible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// Every row is read and checked.
    Scan,
    /// From the indexes on the status and the timestamp columns.
    Indexes,
}

/// What a census found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Census {
    pub rows: u64,
    /// Why the partition must stay, when it must.
    pub blocking: Option<String>,
}

/// The catalog condition for [`Proof::Indexes`], on a partition `c` (a `pg_class` row),
/// with `$2` the status column's name and `$3` the timestamp column's: a valid, complete
/// btree index with the default operator class and the column's collation leads with each
/// of the two columns, and the status column is an enum, or `text` or `varchar` with a
/// deterministic collation: types whose equality is that of their text, so that the
/// distinct values the index yields are the distinct texts the test sees (`citext` and
/// nondeterministic collations put `SUCCEEDED` and `succeeded` in one value).
pub const INDEXED_SQL: &str = "
    (SELECT count(DISTINCT a.attname) = 2
     FROM pg_index x
     JOIN pg_class ic ON ic.oid = x.indexrelid
     JOIN pg_am am ON am.oid = ic.relam
     JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = x.indkey[0]
     JOIN pg_opclass oc ON oc.oid = x.indclass[0]
     WHERE x.indrelid = c.oid AND a.attname IN ($2, $3) AND am.amname = 'btree'
       AND oc.opcdefault AND x.indcollation[0] = a.attcollation
       AND x.indpred IS NULL AND x.indisvalid AND x.indisready)
    AND EXISTS (SELECT 1 FROM pg_attribute a
                JOIN pg_type t ON t.oid = a.atttypid
                LEFT JOIN pg_collation co ON co.oid = a.attcollation
                WHERE a.attrelid = c.oid AND a.attname = $2
                  AND (t.typtype = 'e'
                       OR (t.oid IN ('text'::regtype, 'varchar'::regtype)
                           AND co.collisdeterministic)))";

/// The census statement of `partition` (quoted), on `$1` statuses and `$2` cutoff.
pub fn census_sql(table: &RunsTable, schema: &Schema, partition: &str, proof: Proof) -> String {
    match proof {
        // The count of rows, and of rows that are not eligible.
        Proof::Scan => format!(
            "SELECT count(*), count(*) FILTER (WHERE NOT coalesce({eligible}, false)),
                    ARRAY[]::text[], false, false
             FROM {partition}",
            eligible = eligible_sql(table, schema)
        ),
        // The count of rows; the statuses that are not the task's; whether a status or a
        // timestamp is missing; whether the newest timestamp is not older than the cutoff.
        Proof::Indexes => format!(
            "WITH RECURSIVE s(v) AS (
                 (SELECT {status} FROM {partition} WHERE {status} IS NOT NULL
                  ORDER BY {status} LIMIT 1)
                 UNION ALL
                 SELECT (SELECT {status} FROM {partition} WHERE {status} > s.v
                         ORDER BY {status} LIMIT 1)
                 FROM s WHERE s.v IS NOT NULL)
             SELECT (SELECT count(*) FROM {partition}), 0::int8,
                    ARRAY(SELECT v::text FROM s
                          WHERE v IS NOT NULL AND NOT coalesce(v::text = ANY($1), false)),
                    EXISTS (SELECT 1 FROM {partition} WHERE {status} IS NULL)
                        OR EXISTS (SELECT 1 FROM {partition} WHERE {ts} IS NULL),
                    NOT coalesce((SELECT max({ts}) FROM {partition}) < {cutoff}, true)",
            status = table.status,
            ts = table.timestamp,
            cutoff = schema.cutoff_expr()
        ),
    }
}

/// Count `candidate`'s rows and find whether any of them is not eligible.
pub async fn census<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    table: &RunsTable,
    schema: &Schema,
    candidate: &Candidate,
    statuses: &[String],
    cutoff: DateTime<Utc>,
) -> Result<Census, sqlx::Error> {
    let sql = census_sql(table, schema, &candidate.name, candidate.proof);
    let (rows, ineligible, others, missing, young): (i64, i64, Vec<String>, bool, bool) =
        sqlx::query_as(&sql)
            .bind(statuses)
            .bind(cutoff)
            .fetch_one(executor)
            .await?;
    let mut reasons = Vec::new();
    if ineligible > 0 {
        reasons.push(format!(
            "{ineligible} of its rows are not eligible (not finished, or not old enough)"
        ));
    }
    if !others.is_empty() {
        reasons.push(format!(
            "it holds runs with status {}, not among the task's",
            others.join(", ")
        ));
    }
    if missing {
        reasons.push("it holds runs with no status or no timestamp".to_owned());
    }
    if young {
        reasons.push("it holds runs not older than the cutoff".to_owned());
    }
    Ok(Census {
        rows: rows.max(0) as u64,
        blocking: (!reasons.is_empty()).then(|| reasons.join("; ")),
    })
}
