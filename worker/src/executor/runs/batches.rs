//! The batches of a real `cleanup_runs` run: which rows one batch takes, where the next
//! one starts, and how big it is.
//!
//! Each batch continues where the previous one stopped (a cursor on the last row it
//! passed), so a whole run reads the table about once, with or without an index on the
//! timestamp column: the `keyset` strategy follows an index that leads with the timestamp
//! column, oldest first; `key_range` follows the key's own index. Under `max_rows`, a
//! `key_range` run first fixes the age of the `max_rows`-th oldest eligible row and takes
//! only rows at least that old, so the cap still takes the oldest rows.
//!
//! A batch locks its rows with `FOR UPDATE SKIP LOCKED` and its `DELETE` repeats the
//! eligibility test: the cursor and the age threshold only narrow what a batch may take.
//! Batch sizes adapt toward a target duration, never above `batch_size`; a batch that
//! hits a lock or statement timeout is retried smaller.

use std::time::Duration;

use shared::results::RunsCursor;

use super::schema::{Schema, Strategy};
use super::table::RunsTable;

/// A batch's SQL and its text parameters after the fixed ones (`$1` statuses, `$2`
/// cutoff, `$3` limit, `$4` scope values).
pub struct BatchSql {
    pub sql: String,
    pub params: Vec<String>,
}

/// What one batch did.
#[derive(Debug)]
pub struct BatchOutcome {
    pub deleted: u64,
    /// Rows the batch locked (deleted or found no longer eligible).
    pub taken: u64,
    pub sample: Vec<String>,
    pub last: Option<RunsCursor>,
}

/// The statement of one batch. `eligible` is the eligibility condition on `$1`/`$2`.
pub fn delete_sql(
    t: &RunsTable,
    schema: &Schema,
    eligible: &str,
    cursor: Option<&RunsCursor>,
    threshold: Option<&str>,
) -> BatchSql {
    let (table, id, ts) = (&t.table, &t.id, &t.timestamp);
    let (id_type, ts_type) = (&schema.id_type, &schema.ts_type);
    let mut params = Vec::new();
    let mut param = |value: &str, ty: &str| {
        params.push(value.to_owned());
        format!("${}::text::{ty}", params.len() + 4)
    };
    // The walk order, and the columns a cursor compares, in that order.
    let order: Vec<&String> = match (schema.strategy, schema.key.len()) {
        (Strategy::Keyset, _) => vec![ts, id],
        (Strategy::KeyRange, 1) => vec![id],
        (Strategy::KeyRange, _) => vec![id, ts],
    };
    let mut condition = eligible.to_owned();
    if let Some(cursor) = cursor {
        let values: Vec<String> = order
            .iter()
            .map(|column| {
                if *column == ts {
                    param(&cursor.ts, ts_type)
                } else {
                    param(&cursor.id, id_type)
                }
            })
            .collect();
        let columns: Vec<&str> = order.iter().map(|c| c.as_str()).collect();
        condition.push_str(&format!(
            " AND ({}) > ({})",
            columns.join(", "),
            values.join(", ")
        ));
    }
    if let Some(threshold) = threshold {
        condition.push_str(&format!(" AND {ts} <= {}", param(threshold, ts_type)));
    }
    let ascending: Vec<String> = order.iter().map(|c| c.to_string()).collect();
    let descending: Vec<String> = order.iter().map(|c| format!("{c} DESC")).collect();
    let (key, key_columns) = (schema.key_expr(), schema.key.join(", "));
    let sql = format!(
        "WITH batch AS (
             SELECT {id}, {ts} FROM {table} WHERE {condition}
             ORDER BY {asc} LIMIT $3 FOR UPDATE SKIP LOCKED
         ), gone AS (
             DELETE FROM {table} WHERE {key} IN (SELECT {key_columns} FROM batch)
                 AND {eligible}
             RETURNING {id}
         ), last AS (
             SELECT {ts}::text AS ts, {id}::text AS id FROM batch ORDER BY {desc} LIMIT 1
         )
         SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM batch),
                ARRAY(SELECT {id}::text FROM gone LIMIT {sample}),
                (SELECT ts FROM last), (SELECT id FROM last)",
        asc = ascending.join(", "),
        desc = descending.join(", "),
        sample = super::SAMPLE_SIZE,
    );
    BatchSql { sql, params }
}

/// The timestamp of the `$3`-th oldest eligible row (`key_range` under `max_rows`);
/// `$4` as in every statement.
pub fn threshold_sql(t: &RunsTable, eligible: &str) -> String {
    format!(
        "SELECT {ts}::text FROM {table} WHERE {eligible} ORDER BY {ts} OFFSET $3 - 1 LIMIT 1",
        ts = t.timestamp,
        table = t.table
    )
}

/// Batch sizes that move toward a target duration per batch, within `1..=max`.
#[derive(Debug)]
pub struct Sizer {
    size: u64,
    max: u64,
    target: Duration,
}

/// The first batch of a run: big enough to measure, small enough to be short.
const FIRST_BATCH: u64 = 1_000;

impl Sizer {
    pub fn new(max: u64, target: Duration) -> Self {
        let max = max.max(1);
        Self {
            size: max.min(FIRST_BATCH),
            max,
            target,
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// After a batch of the current size took `elapsed`: at most double or halve.
    pub fn record(&mut self, elapsed: Duration) {
        let factor = (self.target.as_secs_f64() / elapsed.as_secs_f64().max(1e-6)).clamp(0.5, 2.0);
        self.size = ((self.size as f64 * factor).round() as u64).clamp(1, self.max);
    }

    /// A batch timed out: a quarter of the size next time. False when it was one row
    /// already, so there is nothing smaller to try.
    pub fn shrink(&mut self) -> bool {
        if self.size <= 1 {
            return false;
        }
        self.size = (self.size / 4).max(1);
        true
    }
}

/// A lock or statement timeout: the batch was too big for the locks it met.
pub fn is_timeout(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db)
        if db.code().is_some_and(|code| code == "55P03" || code == "57014"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_sizes_move_toward_the_target_within_bounds() {
        let mut sizer = Sizer::new(10_000, Duration::from_millis(250));
        assert_eq!(sizer.size(), 1_000);
        sizer.record(Duration::from_millis(50));
        assert_eq!(sizer.size(), 2_000, "at most doubles");
        sizer.record(Duration::from_millis(250));
        assert_eq!(sizer.size(), 2_000, "on target");
        sizer.record(Duration::from_secs(5));
        assert_eq!(sizer.size(), 1_000, "at most halves");
        for _ in 0..20 {
            sizer.record(Duration::from_millis(1));
        }
        assert_eq!(sizer.size(), 10_000, "never above batch_size");
        assert!(sizer.shrink());
        assert_eq!(sizer.size(), 2_500);
        let mut tiny = Sizer::new(1, Duration::from_millis(250));
        assert!(!tiny.shrink(), "nothing smaller than one row");
    }
}
