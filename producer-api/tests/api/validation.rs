use std::time::Duration;

use serde_json::Value;
use shared::tasks::TaskKind;
use test_support::*;

/// Send a raw body and return status and problem document.
async fn send_raw(
    app: &TestApp,
    path: &str,
    content_type: Option<&str>,
    body: String,
) -> (u16, Value) {
    let mut request = app
        .client
        .post(format!("{}{path}", app.address))
        .bearer_auth(TOKEN)
        .body(body);
    if let Some(ct) = content_type {
        request = request.header("content-type", ct);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap()),
        Some("application/problem+json"),
        "problem+json for {path} (status {status})"
    );
    (status, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_problem_and_leaves_no_row_and_no_message() {
    let stack = Stack::start().await;
    let app = &stack.app;
    let broker = &stack.broker;
    let json = Some("application/json");
    let runs = "/maintenance/cleanup-runs";
    let temp = "/maintenance/cleanup-temp-files";

    // (path, content type, body, expected status, text the detail must contain)
    let cases: Vec<(&str, Option<&str>, String, u16, &str)> = vec![
        (
            runs,
            json,
            "{\"max_age_hours\": 48".into(),
            400,
            "malformed JSON",
        ),
        (runs, json, "not json".into(), 400, "malformed JSON"),
        (runs, json, "[]".into(), 422, "must be a JSON object"),
        (
            runs,
            json,
            "[48, true, null, null, null]".into(),
            422,
            "must be a JSON object",
        ),
        (
            runs,
            json,
            r#"{"max_age_hours": "48"}"#.into(),
            422,
            "max_age_hours: invalid type",
        ),
        (
            runs,
            json,
            r#"{"max_age_hours": 48, "dry_run": "yes"}"#.into(),
            422,
            "dry_run: invalid type",
        ),
        (
            runs,
            json,
            r#"{"max_age_hours": 48, "table": "users"}"#.into(),
            422,
            "unknown field `table`",
        ),
        (
            temp,
            json,
            r#"{"max_age_hours": 48, "path": "/etc"}"#.into(),
            422,
            "unknown field `path`",
        ),
        (
            runs,
            json,
            "{}".into(),
            422,
            "missing field `max_age_hours`",
        ),
        (
            runs,
            json,
            r#"{"max_age_hours": 0}"#.into(),
            422,
            "greater than 0",
        ),
        (
            runs,
            json,
            r#"{"max_age_hours": -5}"#.into(),
            422,
            "greater than 0",
        ),
        (
            runs,
            json,
            r#"{"max_age_hours": 0.25}"#.into(),
            422,
            "minimum age floor",
        ),
        (
            runs,
            json,
            r#"{"max_age_hours": 48, "batch_size": 0}"#.into(),
            422,
            "batch_size",
        ),
        (
            runs,
            json,
            r#"{"max_age_hours": 48, "batch_size": 99999}"#.into(),
            422,
            "batch_size",
        ),
        (
            runs,
            json,
            r#"{"max_age_hours": 48, "statuses": ["running"]}"#.into(),
            422,
            "not a terminal status",
        ),
        (
            temp,
            json,
            r#"{"max_age_hours": 48, "root": "../etc"}"#.into(),
            422,
            "not a root name",
        ),
        (
            temp,
            json,
            r#"{"max_age_hours": 48, "patterns": ["/abs/*"]}"#.into(),
            422,
            "absolute",
        ),
        (
            temp,
            json,
            r#"{"max_age_hours": 48, "max_files": 0}"#.into(),
            422,
            "max_files",
        ),
        (
            runs,
            None,
            r#"{"max_age_hours": 48}"#.into(),
            415,
            "Content-Type: application/json",
        ),
        (
            runs,
            Some("text/plain"),
            r#"{"max_age_hours": 48}"#.into(),
            415,
            "Content-Type: application/json",
        ),
        (
            runs,
            json,
            format!(
                r#"{{"max_age_hours": 48, "statuses": ["{}"]}}"#,
                "x".repeat(4096)
            ),
            413,
            "larger than the limit",
        ),
    ];
    for (path, content_type, body, expected, detail) in cases {
        let (status, problem) = send_raw(app, path, content_type, body.clone()).await;
        let shown = &body[..body.len().min(60)];
        assert_eq!(status, expected, "{shown}: {problem}");
        assert_eq!(problem["status"], expected, "{shown}");
        assert!(problem["type"]
            .as_str()
            .unwrap()
            .starts_with("urn:cleanup:problem:"));
        let text = problem["detail"].as_str().unwrap();
        assert!(
            text.contains(detail),
            "{shown}: detail `{text}` lacks `{detail}`"
        );
    }

    // Give a (wrongly) woken relay time to publish anything, then check nothing exists.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.task_count().await, 0);
    assert_eq!(app.outbox_len().await, 0);
    assert_eq!(broker.queue_len(TaskKind::CleanupRuns).await, 0);
    assert_eq!(broker.queue_len(TaskKind::CleanupTempFiles).await, 0);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_are_problem_404s() {
    let stack = Stack::start().await;
    let app = &stack.app;
    let (status, problem) = send_raw(
        app,
        "/maintenance/cleanup-users",
        Some("application/json"),
        "{}".into(),
    )
    .await;
    assert_eq!(status, 404);
    assert!(problem["detail"]
        .as_str()
        .unwrap()
        .contains("/maintenance/cleanup-users"));
    stack.stop().await;
}

/// A scope names only the columns the deployment allows (RUNS_SCOPE_COLUMNS); anything
/// else is a 422 naming the field and what is allowed, and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_outside_runs_scope_columns_is_refused() {
    let runs = "/maintenance/cleanup-runs";
    let json = Some("application/json");
    for (args, body, detail) in [
        (
            &["--runs-scope-columns=project_id,pipeline"][..],
            r#"{"max_age_hours": 48, "scope": {"tenant": "acme"}}"#,
            "`tenant` is not a scope column; allowed: pipeline, project_id",
        ),
        (
            &[][..],
            r#"{"max_age_hours": 48, "scope": {"project_id": "42"}}"#,
            "this deployment allows none",
        ),
        (
            &["--runs-scope-columns=project_id"][..],
            r#"{"max_age_hours": 48, "scope": {}}"#,
            "must name at least one column",
        ),
    ] {
        let stack = Stack::start_with(AppOptions::with_args(args)).await;
        let (status, problem) = send_raw(&stack.app, runs, json, body.into()).await;
        assert_eq!(status, 422, "{body}: {problem}");
        assert_eq!(problem["field"], "scope", "{problem}");
        let text = problem["detail"].as_str().unwrap();
        assert!(text.contains(detail), "{body}: `{text}` lacks `{detail}`");
        assert_eq!(stack.app.task_count().await, 0);
        stack.stop().await;
    }
    // An allowed scope is accepted.
    let stack =
        Stack::start_with(AppOptions::with_args(&["--runs-scope-columns=project_id"])).await;
    let response = stack
        .app
        .post(
            runs,
            serde_json::json!({"max_age_hours": 48, "scope": {"project_id": "42"}}),
        )
        .await;
    assert_eq!(response.status(), 202);
    stack.stop().await;
}
