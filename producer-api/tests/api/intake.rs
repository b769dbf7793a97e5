//! Enqueues that arrive together are stored together (`producer_api::intake`), and each
//! is still answered only once its own task is committed, whatever the others do.

use std::time::Duration;

use producer_api::intake::IN_FLIGHT;
use reqwest::StatusCode;
use serde_json::{json, Value};
use test_support::*;
use tokio::task::JoinSet;

/// What one POST sent (its `max_age_hours`) and got: its status and body.
type Answer = (f64, StatusCode, Value);

/// POST `first` (one per statement the intake runs at once) while the task table is
/// locked against writes, wait until each of their statements waits on the lock, then
/// POST `rest`, which find every statement busy and queue. No request may be answered
/// while the lock is held (nothing is committed); then the lock goes and every answer
/// comes back, in no particular order: `first`'s, then `rest`'s.
async fn enqueue_while_locked(app: &TestApp, first: Vec<Value>, rest: Vec<Value>) -> Vec<Answer> {
    let mut lock = app.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE cleanup_tasks IN SHARE ROW EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let mut posts = JoinSet::new();
    let post = |posts: &mut JoinSet<Answer>, body: Value| {
        let (client, url) = (
            app.client.clone(),
            format!("{}/maintenance/cleanup-runs", app.address),
        );
        let sent = body["max_age_hours"].as_f64().unwrap();
        posts.spawn(async move {
            let response = client
                .post(url)
                .bearer_auth(TOKEN)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = response.status();
            (sent, status, response.json().await.unwrap_or(Value::Null))
        });
    };
    // One at a time, each once the one before waits: sent together, two could share a
    // statement.
    for (n, body) in first.into_iter().enumerate() {
        post(&mut posts, body);
        let waiting = n as i64 + 1;
        eventually(
            Duration::from_secs(10),
            "an enqueue to wait on the lock",
            || async {
                let blocked: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
                     JOIN pg_stat_activity a ON a.pid = l.pid
                     WHERE c.relname = 'cleanup_tasks' AND NOT l.granted
                       AND a.query LIKE '%INSERT INTO cleanup_tasks%'",
                )
                .fetch_one(&app.pool)
                .await
                .unwrap();
                blocked == waiting
            },
        )
        .await;
    }
    for body in rest {
        post(&mut posts, body);
    }
    // Time for the rest to reach the intake's queue.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(10), posts.join_next())
            .await
            .is_err(),
        "a request was answered before its task was committed"
    );
    lock.commit().await.unwrap();
    let mut answers = Vec::new();
    while let Some(answer) = posts.join_next().await {
        answers.push(answer.unwrap());
    }
    answers
}

/// `cleanup_tasks_enqueued_total` of cleanup_runs, as `/metrics` shows it.
async fn counted(app: &TestApp) -> f64 {
    let series = "cleanup_tasks_enqueued_total{kind=\"cleanup_runs\"}";
    app.metric(series).await.unwrap_or(0.0)
}

fn runs(max_age_hours: u32) -> Value {
    json!({"max_age_hours": max_age_hours, "dry_run": true})
}

/// The tasks and outbox rows stored: (task id, max_age_hours, outbox rows of the task
/// whose envelope names it, the inserting transaction).
async fn stored(app: &TestApp) -> Vec<(String, i64, i64, String)> {
    sqlx::query_as(
        "SELECT t.id::text, (t.params->>'max_age_hours')::float8::int8,
                (SELECT count(*) FROM cleanup_outbox o
                 WHERE o.task_id = t.id AND o.attempt = 1 AND o.envelope->>'task_id' = t.id::text),
                t.xmin::text
         FROM cleanup_tasks t ORDER BY t.id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueues_that_arrive_together_are_stored_together_and_answered_after_the_commit() {
    let stack = Stack::start_with(AppOptions::without_relay()).await;
    let app = &stack.app;
    let first = (1..=IN_FLIGHT as u32).map(runs).collect();
    let rest = (100..140).map(runs).collect();
    let answers = enqueue_while_locked(app, first, rest).await;

    assert_eq!(answers.len(), IN_FLIGHT + 40);
    let mut answered: Vec<(String, i64)> = answers
        .iter()
        .map(|(sent, status, body)| {
            assert_eq!(*status, StatusCode::ACCEPTED, "{body}");
            // Each caller is answered with its own task.
            assert_eq!(
                body["params"]["max_age_hours"].as_f64(),
                Some(*sent),
                "{body}"
            );
            (
                body["task_id"].as_str().unwrap().to_owned(),
                body["params"]["max_age_hours"].as_f64().unwrap() as i64,
            )
        })
        .collect();
    answered.sort();
    let rows = stored(app).await;
    // Each caller got its own task, stored with its own parameters and one outbox message.
    let as_stored: Vec<(String, i64)> = rows.iter().map(|r| (r.0.clone(), r.1)).collect();
    assert_eq!(as_stored, answered);
    assert!(
        rows.iter().all(|r| r.2 == 1),
        "one outbox message per task: {rows:?}"
    );
    let mut ages: Vec<i64> = as_stored.iter().map(|r| r.1).collect();
    ages.sort();
    let mut asked: Vec<i64> = (1..=IN_FLIGHT as i64).chain(100..140).collect();
    asked.sort();
    assert_eq!(ages, asked, "every request stored once");
    // Whether stored alone or together, every task is counted.
    assert_eq!(counted(app).await, (IN_FLIGHT + 40) as f64);
    // The 40 that queued behind the lock went in far fewer statements than tasks.
    let mut transactions: Vec<&String> = rows.iter().map(|r| &r.3).collect();
    transactions.sort();
    transactions.dedup();
    assert!(
        transactions.len() <= IN_FLIGHT + 4,
        "{} transactions for {} tasks",
        transactions.len(),
        rows.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_fails_to_store_fails_no_other_task_of_its_batch() {
    let stack = Stack::start_with(AppOptions::without_relay()).await;
    let app = &stack.app;
    // A task with max_age_hours 13 cannot be stored: its statement fails.
    sqlx::raw_sql(
        "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF (NEW.params->>'max_age_hours')::float8 = 13 THEN RAISE EXCEPTION 'poisoned task'; END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER poison BEFORE INSERT ON cleanup_tasks
             FOR EACH ROW EXECUTE FUNCTION poison();",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let first = (1..=IN_FLIGHT as u32).map(runs).collect();
    let mut rest: Vec<Value> = (100..120).map(runs).collect();
    rest.insert(10, runs(13));
    let answers = enqueue_while_locked(app, first, rest).await;

    let failed: Vec<&Answer> = answers
        .iter()
        .filter(|(_, s, _)| *s != StatusCode::ACCEPTED)
        .collect();
    assert_eq!(failed.len(), 1, "only the poisoned task fails: {failed:?}");
    assert_eq!(
        (failed[0].0, failed[0].1),
        (13.0, StatusCode::INTERNAL_SERVER_ERROR)
    );
    let rows = stored(app).await;
    assert_eq!(rows.len(), IN_FLIGHT + 20, "every other task is stored");
    assert!(rows.iter().all(|r| r.1 != 13 && r.2 == 1), "{rows:?}");
    // Those stored one by one after the batch failed are counted too.
    assert_eq!(counted(app).await, (IN_FLIGHT + 20) as f64);
}
