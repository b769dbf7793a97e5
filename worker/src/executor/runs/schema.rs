//! What the runs table really is, read from the catalog before anything is deleted.
//!
//! The settings name a table and three columns; the catalog says whether the id column
//! identifies one row (a primary key or a unique index, alone or together with the
//! timestamp column), and whether the timestamp column carries a time zone. A
//! `timestamp without time zone` holds wall-clock times of some zone: the cutoff is
//! converted to that zone (`RUNS_TIMESTAMP_TIMEZONE`, default the database's `TimeZone`)
//! before it is compared, so a database that is not on UTC never makes young rows look old.

use std::collections::BTreeMap;

use sqlx::PgPool;

use super::RunsTable;

/// The clock shifts zones make (Lord Howe Island moves 30 minutes, most zones an hour,
/// Antarctica/Troll two hours).
const CLOCK_SHIFTS: [&str; 3] = ["30 minutes", "1 hour", "2 hours"];

/// How the timestamp column is compared with the cutoff (a `timestamptz` bound as `$2`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Timestamps {
    /// `timestamp with time zone`: instants, compared as they are.
    Instants,
    /// `timestamp without time zone`: wall-clock times in this IANA zone.
    WallClock { zone: String },
}

/// How batches walk the table, each continuing where the previous one stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// An index on (timestamp, id): a cursor on (timestamp, id), oldest first.
    Keyset,
    /// No such index: the key's own index, in key order (oldest first only under
    /// `max_rows`, through an age threshold fixed once per turn). An index on the
    /// timestamp alone does not count: ties would be sorted again by every batch.
    KeyRange,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Keyset => "keyset",
            Strategy::KeyRange => "key_range",
        }
    }
}

/// The checked shape of the runs table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema {
    /// Quoted columns that identify one row: the id column, or id and timestamp
    /// (a partitioned table's unique key must include its partition key).
    pub key: Vec<String>,
    pub timestamps: Timestamps,
    pub strategy: Strategy,
    /// SQL types of the id and timestamp columns (cursor values travel as text).
    pub id_type: String,
    pub ts_type: String,
    /// SQL types of the scope columns (RUNS_SCOPE_COLUMNS), by name.
    pub scope_types: BTreeMap<String, String>,
    /// A partitioned table: a row's `ctid` names it only within its partition.
    pub partitioned: bool,
}

/// Why the runs table cannot be cleaned as configured.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The table does not exist (yet): tasks fail, the worker still starts.
    #[error("the runs table {0} does not exist (RUNS_TABLE)")]
    MissingTable(String),
    /// The table exists but cannot be cleaned safely as configured: refuse to start.
    #[error("{0}")]
    Unsafe(String),
    #[error("cannot read the runs table's schema: {0}")]
    Database(#[from] sqlx::Error),
}

#[derive(sqlx::FromRow)]
struct Column {
    name: String,
    type_name: String,
}

/// Read the table's shape from the catalog. `zone`: RUNS_TIMESTAMP_TIMEZONE, if set.
pub async fn inspect(
    pool: &PgPool,
    table: &RunsTable,
    zone: Option<&str>,
) -> Result<Schema, SchemaError> {
    let oid: Option<i64> = sqlx::query_scalar("SELECT to_regclass($1)::oid::int8")
        .bind(&table.table)
        .fetch_one(pool)
        .await?;
    let Some(oid) = oid else {
        return Err(SchemaError::MissingTable(table.table.clone()));
    };
    let partitioned = check_relation(pool, oid, &table.table, &table.names.id).await?;
    let columns: Vec<Column> = sqlx::query_as(
        "SELECT attname::text AS name, format_type(atttypid, NULL) AS type_name
         FROM pg_attribute WHERE attrelid = $1::int8::oid AND attnum > 0 AND NOT attisdropped",
    )
    .bind(oid)
    .fetch_all(pool)
    .await?;
    let type_of = |name: &str, setting: &str| {
        columns
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.type_name.clone())
            .ok_or_else(|| {
                SchemaError::Unsafe(format!(
                    "{setting} `{name}` is not a column of the runs table {}",
                    table.table
                ))
            })
    };
    let id_type = type_of(&table.names.id, "RUNS_ID_COLUMN")?;
    type_of(&table.names.status, "RUNS_STATUS_COLUMN")?;
    let ts_type = type_of(&table.names.timestamp, "RUNS_TIMESTAMP_COLUMN")?;
    let scope_types = table
        .scope
        .keys()
        .map(|name| Ok((name.clone(), type_of(name, "RUNS_SCOPE_COLUMNS")?)))
        .collect::<Result<BTreeMap<_, _>, SchemaError>>()?;
    let timestamps = match ts_type.as_str() {
        "timestamp with time zone" => Timestamps::Instants,
        "timestamp without time zone" => {
            // The worker cannot learn which zone the application writes in (its own
            // sessions are always UTC): the operator must say.
            let Some(zone) = zone.map(str::to_owned) else {
                return Err(SchemaError::Unsafe(format!(
                    "RUNS_TIMESTAMP_COLUMN `{}` is `timestamp without time zone`: set \
                     RUNS_TIMESTAMP_TIMEZONE to the zone the application writes its values in",
                    table.names.timestamp
                )));
            };
            check_zone(pool, &zone).await?;
            Timestamps::WallClock { zone }
        }
        other => {
            return Err(SchemaError::Unsafe(format!(
                "RUNS_TIMESTAMP_COLUMN `{}` is of type {other}; it must be `timestamp with time \
                 zone` or `timestamp without time zone`",
                table.names.timestamp
            )))
        }
    };
    // Unique, complete (not partial, no expressions) indexes, by their column names.
    let unique: Vec<Vec<String>> = sqlx::query_scalar(
        "SELECT array(SELECT a.attname::text FROM unnest(i.indkey) k
                      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k)
         FROM pg_index i
         WHERE i.indrelid = $1::int8::oid AND i.indisunique AND i.indpred IS NULL
           AND i.indexprs IS NULL AND i.indisvalid AND i.indisready AND i.indislive",
    )
    .bind(oid)
    .fetch_all(pool)
    .await?;
    let id = &table.names.id;
    let ts = &table.names.timestamp;
    let key = if unique.iter().any(|cols| cols.len() == 1 && &cols[0] == id) {
        vec![table.id.clone()]
    } else if unique
        .iter()
        .any(|cols| cols.len() == 2 && cols.contains(id) && cols.contains(ts))
    {
        vec![table.id.clone(), table.timestamp.clone()]
    } else {
        return Err(SchemaError::Unsafe(format!(
            "RUNS_ID_COLUMN `{id}` does not identify one row of {}: it needs a primary key or \
             a unique index on ({id}) or ({id}, {ts}); deleting by a non-unique id could delete \
             rows that are not eligible",
            table.table
        )));
    };
    // A valid, complete btree index on (timestamp, id, ...): it serves the keyset order
    // whole. An index on the timestamp alone would leave every run of equal timestamps
    // to be sorted again by each batch (a bulk import that stamped a million rows with
    // one `now()` makes every batch sort the million).
    let by_time: bool = sqlx::query_scalar(
        "SELECT EXISTS (
             SELECT 1 FROM pg_index i
             JOIN pg_class ic ON ic.oid = i.indexrelid
             JOIN pg_am am ON am.oid = ic.relam
             JOIN pg_attribute t ON t.attrelid = i.indrelid AND t.attnum = i.indkey[0]
             JOIN pg_attribute k ON k.attrelid = i.indrelid AND k.attnum = i.indkey[1]
             WHERE i.indrelid = $1::int8::oid AND t.attname = $2 AND k.attname = $3
               AND i.indnkeyatts >= 2 AND am.amname = 'btree'
               AND i.indpred IS NULL AND i.indisvalid AND i.indisready)",
    )
    .bind(oid)
    .bind(ts)
    .bind(id)
    .fetch_one(pool)
    .await?;
    let strategy = if by_time {
        Strategy::Keyset
    } else {
        Strategy::KeyRange
    };
    Ok(Schema {
        key,
        timestamps,
        strategy,
        id_type,
        ts_type,
        scope_types,
        partitioned,
    })
}

/// The table is a plain or partitioned table (not a partition, no inheritance children,
/// every partition a table, the id never NULL) whose `DELETE` removes the rows it names
/// and nothing the cleanup did not choose: no rule rewrites it, and no chain of
/// `ON DELETE CASCADE` foreign keys leads back to the runs table (a run referencing
/// another run, directly or through other tables, would take young or running runs
/// with an old one). Returns whether the table is partitioned.
async fn check_relation(
    pool: &PgPool,
    oid: i64,
    table: &str,
    id_column: &str,
) -> Result<bool, SchemaError> {
    let (kind, is_partition, children, nullable_id): (String, bool, i64, bool) = sqlx::query_as(
        "SELECT c.relkind::text, c.relispartition,
                (SELECT count(*) FROM pg_inherits i WHERE i.inhparent = c.oid),
                NOT EXISTS (SELECT 1 FROM pg_attribute a
                            WHERE a.attrelid = c.oid AND a.attname = $2 AND a.attnotnull)
         FROM pg_class c WHERE c.oid = $1::int8::oid",
    )
    .bind(oid)
    .bind(id_column)
    .fetch_one(pool)
    .await?;
    if kind != "r" && kind != "p" {
        let what = match kind.as_str() {
            "v" => "a view",
            "m" => "a materialized view",
            "f" => "a foreign table",
            _ => "not a table",
        };
        return Err(SchemaError::Unsafe(format!(
            "RUNS_TABLE {table} is {what}; the worker deletes only from a table whose \
             DELETE it can reason about"
        )));
    }
    if is_partition {
        return Err(SchemaError::Unsafe(format!(
            "RUNS_TABLE {table} is a partition; configure its partitioned table instead (the \
             checks of keys and cascades hold for the whole partitioned table, not for one \
             partition)"
        )));
    }
    if kind == "r" && children > 0 {
        return Err(SchemaError::Unsafe(format!(
            "RUNS_TABLE {table} has inheritance children: its DELETE reaches them too, and \
             its unique key does not hold across them, so one batch could delete more rows \
             than it counts"
        )));
    }
    if nullable_id {
        return Err(SchemaError::Unsafe(format!(
            "RUNS_ID_COLUMN `{id_column}` of {table} may be NULL: rows without an id cannot \
             be deleted by key; make it NOT NULL (a primary key is)"
        )));
    }
    // The relations a DELETE of the table reaches: itself, its partitions and
    // inheritance children, all of them. Each must be a plain or partitioned table.
    let tree: Vec<(i64, String, String)> = sqlx::query_as(
        "WITH RECURSIVE tree AS (
             SELECT $1::int8::oid AS relid
             UNION SELECT i.inhrelid FROM pg_inherits i JOIN tree t ON i.inhparent = t.relid
         )
         SELECT c.oid::int8, c.relkind::text, c.oid::regclass::text
         FROM tree JOIN pg_class c ON c.oid = tree.relid ORDER BY 3",
    )
    .bind(oid)
    .fetch_all(pool)
    .await?;
    let foreign: Vec<&str> = tree
        .iter()
        .filter(|(_, kind, _)| kind != "r" && kind != "p")
        .map(|(_, _, name)| name.as_str())
        .collect();
    if !foreign.is_empty() {
        return Err(SchemaError::Unsafe(format!(
            "RUNS_TABLE {table} has partitions that are not tables ({}); the worker deletes \
             only from tables whose DELETE it can reason about",
            foreign.join(", ")
        )));
    }
    let rules: Vec<String> = sqlx::query_scalar(
        "SELECT rulename::text FROM pg_rewrite WHERE ev_class = $1::int8::oid AND ev_type = '4'
         ORDER BY rulename",
    )
    .bind(oid)
    .fetch_all(pool)
    .await?;
    if !rules.is_empty() {
        return Err(SchemaError::Unsafe(format!(
            "RUNS_TABLE {table} has a rule on DELETE ({}): the worker's DELETE would be \
             rewritten into something it did not choose",
            rules.join(", ")
        )));
    }
    // Follow ON DELETE CASCADE foreign keys outwards from every relation of the tree; a
    // path that arrives back at one of them is a cascade that deletes runs the cleanup
    // did not select. Catalog reads only: no lock is taken, so a table the application
    // holds locked does not stall this.
    let cycle: Option<String> = sqlx::query_scalar(
        "WITH RECURSIVE runs AS (
             SELECT unnest($1::int8[])::oid AS relid
         ), reach(relid, seen, path) AS (
             SELECT c.conrelid, ARRAY[c.conrelid],
                    ARRAY[format('%s (%I)', c.conrelid::regclass, c.conname)]
             FROM pg_constraint c
             WHERE c.contype = 'f' AND c.confdeltype = 'c'
               AND c.confrelid IN (SELECT relid FROM runs)
           UNION ALL
             SELECT c.conrelid, r.seen || c.conrelid,
                    r.path || format('%s (%I)', c.conrelid::regclass, c.conname)
             FROM reach r
             JOIN pg_constraint c ON c.contype = 'f' AND c.confdeltype = 'c'
                                  AND c.confrelid = r.relid
             WHERE r.relid NOT IN (SELECT relid FROM runs) AND c.conrelid <> ALL (r.seen)
         )
         SELECT array_to_string(path, ' -> ') FROM reach
         WHERE relid IN (SELECT relid FROM runs)
         ORDER BY cardinality(path) LIMIT 1",
    )
    .bind(
        tree.iter()
            .map(|(relid, _, _)| *relid)
            .collect::<Vec<i64>>(),
    )
    .fetch_optional(pool)
    .await?;
    if let Some(path) = cycle {
        return Err(SchemaError::Unsafe(format!(
            "deleting a row of {table} cascades back into {table} (ON DELETE CASCADE: \
             {table} -> {path}): an old finished run would take the runs that reference it \
             with it, young or running ones included; make that foreign key ON DELETE \
             SET NULL or NO ACTION, or clean this table another way"
        )));
    }
    Ok(kind == "p")
}

/// A zone PostgreSQL knows, or a clear refusal.
async fn check_zone(pool: &PgPool, zone: &str) -> Result<(), SchemaError> {
    let known: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = $1)
             OR EXISTS (SELECT 1 FROM pg_timezone_abbrevs WHERE abbrev = $1)",
    )
    .bind(zone)
    .fetch_one(pool)
    .await?;
    if known {
        Ok(())
    } else {
        Err(SchemaError::Unsafe(format!(
            "RUNS_TIMESTAMP_TIMEZONE `{zone}` is not a time zone PostgreSQL knows"
        )))
    }
}

impl Schema {
    /// The cutoff (`$2`, timestamptz) as a value of the timestamp column's type.
    ///
    /// For wall-clock values the bound must hold for every instant a wall time can stand
    /// for: in the hour a daylight-saving change repeats, one wall time names two instants
    /// an hour apart. `least(wall(c), wall(c + d) - d)` over every shift `d` a zone uses
    /// is the wall time of `c` except when `c` falls in the first pass of a repeated
    /// period; then it steps back before that period, so a row written in the second pass
    /// (younger than `c`) is never taken as older.
    pub fn cutoff_expr(&self) -> String {
        match &self.timestamps {
            Timestamps::Instants => "$2".to_owned(),
            Timestamps::WallClock { zone } => {
                let zone = literal(zone);
                let shifted = CLOCK_SHIFTS
                    .iter()
                    .map(|shift| {
                        format!(
                            "($2::timestamptz + interval '{shift}') AT TIME ZONE {zone} \
                             - interval '{shift}'"
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                format!("least($2::timestamptz AT TIME ZONE {zone}, {shifted})")
            }
        }
    }

    /// An expression turning a value of the timestamp column into an instant.
    pub fn instant(&self, value: &str) -> String {
        match &self.timestamps {
            Timestamps::Instants => value.to_owned(),
            Timestamps::WallClock { zone } => format!("({value} AT TIME ZONE {})", literal(zone)),
        }
    }

    /// The row key as a SQL expression: `"id"` or `("id", "finished_at")`.
    pub fn key_expr(&self) -> String {
        match self.key.as_slice() {
            [one] => one.clone(),
            many => format!("({})", many.join(", ")),
        }
    }

    /// What the logs say about how rows are compared.
    pub fn describe(&self) -> String {
        match &self.timestamps {
            Timestamps::Instants => "timestamp with time zone: compared as instants".to_owned(),
            Timestamps::WallClock { zone } => format!(
                "timestamp without time zone: values are read as wall-clock times in {zone}"
            ),
        }
    }
}

/// A SQL string literal (the zone was checked against PostgreSQL's own list).
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}
