//! Every error answer, whoever wrote it, is a problem document.

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
