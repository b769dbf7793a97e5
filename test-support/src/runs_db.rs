//! A runs database for the worker's `cleanup_runs` tasks.

use sqlx::PgPool;

use crate::db::TestDb;

/// A fresh database holding the shipped runs schema (`deploy/sql/runs-schema.sql`),
/// dropped at the end.
pub struct RunsDb {
    /// For its URL: the worker's `--runs-database-url`.
    pub db: TestDb,
    pub pool: PgPool,
}

impl RunsDb {
    /// Create the database and the schema.
    pub async fn create() -> Self {
        let db = TestDb::create().await;
        let pool = PgPool::connect(&db.url()).await.unwrap();
        sqlx::raw_sql(include_str!("../../deploy/sql/runs-schema.sql"))
            .execute(&pool)
            .await
            .unwrap();
        Self { db, pool }
    }

    /// Insert `count` runs with `status`, finished `age_hours` ago (None: not finished),
    /// each with `logs` child rows. Returns their ids.
    pub async fn insert(
        &self,
        count: i64,
        status: &str,
        age_hours: Option<f64>,
        logs: i64,
    ) -> Vec<i64> {
        let ids: Vec<i64> = sqlx::query_scalar(
            "INSERT INTO runs (status, finished_at)
             SELECT $1, CASE WHEN $2::float8 IS NULL THEN NULL
                             ELSE now() - make_interval(secs => $2::float8 * 3600) END
             FROM generate_series(1, $3) RETURNING id",
        )
        .bind(status)
        .bind(age_hours)
        .bind(count)
        .fetch_all(&self.pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO run_logs (run_id, line) SELECT r, 'log line ' || g
             FROM unnest($1::bigint[]) r, generate_series(1, $2) g",
        )
        .bind(&ids)
        .bind(logs)
        .execute(&self.pool)
        .await
        .unwrap();
        ids
    }

    /// The single number `sql` selects (`SELECT count(*) FROM runs`).
    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.unwrap()
    }
}
