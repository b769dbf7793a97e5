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
