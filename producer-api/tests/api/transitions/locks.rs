//! The relay and the recorder change the same task rows at once (a short task's success
//! comes back while its relay batch is still committing): they must take the rows' locks
//! in one order, or PostgreSQL finds a deadlock after `deadlock_timeout` (1 s) and aborts
//! one of them.

use producer_api::ledger::outbox;

use super::*;

#[tokio::test]
async fn the_relay_and_the_recorder_never_deadlock_on_the_same_tasks() {
    let db = TestDb::create().await;
    let pool = PgPool::connect(&db.url()).await.unwrap();
    MIGRATOR.run(&pool).await.unwrap();
    let kind = TaskKind::CleanupRuns;
    for round in 0..5 {
        let mut ids = Vec::new();
        for _ in 0..300 {
            ids.push(task_in(&pool, "queued", 0).await);
        }
        // The heap no longer in id order: the first half's rows move to its end.
        sqlx::query("UPDATE cleanup_tasks SET updated_at = now() WHERE id = ANY($1)")
            .bind(&ids[..150])
            .execute(&pool)
            .await
            .unwrap();
        let events: Vec<TaskSucceeded> = ids
            .iter()
            .map(|id| TaskSucceeded {
                task_id: *id,
                kind,
                attempt: 1,
                worker_id: "w".into(),
                at: Utc::now(),
                started_at: None,
                result: serde_json::json!({"runs_deleted": 0}),
            })
            .collect();
        let changes: Vec<Change> = events.iter().map(Change::Succeeded).collect();
        let mut reversed = ids.clone();
        reversed.reverse();
        let relay = async {
            let mut tx = pool.begin().await?;
            outbox::record_published(&mut tx, &[], &reversed).await?;
            tx.commit().await
        };
        let recorder = transitions::apply(&pool, &changes);
        let (relayed, recorded) = tokio::join!(relay, recorder);
        relayed.unwrap_or_else(|e| panic!("round {round}: the relay: {e}"));
        recorded.unwrap_or_else(|e| panic!("round {round}: the recorder: {e}"));
        let succeeded: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM cleanup_tasks
             WHERE id = ANY($1) AND status = 'succeeded' AND published_at IS NOT NULL",
        )
        .bind(&ids)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(succeeded, 300, "round {round}");
    }
}
