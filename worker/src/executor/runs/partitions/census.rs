//! The census of a partition that may go whole: how many rows it holds, and whether every
//! one of them is eligible. Run in one statement (one snapshot), under a lock that holds
//! off writes to the partition when it decides a removal.
//!
//! Reading and checking every row costs about a third of deleting it. Where the partition
//! has valid btree indexes led by the status column (in an order that cannot disagree
//! with equality, see [`INDEXED_SQL`]) and by the timestamp column, the proof
//! needs no row read: the distinct statuses come from one index descent each (a loose
//! index scan), the newest timestamp and any missing one from one descent each, and only
//! the count is left to the planner, which takes the cheapest way (an index-only or
//! parallel scan, a tenth of checking every row). The verdict is the same either way: a
//! status outside the task's, a missing status or timestamp, or a timestamp at or after
//! the cutoff keeps the partition. The indexes only decide the speed: the statements mean
//! the same whatever plan runs them. A removal chooses the proof under the lock that
//! holds the column types as they are ([`proof`]); a dry run, right before counting.

use chrono::{DateTime, Utc};

use crate::executor::runs::schema::Schema;
use crate::executor::runs::{eligible_sql, RunsTable};

/// How a census proves that every row is eligible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// Every row is read and checked.
    Scan,
    /// From the indexes on the status and the timestamp columns; `bytewise`: the status
    /// is text, walked in the `"C"` collation (an enum is walked in its own order).
    Indexes { bytewise: bool },
}

impl Proof {
    /// From [`INDEXED_SQL`]'s answer.
    fn from_catalog(found: Option<&str>) -> Self {
        match found {
            Some("enum") => Proof::Indexes { bytewise: false },
            Some("bytes") => Proof::Indexes { bytewise: true },
            _ => Proof::Scan,
        }
    }
}

/// What a census found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Census {
    /// The rows it holds; `None` when the census was asked not to count them.
    pub rows: Option<u64>,
    /// Why the partition must stay, when it must.
    pub blocking: Option<String>,
}

/// Which proof the indexes of a partition `c` (a `pg_class` row) allow, with `$2` the
/// status column's name and `$3` the timestamp column's: `enum`, `bytes` or NULL (scan).
/// It needs a valid, complete btree index with the default operator class led by each
/// column. The status index must walk an order that can never disagree with equality:
/// an enum's, or for `text` and `varchar` the `"C"` (or `"POSIX"`) collation, byte by
/// byte (`CREATE INDEX ON runs (status COLLATE "C")`). An index in a linguistic
/// collation can be out of order after an operating system or ICU upgrade until it is
/// rebuilt, and its walk could then skip a status; other types (`citext`, domains) may
/// call two different texts equal. Both get the scan.
const INDEXED_SQL: &str = "
    CASE WHEN EXISTS (
        SELECT 1 FROM pg_index x
        JOIN pg_class ic ON ic.oid = x.indexrelid
        JOIN pg_am am ON am.oid = ic.relam
        JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = x.indkey[0]
        JOIN pg_opclass oc ON oc.oid = x.indclass[0]
        WHERE x.indrelid = c.oid AND a.attname = $3 AND am.amname = 'btree'
          AND oc.opcdefault AND x.indpred IS NULL AND x.indisvalid AND x.indisready)
    THEN (
        SELECT CASE WHEN t.typtype = 'e' THEN 'enum' ELSE 'bytes' END
        FROM pg_index x
        JOIN pg_class ic ON ic.oid = x.indexrelid
        JOIN pg_am am ON am.oid = ic.relam
        JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = x.indkey[0]
        JOIN pg_type t ON t.oid = a.atttypid
        JOIN pg_opclass oc ON oc.oid = x.indclass[0]
        WHERE x.indrelid = c.oid AND a.attname = $2 AND am.amname = 'btree'
          AND oc.opcdefault AND x.indpred IS NULL AND x.indisvalid AND x.indisready
          AND ((t.typtype = 'e' AND x.indcollation[0] = 0)
               OR (t.oid IN ('pg_catalog.text'::regtype, 'pg_catalog.varchar'::regtype)
                   AND x.indcollation[0] IN ('pg_catalog.\"C\"'::regcollation,
                                             'pg_catalog.\"POSIX\"'::regcollation)))
        LIMIT 1)
    END";

/// The proof a partition's indexes allow now, read in the caller's transaction.
pub async fn proof<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    table: &RunsTable,
    oid: i64,
) -> Result<Proof, sqlx::Error> {
    let found: Option<String> = sqlx::query_scalar(&format!(
        "SELECT {INDEXED_SQL} FROM pg_class c WHERE c.oid = $1::int8::oid"
    ))
    .bind(oid)
    .bind(&table.names.status)
    .bind(&table.names.timestamp)
    .fetch_optional(executor)
    .await?
    .flatten();
    Ok(Proof::from_catalog(found.as_deref()))
}

/// The rows of partition `oid` as PostgreSQL's statistics put them (what the planner
/// assumes: the rows per page its last `VACUUM` or `ANALYZE` saw, times the pages it has
/// now), read without touching the partition; `None` when it has no statistics yet, saw
/// no row (a table vacuumed empty and filled since would be reported empty), or is itself
/// partitioned.
pub async fn estimate<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    oid: i64,
) -> Result<Option<u64>, sqlx::Error> {
    let rows: Option<i64> = sqlx::query_scalar(
        "SELECT CASE WHEN c.relkind = 'r' AND c.reltuples > 0 AND c.relpages > 0
                THEN least(round(c.reltuples::float8 / c.relpages
                                 * (pg_relation_size(c.oid) / current_setting('block_size')::int8)),
                           1e18)::int8
                END
         FROM pg_class c WHERE c.oid = $1::int8::oid",
    )
    .bind(oid)
    .fetch_optional(executor)
    .await?
    .flatten();
    Ok(rows.map(|n| n.max(0) as u64))
}

/// The census statement of `partition` (quoted), on `$1` statuses and `$2` cutoff; with
/// the index proof, the rows are counted only when `count` (the scan counts as it reads).
pub fn census_sql(
    table: &RunsTable,
    schema: &Schema,
    partition: &str,
    proof: Proof,
    count: bool,
) -> String {
    match proof {
        // The count of rows, and of rows that are not eligible.
        Proof::Scan => format!(
            "SELECT count(*), count(*) FILTER (WHERE NOT coalesce({eligible}, false)),
                    ARRAY[]::text[], false, false
             FROM {partition}",
            eligible = eligible_sql(table, schema)
        ),
        // The count of rows; the statuses that are not the task's (each distinct value,
        // compared byte by byte where text: stricter than any collation's equality);
        // whether a status or a timestamp is missing; whether the newest timestamp is not
        // older than the cutoff.
        Proof::Indexes { bytewise } => format!(
            "WITH RECURSIVE s(v) AS (
                 (SELECT {key} FROM {partition} WHERE {status} IS NOT NULL
                  ORDER BY {key} LIMIT 1)
                 UNION ALL
                 SELECT (SELECT {key} FROM {partition} WHERE {key} > s.v
                         ORDER BY {key} LIMIT 1)
                 FROM s WHERE s.v IS NOT NULL)
             SELECT {rows}, 0::int8,
                    ARRAY(SELECT v::text FROM s
                          WHERE v IS NOT NULL AND NOT coalesce(v::text = ANY($1), false)),
                    EXISTS (SELECT 1 FROM {partition} WHERE {status} IS NULL)
                        OR EXISTS (SELECT 1 FROM {partition} WHERE {ts} IS NULL),
                    NOT coalesce((SELECT max({ts}) FROM {partition}) < {cutoff}, true)",
            key = if bytewise {
                // As text whatever the column's type is now: a type changed since the
                // proof was chosen makes the walk slower, never looser.
                format!("{}::text COLLATE \"C\"", table.status)
            } else {
                table.status.clone()
            },
            rows = if count {
                format!("(SELECT count(*) FROM {partition})")
            } else {
                "NULL::int8".to_owned()
            },
            status = table.status,
            ts = table.timestamp,
            cutoff = schema.cutoff_expr()
        ),
    }
}

/// Find whether any row of `partition` (quoted) is not eligible, by `proof` (from
/// [`proof`], read in the same transaction where a removal depends on it), and count its
/// rows when `count` (or when the proof reads them anyway).
#[allow(clippy::too_many_arguments)]
pub async fn census<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    table: &RunsTable,
    schema: &Schema,
    partition: &str,
    proof: Proof,
    count: bool,
    statuses: &[String],
    cutoff: DateTime<Utc>,
) -> Result<Census, sqlx::Error> {
    let sql = census_sql(table, schema, partition, proof, count);
    let (rows, ineligible, others, missing, young): (Option<i64>, i64, Vec<String>, bool, bool) =
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
        rows: rows.map(|n| n.max(0) as u64),
        blocking: (!reasons.is_empty()).then(|| reasons.join("; ")),
    })
}
