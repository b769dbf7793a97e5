//! A batch of changes ends as applying them one by one would leave it.

use super::*;

/// A batch of many successes, some alone and some with other changes of their task: the
/// lone ones go in one statement, the others in order; every task ends as applying the
/// changes one by one would leave it.
#[tokio::test]
async fn a_batch_of_successes_ends_as_applying_them_one_by_one() {
    let db = TestDb::create().await;
    let pool = PgPool::connect(&db.url()).await.unwrap();
    MIGRATOR.run(&pool).await.unwrap();
    let kind = TaskKind::CleanupRuns;
    let success = |task_id, attempt| TaskSucceeded {
        task_id,
        kind,
        attempt,
        worker_id: format!("w-{attempt}"),
        at: Utc::now(),
        started_at: None,
        result: serde_json::json!({"runs_deleted": attempt}),
    };
    // Alone: 20 queued tasks succeed; one already succeeded (a duplicate changes nothing);
    // one was cancelled while queued (its first report is recorded).
    let mut lone = Vec::new();
    for _ in 0..20 {
        lone.push(task_in(&pool, "queued", 0).await);
    }
    let finished = task_in(&pool, "succeeded", 1).await;
    let cancelled = task_in(&pool, "cancelled", 0).await;
    // Not alone: a success and a later dead letter of the same task (the success was
    // first: it stays); two successes of one task (the first finishes it).
    let then_dead = task_in(&pool, "running", 1).await;
    let twice = task_in(&pool, "running", 1).await;
    let mut events: Vec<TaskSucceeded> = lone.iter().map(|id| success(*id, 1)).collect();
    events.push(success(finished, 2));
    events.push(success(cancelled, 1));
    events.push(success(then_dead, 1));
    events.push(success(twice, 1));
    events.push(success(twice, 2));
    let mut changes: Vec<Change> = events.iter().map(Change::Succeeded).collect();
    changes.push(Change::DeadLettered {
        task_id: then_dead,
        attempt: Some(1),
        reason: "dead-lettered",
    });
    transitions::apply(&pool, &changes).await.unwrap();
    let state = |id: Uuid| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (String, i32, Option<String>)>(
                "SELECT status, attempts, worker_id FROM cleanup_tasks WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    for id in &lone {
        assert_eq!(
            state(*id).await,
            ("succeeded".into(), 1, Some("w-1".into()))
        );
    }
    assert_eq!(
        state(finished).await,
        ("succeeded".into(), 1, None),
        "finished: untouched"
    );
    assert_eq!(
        state(cancelled).await,
        ("succeeded".into(), 1, Some("w-1".into()))
    );
    assert_eq!(
        state(then_dead).await,
        ("succeeded".into(), 1, Some("w-1".into()))
    );
    assert_eq!(
        state(twice).await,
        ("succeeded".into(), 1, Some("w-1".into()))
    );
}
