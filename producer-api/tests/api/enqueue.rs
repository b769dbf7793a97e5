use std::time::Duration;

use serde_json::{json, Value};
use shared::envelope::TaskEnvelope;
use shared::tasks::{TaskKind, TaskSpec};
use test_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_returns_202_and_publishes_exactly_one_persistent_message() {
    let stack = Stack::start().await;
    let app = &stack.app;
    let broker = &stack.broker;

    let response = app
        .post(
            "/maintenance/cleanup-runs",
            json!({"max_age_hours": 48, "statuses": ["failed"], "batch_size": 200}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    let task_id = body["task_id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/tasks/{task_id}"));
    assert_eq!(body["status"], "queued");
    assert_eq!(body["kind"], "cleanup_runs");
    assert_eq!(body["params"]["statuses"], json!(["failed"]));

    app.wait_outbox_empty(Duration::from_secs(10)).await;
    let messages = broker.drain(TaskKind::CleanupRuns).await;
    assert_eq!(messages.len(), 1, "exactly one message on the kind's queue");
    assert_eq!(broker.queue_len(TaskKind::CleanupTempFiles).await, 0);

    let message = &messages[0].delivery;
    let props = &message.properties;
    assert_eq!(props.delivery_mode(), &Some(2), "persistent");
    assert_eq!(
        props.content_type().as_ref().unwrap().as_str(),
        "application/json"
    );
    assert_eq!(props.kind().as_ref().unwrap().as_str(), "cleanup.task");
    assert_eq!(props.message_id().as_ref().unwrap().as_str(), task_id);
    assert_eq!(message.routing_key.as_str(), "cleanup_runs");
    // Signed with the first key of the ring, over the exact body.
    let trust = shared::signing::TaskTrust {
        keys: Some(key_ring()),
        allow_unsigned: false,
    };
    assert_eq!(
        trust.check(
            &message.data,
            props
                .headers()
                .as_ref()
                .map(|h| h as &dyn shared::signing::Headers)
        ),
        Ok(shared::signing::Verified::Signed {
            key_id: "test-new".into()
        })
    );

    let envelope = TaskEnvelope::from_json(&message.data).unwrap();
    assert_eq!(envelope.task_id.to_string(), task_id);
    assert_eq!(envelope.attempt, 1);
    assert_eq!(envelope.max_attempts, 3);
    assert_eq!(envelope.schema_version, 1);
    let TaskSpec::CleanupRuns(params) = &envelope.task else {
        panic!("wrong kind: {:?}", envelope.task)
    };
    assert_eq!(params.batch_size, Some(200));
    assert_eq!(
        (envelope.enqueued_at - envelope.cutoff).num_hours(),
        48,
        "cutoff is fixed at enqueue time"
    );

    // The status monitor shows the task and that it was handed to the broker.
    let shown: Value = app.get(&location).await.json().await.unwrap();
    assert_eq!(shown["task_id"], task_id.as_str());
    assert_eq!(shown["status"], "queued");
    assert!(shown["published_at"].is_string());
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temp_file_tasks_go_to_their_own_queue() {
    let stack = Stack::start().await;
    let app = &stack.app;
    let broker = &stack.broker;

    let response = app
        .post(
            "/maintenance/cleanup-temp-files",
            json!({"max_age_hours": 24, "root": "scratch", "patterns": ["*.tmp"], "max_files": 10}),
        )
        .await;
    assert_eq!(response.status(), 202);
    app.wait_outbox_empty(Duration::from_secs(10)).await;
    let messages = broker.drain(TaskKind::CleanupTempFiles).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(broker.queue_len(TaskKind::CleanupRuns).await, 0);
    let envelope = TaskEnvelope::from_json(&messages[0].delivery.data).unwrap();
    assert_eq!(envelope.task.kind(), TaskKind::CleanupTempFiles);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_task_ids_are_404_and_malformed_ids_400() {
    let stack = Stack::start().await;
    let app = &stack.app;

    let response = app.get(&format!("/tasks/{}", uuid::Uuid::now_v7())).await;
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = response.json().await.unwrap();
    assert!(problem["detail"]
        .as_str()
        .unwrap()
        .contains("no task with id"));

    let response = app.get("/tasks/not-a-uuid").await;
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_list_filters_by_kind_and_status_and_pages_with_a_cursor() {
    let stack = Stack::start_with(AppOptions::without_relay()).await;
    let app = &stack.app;

    let mut runs = Vec::new();
    for _ in 0..5 {
        let body: Value = app
            .post("/maintenance/cleanup-runs", runs_body())
            .await
            .json()
            .await
            .unwrap();
        runs.push(body["task_id"].as_str().unwrap().to_owned());
    }
    for _ in 0..2 {
        let r = app
            .post(
                "/maintenance/cleanup-temp-files",
                json!({"max_age_hours": 2}),
            )
            .await;
        assert_eq!(r.status(), 202);
    }

    // Page through the runs tasks two at a time: newest first, each exactly once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/tasks?kind=cleanup_runs&limit=2&cursor={c}"),
            None => "/tasks?kind=cleanup_runs&limit=2".to_owned(),
        };
        let page: Value = app.get(&path).await.json().await.unwrap();
        for item in page["items"].as_array().unwrap() {
            assert_eq!(item["kind"], "cleanup_runs");
            seen.push(item["task_id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    runs.reverse();
    assert_eq!(seen, runs);

    let page: Value = app.get("/tasks?status=queued").await.json().await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 7);
    let page: Value = app
        .get("/tasks?status=succeeded")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 0);

    for bad in [
        "/tasks?status=done",
        "/tasks?kind=cleanup_users",
        "/tasks?limit=0",
        "/tasks?cursor=xyz",
        "/tasks?colour=red",
    ] {
        let response = app.get(bad).await;
        assert_eq!(response.status(), 400, "{bad}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{bad}"
        );
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_openapi_answer_without_a_token() {
    let stack = Stack::start().await;
    let app = &stack.app;
    let client = reqwest::Client::new();

    let health = client
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    let url = format!("{}/readyz", app.address);
    eventually(Duration::from_secs(10), "readyz reports ready", || async {
        client.get(&url).send().await.unwrap().status() == 200
    })
    .await;
    let ready: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        ready,
        json!({"ready": true, "database": true, "broker": true})
    );

    let spec: Value = client
        .get(format!("{}/openapi.json", app.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(spec["paths"]["/maintenance/cleanup-runs"]["post"].is_object());
    assert!(spec["paths"]["/tasks/{id}"]["get"].is_object());
    assert!(spec["components"]["schemas"]["CleanupTempFilesParams"].is_object());
    assert!(spec["paths"]["/tasks/{id}/retry"]["post"].is_object());
    assert!(spec["paths"]["/schedules/{name}"]["patch"].is_object());
    // Every route behind a token lists the answers of the token check.
    let mut protected = 0;
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if operation.get("security").is_some() {
                protected += 1;
                for status in ["401", "403"] {
                    assert!(
                        operation["responses"][status].is_object(),
                        "{method} {path} does not list {status}"
                    );
                }
            }
        }
    }
    assert!(protected >= 14, "{protected} protected operations");

    let metrics = client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("cleanup_build_info"), "{metrics}");
    assert!(metrics.contains("cleanup_outbox_backlog"), "{metrics}");
    stack.stop().await;
}
