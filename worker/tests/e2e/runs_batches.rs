//! Batches that go on where the previous one stopped: the same rows go as one `DELETE`
//! of the eligible rows would remove, by either strategy, oldest first under a cap, and
//! a continuation resumes from its cursor.

use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;

use crate::runs_safety::{count, database};
use test_support::*;

const RUNS: &str = "/maintenance/cleanup-runs";

/// 300 old finished runs (ids in random order of age), 50 old running ones, 100 young
/// finished ones; with `index` (SQL, or nothing).
fn mixed(index: &str) -> String {
    format!(
        "CREATE TABLE runs (id bigint PRIMARY KEY, status text NOT NULL, finished_at timestamptz);
         {index}
         INSERT INTO runs SELECT g, (ARRAY['succeeded', 'failed', 'cancelled'])[1 + g % 3],
                                 now() - make_interval(days => 10, mins => (g * 7919) % 300)
         FROM generate_series(1, 300) g;
         INSERT INTO runs SELECT 1000 + g, 'running', now() - interval '20 days'
         FROM generate_series(1, 50) g;
         INSERT INTO runs SELECT 2000 + g, 'succeeded', now() - interval '1 hour'
         FROM generate_series(1, 100) g;",
    )
}

async fn survivors(pool: &PgPool) -> Vec<i64> {
    sqlx::query_scalar("SELECT id FROM runs ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_strategies_delete_exactly_the_eligible_rows_in_small_batches() {
    let stack = Stack::start().await;
    // An index on the timestamp alone does not serve the (timestamp, id) order whole.
    for (index, strategy) in [
        ("CREATE INDEX ON runs (finished_at, id);", "keyset"),
        ("CREATE INDEX ON runs (finished_at);", "key_range"),
        ("", "key_range"),
    ] {
        let (runs, pool) = database(&mixed(index)).await;
        let worker = stack.worker(&[runs_database_flag(runs.url())]).await;
        let dry = stack
            .run(RUNS, json!({"max_age_hours": 24, "dry_run": true}))
            .await;
        assert_eq!(dry["result"]["runs_matched"], 300, "{dry}");
        assert_eq!(dry["result"]["strategy"], strategy, "{dry}");
        let task = stack
            .run(RUNS, json!({"max_age_hours": 24, "batch_size": 7}))
            .await;
        assert_eq!(task["status"], "succeeded", "{task}");
        let result = &task["result"];
        assert_eq!(result["runs_deleted"], 300, "{task}");
        assert_eq!(result["strategy"], strategy, "{task}");
        assert!(result.get("cursor").is_none(), "{task}");
        assert!(result["batches"].as_u64().unwrap() >= 300 / 7, "{task}");
        // Measured over the batches that ran, within the run's own time.
        let longest = result["longest_batch_ms"].as_u64().unwrap();
        assert!(longest <= result["duration_ms"].as_u64().unwrap(), "{task}");
        let left = survivors(&pool).await;
        assert_eq!(left.len(), 150, "{left:?}");
        assert!(
            left.iter().all(|id| *id > 1000),
            "only running and young runs remain"
        );
        worker.stop().await;
    }
    stack.stop().await;
}

/// Without an index on the timestamp the batches walk the key, yet a cap still takes
/// the oldest rows: ids here grow as rows get older, the opposite of key order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_run_takes_the_oldest_rows_whatever_the_strategy() {
    let stack = Stack::start().await;
    for indexed in [true, false] {
        let (runs, pool) = database(&format!(
            "CREATE TABLE runs (id bigint PRIMARY KEY, status text NOT NULL, finished_at timestamptz);
             {}
             INSERT INTO runs SELECT g, 'succeeded', now() - make_interval(days => 10 + g)
             FROM generate_series(1, 40) g;",
            if indexed { "CREATE INDEX ON runs (finished_at, id);" } else { "" }
        ))
        .await;
        let worker = stack.worker(&[runs_database_flag(runs.url())]).await;
        let task = stack
            .run(
                RUNS,
                json!({"max_age_hours": 24, "max_rows": 12, "batch_size": 5}),
            )
            .await;
        assert_eq!(task["result"]["runs_deleted"], 12, "{task}");
        assert_eq!(task["result"]["capped"], true, "{task}");
        assert_eq!(
            count(&pool, "SELECT count(*) FROM runs WHERE id > 28").await,
            0,
            "the 12 oldest (ids 29..=40) go first"
        );
        assert_eq!(count(&pool, "SELECT count(*) FROM runs").await, 28);
        worker.stop().await;
    }
    stack.stop().await;
}

/// An executor of `runs (id, status, finished_at)` in `pool`, statuses `succeeded`.
pub(crate) fn executor(pool: &PgPool) -> worker::executor::runs::RunsExecutor {
    use worker::executor::runs::{RunsExecutor, RunsTable, Timeouts};
    let table = RunsTable::new(
        "runs",
        "id",
        "status",
        "finished_at",
        vec!["succeeded".into()],
        Default::default(),
    )
    .unwrap();
    let timeouts = Timeouts {
        statement: Duration::from_secs(10),
        lock: Duration::from_secs(1),
        synchronous_commit: true,
    };
    RunsExecutor::new(
        pool.clone(),
        table,
        None,
        timeouts,
        Duration::from_millis(250),
    )
}

/// A task's envelope and parameters: `max_age_hours` 24, the given batch size and cap.
pub(crate) fn task(
    dry_run: bool,
    batch_size: u32,
    max_rows: Option<u64>,
) -> (
    shared::envelope::TaskEnvelope,
    shared::tasks::CleanupRunsParams,
) {
    use shared::tasks::{CleanupRunsParams, TaskSpec};
    let params = CleanupRunsParams {
        max_age_hours: 24.0,
        dry_run,
        statuses: None,
        batch_size: Some(batch_size),
        max_rows,
        max_attempts: None,
        scope: None,
    };
    let envelope = shared::envelope::TaskEnvelope::new(
        uuid::Uuid::now_v7(),
        TaskSpec::CleanupRuns(params.clone()),
        3,
        chrono::Utc::now(),
    );
    (envelope, params)
}

/// One turn of `envelope`, run to its end.
pub(crate) async fn run_to_the_end(
    executor: &worker::executor::runs::RunsExecutor,
    envelope: &shared::envelope::TaskEnvelope,
    params: &shared::tasks::CleanupRunsParams,
) -> shared::results::RunsResult {
    use tokio_util::sync::CancellationToken;
    use worker::executor::{Checkpoint, Execution, Report};
    let outcome = executor
        .execute(
            envelope,
            params,
            &CancellationToken::new(),
            &Checkpoint::default(),
        )
        .await
        .unwrap();
    let Execution::Done(Report::Runs(result)) = outcome else {
        panic!("{outcome:?}")
    };
    result
}

/// A continuation carries the cursor of its last batch: the next turn goes on from it,
/// and counts on from the earlier turns. A cursor made in another order (the index was
/// dropped meanwhile) is not trusted: the turn starts from the beginning.
#[tokio::test]
async fn a_continuation_goes_on_from_its_cursor() {
    use shared::results::{RunsCursor, RunsResult};
    use shared::tasks::{CleanupRunsParams, TaskSpec};

    let (_runs, pool) = database(
        "CREATE TABLE runs (id bigint PRIMARY KEY, status text NOT NULL, finished_at timestamptz);
         CREATE INDEX ON runs (finished_at, id);
         INSERT INTO runs SELECT g, 'succeeded', timestamptz '2020-01-01' + make_interval(hours => g)
         FROM generate_series(1, 20) g;",
    )
    .await;
    let executor = executor(&pool);
    let params = CleanupRunsParams {
        max_age_hours: 24.0,
        dry_run: false,
        statuses: None,
        batch_size: Some(3),
        max_rows: None,
        max_attempts: None,
        scope: None,
    };
    let turn = |strategy: &str| {
        let mut envelope = shared::envelope::TaskEnvelope::new(
            uuid::Uuid::now_v7(),
            TaskSpec::CleanupRuns(params.clone()),
            3,
            chrono::Utc::now(),
        );
        // An earlier turn deleted 8 rows and stopped after the row of hour 8.
        let earlier = RunsResult {
            runs_deleted: 8,
            batches: 3,
            turns: 1,
            strategy: Some(strategy.into()),
            cursor: Some(RunsCursor {
                ts: "2020-01-01 08:00:00+00".into(),
                id: "8".into(),
            }),
            ..Default::default()
        };
        envelope.progress = Some(serde_json::to_value(earlier).unwrap());
        envelope
    };
    let envelope = turn("keyset");
    let result = run_to_the_end(&executor, &envelope, &params).await;
    assert_eq!(result.runs_deleted, 8 + 12, "{result:?}");
    assert_eq!(result.turns, 2);
    assert_eq!(result.cursor, None, "a finished result carries no cursor");
    assert_eq!(
        survivors(&pool).await,
        (1..=8).collect::<Vec<i64>>(),
        "rows behind the cursor are left to the next task"
    );

    // The same progress, but made by key_range batches: the cursor is dropped.
    let envelope = turn("key_range");
    let result = run_to_the_end(&executor, &envelope, &params).await;
    assert_eq!(result.runs_deleted, 8 + 8, "{result:?}");
    assert!(survivors(&pool).await.is_empty());
}

/// Per-project retention: with `RUNS_SCOPE_COLUMNS=project_id`, a scoped task deletes
/// only that project's eligible rows, and its dry run says exactly that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_cleanup_deletes_only_the_rows_of_its_scope() {
    let stack =
        Stack::start_with(AppOptions::with_args(&["--runs-scope-columns=project_id"])).await;
    for indexed in [true, false] {
        let (runs, pool) = database(&format!(
            "CREATE TABLE runs (id bigint PRIMARY KEY, project_id bigint NOT NULL,
                                status text NOT NULL, finished_at timestamptz);
             {}
             INSERT INTO runs SELECT g, CASE WHEN g % 2 = 0 THEN 42 ELSE 7 END, 'succeeded',
                                     now() - interval '10 days'
             FROM generate_series(1, 60) g;
             INSERT INTO runs SELECT 100 + g, 42, 'running', now() - interval '10 days'
             FROM generate_series(1, 5) g;",
            if indexed {
                "CREATE INDEX ON runs (finished_at, id);"
            } else {
                ""
            }
        ))
        .await;
        let worker = stack
            .worker(&[
                runs_database_flag(runs.url()),
                "--runs-scope-columns=project_id".into(),
            ])
            .await;
        let scoped = json!({"max_age_hours": 24, "batch_size": 4, "scope": {"project_id": "42"}});
        let mut dry = scoped.clone();
        dry["dry_run"] = true.into();
        let task = stack.run(RUNS, dry).await;
        assert_eq!(task["result"]["runs_matched"], 30, "{task}");
        let task = stack.run(RUNS, scoped).await;
        assert_eq!(task["status"], "succeeded", "{task}");
        assert_eq!(task["result"]["runs_deleted"], 30, "{task}");
        assert_eq!(
            count(&pool, "SELECT count(*) FROM runs WHERE project_id = 7").await,
            30,
            "another project's rows were deleted"
        );
        assert_eq!(
            count(&pool, "SELECT count(*) FROM runs WHERE project_id = 42").await,
            5,
            "only the running rows of project 42 remain"
        );
        // A value the column's type cannot hold fails the task for good, deleting nothing.
        let task = stack
            .run(
                RUNS,
                json!({"max_age_hours": 24, "scope": {"project_id": "x; DROP TABLE runs"}}),
            )
            .await;
        assert_eq!(task["status"], "failed", "{task}");
        assert_eq!(task["error"]["class"], "permanent", "{task}");
        assert_eq!(count(&pool, "SELECT count(*) FROM runs").await, 35);
        worker.stop().await;
    }
    stack.stop().await;
}

/// A scope column the runs table does not have stops the worker at start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_column_the_table_lacks_is_refused_at_start_up() {
    let (runs, _pool) = database(
        "CREATE TABLE runs (id bigint PRIMARY KEY, status text NOT NULL, finished_at timestamptz)",
    )
    .await;
    let broker = TestBroker::create().await;
    let error = build_worker(
        &broker,
        &[
            runs_database_flag(runs.url()),
            "--runs-scope-columns=project_id".into(),
        ],
    )
    .await
    .err()
    .expect("the worker must refuse a scope column the table lacks");
    assert!(
        error
            .to_string()
            .contains("RUNS_SCOPE_COLUMNS `project_id` is not a column"),
        "{error}"
    );
}

/// Delivery is at least once: the relay publishes a message again when the ledger
/// failed between the broker's confirm and its commit. A second copy of a capped task,
/// after the first finished or at the same time, must not delete a row more than
/// `max_rows`, and each copy's result counts every row the task deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_delivered_twice_deletes_no_more_than_once() {
    for indexed in [true, false] {
        let (_runs, pool) = database(&format!(
            "CREATE TABLE runs (id bigint PRIMARY KEY, status text NOT NULL, finished_at timestamptz);
             {}
             INSERT INTO runs SELECT g, 'succeeded', now() - make_interval(days => 10 + g)
             FROM generate_series(1, 400) g;",
            if indexed { "CREATE INDEX ON runs (finished_at, id);" } else { "" }
        ))
        .await;
        let capped = |max_rows: Option<u64>| task(false, 5, max_rows);
        let (a, b) = (executor(&pool), executor(&pool));

        // One copy after the other: the second finds the task done.
        let (envelope, params) = capped(Some(12));
        let first = run_to_the_end(&a, &envelope, &params).await;
        let second = run_to_the_end(&b, &envelope, &params).await;
        assert_eq!(count(&pool, "SELECT count(*) FROM runs").await, 388);
        assert_eq!(first.runs_deleted, 12, "{first:?}");
        assert_eq!(second.runs_deleted, 12, "{second:?}");

        // Both copies at once: the cap holds over both.
        let (envelope, params) = capped(Some(40));
        let (one, two) = tokio::join!(
            run_to_the_end(&a, &envelope, &params),
            run_to_the_end(&b, &envelope, &params)
        );
        assert_eq!(count(&pool, "SELECT count(*) FROM runs").await, 348);
        assert_eq!((one.runs_deleted, two.runs_deleted), (40, 40));

        // Uncapped, at once: whichever copy finishes first reports every row the two
        // deleted, and the other deletes nothing after that.
        let (envelope, params) = capped(None);
        let (one, two) = tokio::join!(
            run_to_the_end(&a, &envelope, &params),
            run_to_the_end(&b, &envelope, &params)
        );
        assert_eq!(count(&pool, "SELECT count(*) FROM runs").await, 0);
        assert_eq!((one.runs_deleted, two.runs_deleted), (348, 348));
    }
}

/// The progress table is the authority over the count a message carries: a database
/// crash with asynchronous commit can undo a batch the previous turn counted (its rows
/// come back, and its count with them). The task then deletes those rows again and
/// counts them once, within its cap.
#[tokio::test]
async fn the_committed_count_outranks_the_count_a_message_carries() {
    use shared::results::RunsResult;
    use shared::tasks::{CleanupRunsParams, TaskSpec};
    let (_runs, pool) = database(
        "CREATE TABLE runs (id bigint PRIMARY KEY, status text NOT NULL, finished_at timestamptz);
         INSERT INTO runs SELECT g, 'succeeded', now() - make_interval(days => 10 + g)
         FROM generate_series(1, 40) g;",
    )
    .await;
    let executor = executor(&pool);
    let params = CleanupRunsParams {
        max_age_hours: 24.0,
        dry_run: false,
        statuses: None,
        batch_size: Some(5),
        max_rows: Some(12),
        max_attempts: None,
        scope: None,
    };
    let mut envelope = shared::envelope::TaskEnvelope::new(
        uuid::Uuid::now_v7(),
        TaskSpec::CleanupRuns(params.clone()),
        3,
        chrono::Utc::now(),
    );
    // The last turn reported 12, but only 9 deletions survived the crash.
    envelope.progress = Some(
        serde_json::to_value(RunsResult {
            runs_deleted: 12,
            turns: 1,
            ..Default::default()
        })
        .unwrap(),
    );
    // Check the table first: the executor creates it.
    executor.check_at_start_up().await.unwrap();
    sqlx::raw_sql(&format!(
        "DELETE FROM runs WHERE id > 31;
         INSERT INTO cleanup_runs_progress (task_id, runs_deleted) VALUES ('{}', 9);",
        envelope.task_id
    ))
    .execute(&pool)
    .await
    .unwrap();
    let result = run_to_the_end(&executor, &envelope, &params).await;
    assert_eq!(result.runs_deleted, 12, "{result:?}");
    assert_eq!(count(&pool, "SELECT count(*) FROM runs").await, 28);
}

/// What a dry run counted is not a licence: rows that became running again or younger
/// after it are not deleted by the real run, with either strategy.
#[tokio::test]
async fn rows_changed_after_the_dry_run_are_judged_again() {
    for index in ["CREATE INDEX ON runs (finished_at, id);", ""] {
        let (_runs, pool) = database(&mixed(index)).await;
        let executor = executor(&pool);
        let run = |dry_run: bool| task(dry_run, 7, None);
        let (envelope, params) = run(true);
        let dry = run_to_the_end(&executor, &envelope, &params).await;
        // Only `succeeded` is terminal for this executor: 100 of the 300 old rows.
        assert_eq!(dry.runs_matched, 100, "{dry:?}");
        sqlx::raw_sql(
            "UPDATE runs SET status = 'running' WHERE id IN (3, 6, 9);
             UPDATE runs SET finished_at = now() WHERE id IN (12, 15);",
        )
        .execute(&pool)
        .await
        .unwrap();
        let (envelope, params) = run(false);
        let real = run_to_the_end(&executor, &envelope, &params).await;
        assert_eq!(real.runs_deleted, 95, "{index}: {real:?}");
        assert_eq!(
            count(
                &pool,
                "SELECT count(*) FROM runs WHERE id IN (3, 6, 9, 12, 15)"
            )
            .await,
            5,
            "{index}"
        );
    }
}
