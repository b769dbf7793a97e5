//! The runs table's shape, read from the catalog before every task: schemas on which a
//! plain `DELETE` of the eligible rows would take other rows with it are refused, with a
//! message that says why; harmless variations are accepted.

use std::time::Duration;

use serde_json::json;

use crate::runs_safety::{count, database};
use test_support::*;

const RUNS: &str = "/maintenance/cleanup-runs";

async fn refusal(setup: &str) -> String {
    let (runs, _pool) = database(setup).await;
    let broker = TestBroker::create().await;
    build_worker(&broker, &[runs_database_flag(runs.url())])
        .await
        .err()
        .unwrap_or_else(|| panic!("the worker must refuse this table: {setup}"))
        .to_string()
}

/// A run that references another run with `ON DELETE CASCADE` (retries pointing at the
/// run they retry, say): deleting an old finished run deletes its young or running
/// children. Directly, or through other tables, the worker refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cascade_that_leads_back_into_the_runs_table_is_refused() {
    let direct = refusal(
        "CREATE TABLE runs (id bigint PRIMARY KEY, status text, finished_at timestamptz,
                            retry_of bigint REFERENCES runs (id) ON DELETE CASCADE)",
    )
    .await;
    assert!(direct.contains("cascades back into"), "{direct}");
    assert!(direct.contains("runs_retry_of_fkey"), "{direct}");

    let indirect = refusal(
        "CREATE TABLE runs (id bigint PRIMARY KEY, status text, finished_at timestamptz);
         CREATE TABLE pipelines (id bigint PRIMARY KEY,
                                 first_run bigint REFERENCES runs (id) ON DELETE CASCADE);
         ALTER TABLE runs ADD COLUMN pipeline bigint
             REFERENCES pipelines (id) ON DELETE CASCADE;",
    )
    .await;
    assert!(
        indirect.contains("pipelines (pipelines_first_run_fkey) -> runs (runs_pipeline_fkey)"),
        "{indirect}"
    );

    // ON DELETE SET NULL on the same reference deletes nothing else: accepted.
    let (runs, _pool) = database(
        "CREATE TABLE runs (id bigint PRIMARY KEY, status text, finished_at timestamptz,
                            retry_of bigint REFERENCES runs (id) ON DELETE SET NULL)",
    )
    .await;
    let broker = TestBroker::create().await;
    let worker = build_worker(&broker, &[runs_database_flag(runs.url())]).await;
    assert!(worker.is_ok(), "{:?}", worker.err());
}

/// Rules that rewrite the `DELETE`, and relations that are not tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_rule_or_a_view_is_refused() {
    let rule = refusal(
        "CREATE TABLE runs (id bigint PRIMARY KEY, status text, finished_at timestamptz);
         CREATE TABLE audit (id bigint);
         CREATE RULE keep_audit AS ON DELETE TO runs DO ALSO DELETE FROM audit;",
    )
    .await;
    assert!(rule.contains("rule on DELETE (keep_audit)"), "{rule}");

    let view = refusal(
        "CREATE TABLE all_runs (id bigint PRIMARY KEY, status text, finished_at timestamptz);
         CREATE VIEW runs AS SELECT * FROM all_runs;",
    )
    .await;
    assert!(view.contains("is a view"), "{view}");
}

/// A unique index that failed to build (`CREATE UNIQUE INDEX CONCURRENTLY` over duplicate
/// ids leaves it invalid) guarantees nothing; a timestamp column with a precision is
/// still a timestamp column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_unique_index_is_no_key_and_a_precision_is_no_obstacle() {
    let (runs, pool) = database(
        "CREATE TABLE runs (id bigint NOT NULL, status text, finished_at timestamptz(3));
         INSERT INTO runs VALUES (1, 'succeeded', now() - interval '10 days'), (1, 'running', now());",
    )
    .await;
    let failed = sqlx::query("CREATE UNIQUE INDEX CONCURRENTLY runs_id ON runs (id)")
        .execute(&pool)
        .await;
    assert!(failed.is_err(), "duplicate ids must make the index fail");
    let broker = TestBroker::create().await;
    let error = build_worker(&broker, &[runs_database_flag(runs.url())])
        .await
        .err()
        .expect("an invalid index is not a key");
    assert!(
        error.to_string().contains("does not identify one row"),
        "{error}"
    );

    let (precise, _pool) = database(
        "CREATE TABLE runs (id bigint PRIMARY KEY, status text, finished_at timestamptz(3))",
    )
    .await;
    let worker = build_worker(&broker, &[runs_database_flag(precise.url())]).await;
    assert!(worker.is_ok(), "{:?}", worker.err());
}

/// The table is read again before every task: a cascade added after the worker started
/// is refused before it can take a running run with an old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_change_after_start_up_is_seen_by_the_next_task() {
    let (runs, pool) = database(
        "CREATE TABLE runs (id bigint PRIMARY KEY, status text NOT NULL,
                            finished_at timestamptz, retry_of bigint);
         INSERT INTO runs VALUES (1, 'failed', now() - interval '10 days', NULL),
                                 (2, 'running', now(), 1);",
    )
    .await;
    let stack = Stack::start().await;
    let app = &stack.app;
    let worker = stack.worker(&[runs_database_flag(runs.url())]).await;
    let id = enqueue(app, RUNS, json!({"max_age_hours": 24, "dry_run": true})).await;
    let task = wait_for(app, &id, DONE, Duration::from_secs(30)).await;
    assert_eq!(task["result"]["runs_matched"], 1, "{task}");

    sqlx::query(
        "ALTER TABLE runs ADD FOREIGN KEY (retry_of) REFERENCES runs (id) ON DELETE CASCADE",
    )
    .execute(&pool)
    .await
    .unwrap();
    let task = stack.run(RUNS, json!({"max_age_hours": 24})).await;
    assert_eq!(task["status"], "failed", "{task}");
    assert_eq!(task["error"]["class"], "permanent", "{task}");
    let message = task["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("cascades back into"), "{task}");
    assert_eq!(
        count(&pool, "SELECT count(*) FROM runs").await,
        2,
        "the running run went with the old one"
    );
    worker.stop().await;
    stack.stop().await;
}

/// Tables whose `DELETE` reaches rows a batch does not count: inheritance children (the
/// parent's key does not hold across them), a single partition configured alone (its
/// siblings' cascades are not seen), and an id that may be NULL (such rows are never
/// matched by key, and a batch of them deletes nothing forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_whose_delete_reaches_rows_a_batch_does_not_count_are_refused() {
    let inherited = refusal(
        "CREATE TABLE runs (id bigint PRIMARY KEY, status text, finished_at timestamptz);
         CREATE TABLE runs_archive () INHERITS (runs);",
    )
    .await;
    assert!(
        inherited.contains("has inheritance children"),
        "{inherited}"
    );

    let partition = refusal(
        "CREATE TABLE all_runs (id bigint, status text, finished_at timestamptz NOT NULL,
                                PRIMARY KEY (id, finished_at)) PARTITION BY RANGE (finished_at);
         CREATE TABLE runs PARTITION OF all_runs FOR VALUES FROM ('2000-01-01') TO ('2100-01-01');",
    )
    .await;
    assert!(partition.contains("is a partition"), "{partition}");

    let nullable =
        refusal("CREATE TABLE runs (id bigint UNIQUE, status text, finished_at timestamptz)").await;
    assert!(nullable.contains("may be NULL"), "{nullable}");
}

/// The progress table (each task's count, committed with its rows) is created beside the
/// runs table when missing. A worker that may not create it, or whose
/// RUNS_PROGRESS_TABLE names a table of another shape, refuses to start and prints the
/// definition to create.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_progress_table_is_created_or_its_absence_explained() {
    let (runs, pool) = database(
        "CREATE SCHEMA app;
         CREATE TABLE app.runs (id bigint PRIMARY KEY, status text, finished_at timestamptz);
         CREATE TABLE app.run_logs (id bigint PRIMARY KEY, line text);
         CREATE TABLE app.counts (task_id uuid, runs_deleted bigint, finished_at timestamptz,
                                  updated_at timestamptz);",
    )
    .await;
    let broker = TestBroker::create().await;
    let url = runs_database_flag(runs.url());

    let shaped = build_worker(
        &broker,
        &[
            url.clone(),
            "--runs-table=app.runs".into(),
            "--runs-progress-table=app.run_logs".into(),
        ],
    )
    .await
    .err()
    .expect("a table of another shape must be refused")
    .to_string();
    assert!(shaped.contains("is not a progress table"), "{shaped}");
    // The right columns, but no unique key for the upsert every batch makes.
    let unkeyed = build_worker(
        &broker,
        &[
            url.clone(),
            "--runs-table=app.runs".into(),
            "--runs-progress-table=app.counts".into(),
        ],
    )
    .await
    .err()
    .expect("a progress table without a key on task_id must be refused")
    .to_string();
    assert!(unkeyed.contains("no unique key on task_id"), "{unkeyed}");
    assert!(
        shaped.contains("CREATE TABLE IF NOT EXISTS \"app\".\"run_logs\""),
        "{shaped}"
    );

    // A login that may read and delete runs, but not create tables (PostgreSQL 15 and
    // later grant no CREATE on a schema to others by default).
    let role = format!("test_reader_{}", uuid::Uuid::new_v4().simple());
    sqlx::raw_sql(&format!(
        "CREATE ROLE {role} LOGIN PASSWORD 'pw';
         GRANT USAGE ON SCHEMA app TO {role};
         GRANT SELECT, DELETE ON app.runs TO {role};"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let host = runs
        .url()
        .rsplit_once('@')
        .map(|(_, host)| host.to_owned())
        .unwrap();
    let refused = build_worker(
        &broker,
        &[
            runs_database_flag(format!("postgres://{role}:pw@{host}")),
            "--runs-table=app.runs".into(),
        ],
    )
    .await
    .err()
    .map(|e| e.to_string());
    sqlx::raw_sql(&format!("DROP OWNED BY {role}; DROP ROLE {role};"))
        .execute(&pool)
        .await
        .unwrap();
    let refused = refused.expect("a worker that cannot create the table must refuse to start");
    assert!(refused.contains("may not create it"), "{refused}");
    assert!(
        refused.contains("CREATE TABLE IF NOT EXISTS \"app\".\"cleanup_runs_progress\""),
        "{refused}"
    );

    // The worker's own login creates it, in the runs table's schema.
    let worker = build_worker(&broker, &[url, "--runs-table=app.runs".into()]).await;
    assert!(worker.is_ok(), "{:?}", worker.err());
    assert_eq!(
        count(&pool, "SELECT count(*) FROM pg_tables WHERE schemaname = 'app' AND tablename = 'cleanup_runs_progress'").await,
        1
    );
}
