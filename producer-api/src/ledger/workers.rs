//! The worker registry (`workers`), kept by the recorder from heartbeats: recording
//! heartbeats and goodbyes, listing, marking silent workers `lost`, pruning.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use shared::events::{WorkerHeartbeat, WorkerStopped};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

/// A worker is `lost` after this many heartbeat periods without a heartbeat.
pub const LOST_AFTER_INTERVALS: i32 = 3;
/// How often the sweeper looks for silent workers.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct WorkerView {
    pub worker_id: String,
    pub host: String,
    pub version: String,
    pub kinds: Vec<String>,
    /// `up`, `stopped` (said goodbye) or `lost` (silent for three heartbeat periods).
    pub status: String,
    pub started_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub in_flight: i32,
    pub processed: i64,
}

/// A heartbeat: the worker is `up`. Older heartbeats than the one stored change nothing,
/// and a worker that said goodbye comes back only as a new process (a later start).
pub async fn heartbeat(conn: &mut PgConnection, e: &WorkerHeartbeat) -> Result<(), sqlx::Error> {
    let kinds: Vec<&str> = e.kinds.iter().map(|k| k.as_str()).collect();
    sqlx::query(
        "INSERT INTO workers (id, host, version, kinds, status, started_at, last_seen_at,
                              in_flight, processed, heartbeat_interval_ms)
         VALUES ($1, $2, $3, $4, 'up', $5, $6, $7, $8, $9)
         ON CONFLICT (id) DO UPDATE SET host = EXCLUDED.host, version = EXCLUDED.version,
             kinds = EXCLUDED.kinds, status = 'up', started_at = EXCLUDED.started_at,
             last_seen_at = EXCLUDED.last_seen_at,
             in_flight = EXCLUDED.in_flight, processed = EXCLUDED.processed,
             heartbeat_interval_ms = EXCLUDED.heartbeat_interval_ms
         WHERE workers.last_seen_at < EXCLUDED.last_seen_at
           AND (workers.status <> 'stopped' OR workers.started_at < EXCLUDED.started_at)",
    )
    .bind(&e.worker_id)
    .bind(&e.host)
    .bind(&e.version)
    .bind(&kinds)
    .bind(e.started_at)
    .bind(e.at)
    .bind(e.in_flight as i32)
    .bind(e.processed as i64)
    .bind(e.interval_ms.min(i32::MAX as u64) as i32)
    .execute(conn)
    .await?;
    Ok(())
}

/// A goodbye: the worker is `stopped`.
pub async fn stopped(conn: &mut PgConnection, e: &WorkerStopped) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE workers SET status = 'stopped', last_seen_at = GREATEST(last_seen_at, $2),
             in_flight = 0, processed = $3 WHERE id = $1",
    )
    .bind(&e.worker_id)
    .bind(e.at)
    .bind(e.processed as i64)
    .execute(conn)
    .await?;
    Ok(())
}

/// Mark workers silent for three heartbeat periods as `lost`; returns how many.
pub async fn sweep_lost(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE workers SET status = 'lost', in_flight = 0
         WHERE status = 'up'
           AND last_seen_at < now() - make_interval(secs => $1 * heartbeat_interval_ms / 1000.0)",
    )
    .bind(f64::from(LOST_AFTER_INTERVALS))
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

pub async fn list(pool: &PgPool, status: Option<&str>) -> Result<Vec<WorkerView>, sqlx::Error> {
    sweep_lost(pool).await?;
    sqlx::query_as(
        "SELECT id AS worker_id, host, version, kinds, status, started_at, last_seen_at,
                in_flight, processed
         FROM workers WHERE ($1::text IS NULL OR status = $1) ORDER BY id",
    )
    .bind(status)
    .fetch_all(pool)
    .await
}

/// Remove stopped and lost workers (or, in a dry run, say which would go).
/// Returns the pruned ids and how many workers were kept.
pub async fn prune(pool: &PgPool, dry_run: bool) -> Result<(Vec<String>, i64), sqlx::Error> {
    sweep_lost(pool).await?;
    let pruned: Vec<String> = if dry_run {
        sqlx::query_scalar("SELECT id FROM workers WHERE status IN ('stopped', 'lost') ORDER BY id")
            .fetch_all(pool)
            .await?
    } else {
        let mut ids: Vec<String> = sqlx::query_scalar(
            "DELETE FROM workers WHERE status IN ('stopped', 'lost') RETURNING id",
        )
        .fetch_all(pool)
        .await?;
        ids.sort();
        ids
    };
    let kept: i64 =
        sqlx::query_scalar("SELECT count(*) FROM workers WHERE status NOT IN ('stopped', 'lost')")
            .fetch_one(pool)
            .await?;
    Ok((pruned, kept))
}

/// Remove these workers if they are still stopped or lost (what a preview listed: one
/// that came back up, or was never listed, stays). Returns the ids removed.
pub async fn prune_listed(pool: &PgPool, ids: &[String]) -> Result<Vec<String>, sqlx::Error> {
    sweep_lost(pool).await?;
    let mut removed: Vec<String> = sqlx::query_scalar(
        "DELETE FROM workers WHERE id = ANY($1) AND status IN ('stopped', 'lost') RETURNING id",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    removed.sort();
    Ok(removed)
}

/// Sweep every few seconds until shutdown, so `lost` shows without anyone asking.
pub async fn run_sweeper(pool: PgPool, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
        }
        match sweep_lost(&pool).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(lost = n, "workers stopped sending heartbeats"),
            Err(error) => tracing::debug!(%error, "worker sweep failed"),
        }
    }
}
