use serde_json::Value;
use test_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_valid_token_get_401_and_store_nothing() {
    let stack = Stack::start().await;
    let app = &stack.app;
    let url = format!("{}/maintenance/cleanup-runs", app.address);

    let cases = [
        None,
        Some("Bearer wrong-token-0123456789abc".to_owned()),
        Some(format!("Basic {TOKEN}")),
        Some("Bearer".to_owned()),
    ];
    for authorization in cases {
        let mut request = app.client.post(&url).json(&runs_body());
        if let Some(value) = &authorization {
            request = request.header("Authorization", value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{authorization:?}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        assert!(response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer"));
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["status"], 401);
    }
    let response = app.get_without_token("/tasks").await;
    assert_eq!(response.status(), 401);
    assert_eq!(app.task_count().await, 0);

    // The right token, in any case of the scheme, works.
    let response = app
        .client
        .post(&url)
        .header("Authorization", format!("bearer {TOKEN}"))
        .json(&runs_body())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    stack.stop().await;
}

#[tokio::test]
async fn the_api_refuses_to_start_without_tokens_unless_auth_is_disabled() {
    use clap::Parser;
    let args = ["producer-api", "--api-tokens="];
    let config = producer_api::Config::try_parse_from(args).unwrap();
    let error = config.validate().unwrap_err().to_string();
    assert!(error.contains("no API tokens configured"), "{error}");

    let config = producer_api::Config::try_parse_from([
        "producer-api",
        "--auth-disabled",
        "--allow-unsigned-tasks",
    ])
    .unwrap();
    assert!(config.validate().is_ok());

    let config =
        producer_api::Config::try_parse_from(["producer-api", "--api-tokens=short"]).unwrap();
    assert!(config
        .validate()
        .unwrap_err()
        .to_string()
        .contains("too short"));
}

#[test]
fn a_short_token_with_multibyte_characters_is_refused_without_a_panic_or_a_leak() {
    use clap::Parser;
    // The message used to slice the token at byte 3, inside the second `é`: a panic.
    // The last one is 15 characters in 30 bytes: long enough in bytes, not in characters.
    for token in ["éé", "€€", "é", "ééééééééééééééé"] {
        let tokens = format!("--api-tokens=a-good-token-0123456789,{token}");
        let config = producer_api::Config::try_parse_from([
            "producer-api",
            &tokens,
            "--allow-unsigned-tasks",
        ])
        .unwrap();
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("too short"), "{error}");
        assert!(error.contains("#2"), "names the token by position: {error}");
        let first: String = token.chars().take(1).collect();
        assert!(!error.contains(&first), "shows no part of it: {error}");
    }
}

#[test]
fn the_api_refuses_to_start_without_task_signing_keys_unless_unsigned_tasks_are_allowed() {
    use clap::Parser;
    let config = producer_api::Config::try_parse_from([
        "producer-api",
        "--api-tokens=a-good-token-0123456789",
    ])
    .unwrap();
    let error = config.validate().unwrap_err().to_string();
    assert!(error.contains("TASK_SIGNING_KEYS"), "{error}");
    assert!(error.contains("--allow-unsigned-tasks"), "{error}");

    let with_keys = format!("--task-signing-keys={SIGNING_KEYS}");
    let config = producer_api::Config::try_parse_from([
        "producer-api",
        "--api-tokens=a-good-token-0123456789",
        &with_keys,
    ])
    .unwrap();
    assert!(config.validate().is_ok());
    let shown = format!("{config:?}");
    assert!(
        !shown.contains("new-secret"),
        "Debug shows no secret: {shown}"
    );

    let config = producer_api::Config::try_parse_from([
        "producer-api",
        "--api-tokens=a-good-token-0123456789",
        "--task-signing-keys=k1:too-short",
    ])
    .unwrap();
    let error = config.validate().unwrap_err().to_string();
    assert!(
        error.contains("too short") && !error.contains("too-short"),
        "{error}"
    );
}

const READ: &str = "grafana-secret-0123456789";
const DRY_RUN: &str = "ci-secret-0123456789abcdef";
const ENQUEUE: &str = "deploy-secret-0123456789ab";

/// Each scope on each route: allowed means the request gets past authorization (any
/// answer but 401 and 403); refused is a 403 naming the scope the route needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_scope_is_allowed_exactly_its_routes() {
    let tokens =
        format!("--api-tokens=grafana:read:{READ},ci:dry-run:{DRY_RUN},deploy:enqueue:{ENQUEUE}");
    let stack = Stack::start_with(AppOptions::with_args(&[&tokens])).await;
    let app = &stack.app;
    let dry = serde_json::json!({"max_age_hours": 24, "dry_run": true});
    let real = serde_json::json!({"max_age_hours": 24});
    let temp_dry = serde_json::json!({"max_age_hours": 24, "root": "scratch", "dry_run": true});
    let schedule = serde_json::json!({"kind": "cleanup_runs", "params": {"max_age_hours": 24},
                                      "cron": "@daily", "name": "scoped"});
    // (method, path, body, the least scope allowed)
    let routes: Vec<(reqwest::Method, &str, Option<Value>, &str)> = vec![
        (reqwest::Method::GET, "/tasks", None, "read"),
        (reqwest::Method::GET, "/workers", None, "read"),
        (reqwest::Method::GET, "/schedules", None, "read"),
        (
            reqwest::Method::POST,
            "/maintenance/cleanup-runs",
            Some(dry.clone()),
            "dry-run",
        ),
        (
            reqwest::Method::POST,
            "/maintenance/cleanup-temp-files",
            Some(temp_dry),
            "dry-run",
        ),
        (
            reqwest::Method::POST,
            "/tasks/00000000-0000-0000-0000-000000000000/run",
            None,
            "enqueue",
        ),
        (
            reqwest::Method::POST,
            "/maintenance/cleanup-runs",
            Some(real),
            "enqueue",
        ),
        (
            reqwest::Method::POST,
            "/workers/prune",
            Some(serde_json::json!({"dry_run": true})),
            "admin",
        ),
        (reqwest::Method::POST, "/schedules", Some(schedule), "admin"),
        (
            reqwest::Method::POST,
            "/schedules/none/trigger",
            None,
            "admin",
        ),
        (
            reqwest::Method::PATCH,
            "/schedules/none",
            Some(serde_json::json!({"enabled": false})),
            "admin",
        ),
        (reqwest::Method::DELETE, "/schedules/none", None, "admin"),
        (
            reqwest::Method::PUT,
            "/schedules/scoped-put",
            Some(serde_json::json!({"kind": "cleanup_runs",
            "params": {"max_age_hours": 24}, "cron": "@daily"})),
            "admin",
        ),
        (
            reqwest::Method::POST,
            "/tasks/00000000-0000-0000-0000-000000000000/retry",
            None,
            "admin",
        ),
        (
            reqwest::Method::POST,
            "/tasks/00000000-0000-0000-0000-000000000000/cancel",
            None,
            "admin",
        ),
        (
            reqwest::Method::GET,
            "/tasks/00000000-0000-0000-0000-000000000000",
            None,
            "read",
        ),
    ];
    let scopes = [
        ("read", READ),
        ("dry-run", DRY_RUN),
        ("enqueue", ENQUEUE),
        ("admin", TOKEN),
    ];
    let rank = |scope: &str| scopes.iter().position(|(s, _)| *s == scope).unwrap();
    for (method, path, body, least) in &routes {
        for (scope, secret) in scopes {
            let mut request = app
                .client
                .request(method.clone(), format!("{}{path}", app.address))
                .bearer_auth(secret);
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            if rank(scope) >= rank(least) {
                assert!(
                    status != 401 && status != 403,
                    "{scope} on {method} {path}: {status}"
                );
            } else {
                assert_eq!(status, 403, "{scope} on {method} {path}");
                let schedules: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM cleanup_schedules WHERE name = 'scoped-put'",
                )
                .fetch_one(&app.pool)
                .await
                .unwrap();
                let real_tasks: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM cleanup_tasks WHERE NOT (params->>'dry_run')::boolean",
                )
                .fetch_one(&app.pool)
                .await
                .unwrap();
                if path.ends_with("scoped-put") {
                    // Lower scopes come first: nothing may exist yet.
                    assert_eq!(schedules, 0, "a refused request stored a schedule");
                }
                if *least == "enqueue" {
                    assert_eq!(real_tasks, 0, "a refused real cleanup was stored");
                }
                let problem: Value = response.json().await.unwrap();
                assert!(
                    problem["detail"]
                        .as_str()
                        .unwrap()
                        .contains(&format!("`{least}`")),
                    "{problem}"
                );
            }
        }
    }
    stack.stop().await;
}

/// The token's name is the actor: recorded on the task, and a filter of `GET /tasks`.
/// Two Authorization headers are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_actor_is_recorded_and_two_tokens_are_refused() {
    let tokens = format!("--api-tokens=ci:dry-run:{DRY_RUN}");
    let stack = Stack::start_with(AppOptions::with_args(&[&tokens])).await;
    let app = &stack.app;
    let response = app
        .client
        .post(format!("{}/maintenance/cleanup-runs", app.address))
        .bearer_auth(DRY_RUN)
        .json(&serde_json::json!({"max_age_hours": 24, "dry_run": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let task: Value = response.json().await.unwrap();
    assert_eq!(task["actor"], "ci", "{task}");
    // One task by `token-1` (the bare admin token) too.
    assert_eq!(
        app.post("/maintenance/cleanup-runs", runs_body())
            .await
            .status(),
        202
    );
    let page: Value = app.get("/tasks?actor=ci").await.json().await.unwrap();
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{page}");
    assert_eq!(items[0]["task_id"], task["task_id"]);

    let twice = app
        .client
        .get(format!("{}/tasks", app.address))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .header("Authorization", format!("Bearer {DRY_RUN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(twice.status(), 400);
    stack.stop().await;
}
