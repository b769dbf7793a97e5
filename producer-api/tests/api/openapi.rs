//! `/openapi.json` states what the server enforces (the deployment's own rules included),
//! and every error answer, whoever wrote it, is a problem document.

use serde_json::{json, Value};
use test_support::*;

async fn problem(response: reqwest::Response) -> (u16, Value, reqwest::header::HeaderMap) {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    assert_eq!(
        headers.get("content-type").map(|v| v.to_str().unwrap()),
        Some("application/problem+json"),
        "status {status}"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], json!(status));
    (status, body, headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_document_states_the_deployments_rules_and_the_server_holds_to_them() {
    let stack = Stack::start_with(AppOptions {
        extra_args: [
            "--min-age-hours=12",
            "--max-attempts-limit=7",
            "--runs-terminal-statuses=succeeded,failed",
            "--runs-scope-columns=project_id",
        ]
        .map(String::from)
        .to_vec(),
        ..AppOptions::without_relay()
    })
    .await;
    let app = &stack.app;
    let doc: Value = app
        .get_without_token("/openapi.json")
        .await
        .json()
        .await
        .unwrap();
    let schemas = &doc["components"]["schemas"];
    for name in ["CleanupRunsParams", "CleanupTempFilesParams"] {
        assert_eq!(
            schemas[name]["additionalProperties"],
            json!(false),
            "{name}"
        );
        let properties = &schemas[name]["properties"];
        assert_eq!(properties["max_age_hours"]["minimum"].as_f64(), Some(12.0));
        assert_eq!(properties["max_attempts"]["maximum"], json!(7));
    }
    let runs = &schemas["CleanupRunsParams"]["properties"];
    assert_eq!(runs["statuses"]["minItems"], json!(1));
    assert_eq!(
        runs["statuses"]["items"]["enum"],
        json!(["failed", "succeeded"])
    );
    assert_eq!(
        runs["scope"]["propertyNames"]["enum"],
        json!(["project_id"])
    );
    let limit = doc["paths"]["/tasks"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "limit")
        .unwrap();
    assert_eq!(limit["schema"]["minimum"], json!(1));
    assert_eq!(limit["schema"]["maximum"], json!(500));
    let prune = &doc["paths"]["/workers/prune"]["post"];
    for status in ["400", "401", "403", "413", "415", "422", "503"] {
        assert!(
            prune["responses"][status].is_object(),
            "prune lists {status}"
        );
    }
    assert_eq!(prune["security"], json!([{"bearer": ["admin"]}]));

    // What the document states is what the server does.
    let floor = |hours: f64| json!({"max_age_hours": hours, "dry_run": true, "statuses": ["failed"], "max_attempts": 7});
    let refused = app.post("/maintenance/cleanup-runs", floor(11.5)).await;
    let (status, body, _) = problem(refused).await;
    assert_eq!(
        (status, body["field"].clone()),
        (422, json!("max_age_hours"))
    );
    let accepted = app.post("/maintenance/cleanup-runs", floor(12.0)).await;
    assert_eq!(accepted.status(), 202);
    let eight = json!({"max_age_hours": 12, "dry_run": true, "max_attempts": 8});
    let (status, _, _) = problem(app.post("/maintenance/cleanup-runs", eight).await).await;
    assert_eq!(status, 422);
    let cancelled = json!({"max_age_hours": 12, "dry_run": true, "statuses": ["cancelled"]});
    let (status, _, _) = problem(app.post("/maintenance/cleanup-runs", cancelled).await).await;
    assert_eq!(status, 422);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_no_handler_wrote_are_problems_too() {
    let stack = Stack::start_with(AppOptions::without_relay()).await;
    let app = &stack.app;

    // A method the route does not take: 405, with the methods it takes.
    let (_, body, headers) = problem(app.send(reqwest::Method::DELETE, "/tasks", None).await).await;
    assert_eq!(
        body["type"],
        json!("urn:cleanup:problem:method-not-allowed")
    );
    assert!(
        headers["allow"].to_str().unwrap().contains("GET"),
        "{headers:?}"
    );

    // A path parameter that is not text (invalid UTF-8 once decoded): axum's rejection.
    let (status, body, _) = problem(app.get("/tasks/%FF%FE").await).await;
    assert_eq!(status, 400);
    assert_eq!(body["type"], json!("urn:cleanup:problem:bad-request"));
    assert!(!body["detail"].as_str().unwrap().is_empty());
    let (status, _, _) = problem(app.get("/schedules/%C3").await).await;
    assert_eq!(status, 400);

    // The readiness probe's 503 is its own JSON document, not replaced (only non-JSON
    // error bodies are): checked here on a 200 for its content type.
    let ready = app.get_without_token("/readyz").await;
    assert_eq!(
        ready.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_body_is_checked_like_every_json_body() {
    let stack = Stack::start_with(AppOptions::without_relay()).await;
    let app = &stack.app;
    let path = "/tasks/00000000-0000-0000-0000-000000000000/retry";
    let send = |content_type: Option<&'static str>, body: &'static str| {
        let mut request = app
            .client
            .post(format!("{}{path}", app.address))
            .bearer_auth(TOKEN)
            .body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request.send()
    };
    let json = Some("application/json");
    for (content_type, body, expected) in [
        (Some("text/plain"), r#"{"keep_cutoff": true}"#, 415),
        (None, r#"{"keep_cutoff": true}"#, 415),
        (json, r#"{"keep_cutoff": "#, 400),
        (json, "null", 422),
        (json, "[]", 422),
        (json, r#"{"keep": true}"#, 422),
        // No body at all is `{}`: the unknown task is then a 404.
        (None, "", 404),
        (json, "  ", 404),
        (json, "{}", 404),
    ] {
        let (status, body, _) = problem(send(content_type, body).await.unwrap()).await;
        assert_eq!(status, expected, "{content_type:?} {body}");
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_holding_a_nul_is_refused_before_the_ledger_sees_it() {
    let stack = Stack::start_with(AppOptions {
        extra_args: vec!["--runs-scope-columns=project_id".into()],
        ..AppOptions::without_relay()
    })
    .await;
    let app = &stack.app;
    // PostgreSQL's text and jsonb cannot hold a NUL: each of these was a 500.
    let pattern = json!({"max_age_hours": 2, "dry_run": true, "patterns": ["a\u{0}b"]});
    let (status, body, _) =
        problem(app.post("/maintenance/cleanup-temp-files", pattern).await).await;
    assert_eq!((status, body["field"].clone()), (422, json!("patterns")));
    let scope = json!({"max_age_hours": 2, "dry_run": true, "scope": {"project_id": "4\u{0}2"}});
    let (status, body, _) = problem(app.post("/maintenance/cleanup-runs", scope).await).await;
    assert_eq!((status, body["field"].clone()), (422, json!("scope")));
    let (status, _, _) = problem(app.get("/tasks?actor=a%00b").await).await;
    assert_eq!(status, 400);
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let (status, _, _) = problem(app.send(method, "/schedules/a%00b", None).await).await;
        assert_eq!(status, 404);
    }
    let (status, _, _) = problem(
        app.send(reqwest::Method::POST, "/schedules/a%00b/trigger", None)
            .await,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(app.task_count().await, 0);
    stack.stop().await;
}
