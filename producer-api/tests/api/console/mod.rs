//! The operator console (`/ui`) over HTTP, as a browser with JavaScript off (or `curl`)
//! sees it: sign-in, the session cookie, pages, scopes, CSRF and cross-site refusals. The
//! browser tests (deploy/ui-tests) drive the same pages in Chromium.

use serde_json::{json, Value};
use test_support::*;

mod forms;

const READ: &str = "console-read-token-0123456789";

/// A browser without JavaScript: no redirects followed, the session cookie kept by hand.
struct Browser {
    client: reqwest::Client,
    base: String,
    cookie: Option<String>,
}

impl Browser {
    fn new(app: &TestApp) -> Self {
        Self {
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: app.address.clone(),
            cookie: None,
        }
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        let mut request = self.client.get(format!("{}{path}", self.base));
        if let Some(cookie) = &self.cookie {
            request = request.header("Cookie", cookie);
        }
        request.send().await.unwrap()
    }

    async fn page(&self, path: &str) -> String {
        let response = self.get(path).await;
        assert_eq!(response.status(), 200, "GET {path}");
        response.text().await.unwrap()
    }

    async fn post(
        &self,
        path: &str,
        form: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut request = self.client.post(format!("{}{path}", self.base)).form(form);
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("origin"))
        {
            request = request.header("Origin", &self.base);
        }
        if let Some(cookie) = &self.cookie {
            request = request.header("Cookie", cookie);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.unwrap()
    }

    /// Sign in; the `Set-Cookie` header the API answered.
    async fn sign_in(&mut self, token: &str) -> String {
        let response = self
            .post(
                "/ui/sign-in",
                &[("token", token), ("next", "/ui/tasks")],
                &[],
            )
            .await;
        assert_eq!(response.status(), 303);
        assert_eq!(response.headers()["location"], "/ui/tasks");
        let set = response.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .to_owned();
        self.cookie = Some(set.split(';').next().unwrap().to_owned());
        set
    }

    /// The CSRF token of the signed-in session, as its pages carry it.
    async fn csrf(&self) -> String {
        let page = self.page("/ui").await;
        let at = page.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
        page[at..at + 64].to_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_exchanges_the_token_for_a_session_cookie_and_signing_out_ends_it() {
    let stack = Stack::start_with(AppOptions::without_relay()).await;
    let app = &stack.app;
    let task = stack
        .enqueue(
            "/maintenance/cleanup-runs",
            json!({"max_age_hours": 48, "batch_size": 77}),
        )
        .await;
    let mut browser = Browser::new(app);

    // Signed out, every page sends the browser to sign in, and comes back after.
    let response = browser.get("/ui/tasks?status=queued").await;
    assert_eq!(response.status(), 303);
    assert_eq!(
        response.headers()["location"],
        "/ui/sign-in?next=%2Fui%2Ftasks%3Fstatus%3Dqueued"
    );
    let page = browser.page("/ui/sign-in").await;
    assert!(page.contains("type=\"password\""), "{page}");

    let wrong = browser
        .post("/ui/sign-in", &[("token", "not-a-token-0123456789")], &[])
        .await;
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    assert!(wrong.text().await.unwrap().contains("not accepted"));

    let set_cookie = browser.sign_in(TOKEN).await;
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age="] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    let cookie = browser.cookie.clone().unwrap();
    assert!(!cookie.contains(TOKEN));
    // The ledger holds no secret: the digest of the cookie's id, the token's name and a
    // MAC keyed with the token that a copy of the table cannot test guesses against.
    let id = cookie.split_once('=').unwrap().1;
    type Row = (Vec<u8>, Option<String>, Option<Vec<u8>>);
    let stored: Vec<Row> =
        sqlx::query_as("SELECT id_digest, token_name, token_mac FROM console_sessions")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(stored.len(), 1);
    let matches: bool = sqlx::query_scalar("SELECT $1 = sha256(convert_to($2, 'UTF8'))")
        .bind(&stored[0].0)
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(matches, "the id's digest, not the id");
    assert_eq!(stored[0].1.as_deref(), Some("token-1"));
    let unkeyed: bool = sqlx::query_scalar(
        "SELECT token_mac IN (sha256(convert_to($1, 'UTF8')), convert_to($1, 'UTF8'))
         FROM console_sessions",
    )
    .bind(TOKEN)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(!unkeyed, "neither the token nor its plain digest");
    assert_eq!(stored[0].2.as_ref().map(Vec::len), Some(32));

    // Every page renders on the server, readable without JavaScript.
    let tasks = browser.page("/ui/tasks").await;
    assert!(
        tasks.contains(&task[task.len() - 8..]),
        "the task is listed"
    );
    let page = browser.page(&format!("/ui/tasks/{task}")).await;
    assert!(
        page.contains(&task) && page.contains("batch size") && page.contains("77"),
        "{page}"
    );
    assert!(page.contains("Accepted from token-1"), "{page}");
    assert!(page.contains("Cancel…"), "an admin may cancel");
    for path in [
        "/ui",
        "/ui/workers",
        "/ui/schedules",
        "/ui/new",
        "/ui/new?kind=cleanup_temp_files",
    ] {
        let page = browser.page(path).await;
        assert!(
            page.contains("token-1") && page.contains("Sign out"),
            "{path}"
        );
    }
    let filtered = browser.page("/ui/tasks?kind=cleanup_temp_files").await;
    assert!(!filtered.contains(&task[task.len() - 8..]), "filtered out");
    assert_eq!(browser.get("/ui/tasks?status=nonsense").await.status(), 400);
    assert_eq!(browser.get("/ui/tasks/not-a-uuid").await.status(), 400);
    let missing = browser
        .get("/ui/tasks/00000000-0000-0000-0000-000000000000")
        .await;
    assert_eq!(missing.status(), 404);
    assert!(missing.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let headers = browser.get("/ui").await;
    let csp = headers.headers()["content-security-policy"]
        .to_str()
        .unwrap();
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );

    // Signing in again replaces the session the browser had.
    let first = browser.cookie.clone();
    browser.sign_in(TOKEN).await;
    let mut old = Browser::new(app);
    old.cookie = first;
    assert_eq!(old.get("/ui").await.status(), 303);
    assert_eq!(browser.get("/ui").await.status(), 200);

    // Signing out needs the session's CSRF token; then the cookie opens nothing.
    let refused = browser.post("/ui/sign-out", &[], &[]).await;
    assert_eq!(refused.status(), 403);
    let csrf = browser.csrf().await;
    let out = browser.post("/ui/sign-out", &[("csrf", &csrf)], &[]).await;
    assert_eq!(out.status(), 303);
    assert_eq!(browser.get("/ui").await.status(), 303);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM console_sessions")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_or_out_of_scope_post_changes_nothing() {
    let tokens = format!("--api-tokens=viewer:read:{READ}");
    let mut options = AppOptions::with_args(&[&tokens]);
    options.relay_enabled = false;
    let stack = Stack::start_with(options).await;
    let app = &stack.app;
    let task = stack
        .enqueue("/maintenance/cleanup-runs", json!({"max_age_hours": 48}))
        .await;
    let cancel = format!("/ui/tasks/{task}/cancel");
    let status = |app: &TestApp| {
        let task = task.clone();
        let pool = app.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT status FROM cleanup_tasks WHERE id = $1::uuid")
                .bind(task)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };

    // A read token sees the task but no button, and may not cancel by hand either.
    let mut reader = Browser::new(app);
    reader.sign_in(READ).await;
    let page = reader.page(&format!("/ui/tasks/{task}")).await;
    assert!(
        page.contains(&task) && !page.contains("Cancel…") && !page.contains("New cleanup"),
        "{page}"
    );
    assert_eq!(reader.get(&cancel).await.status(), 403);
    let csrf = reader.csrf().await;
    let forged = reader.post(&cancel, &[("csrf", &csrf)], &[]).await;
    assert_eq!(forged.status(), 403);
    assert!(forged.text().await.unwrap().contains("needs scope `admin`"));
    assert_eq!(reader.get("/ui/new").await.status(), 403);
    assert_eq!(
        reader
            .post("/ui/new", &[("csrf", &csrf), ("max_age_hours", "48")], &[])
            .await
            .status(),
        403
    );

    // An admin's session, without the CSRF token, with another session's, or from
    // another site, changes nothing either.
    let mut admin = Browser::new(app);
    admin.sign_in(TOKEN).await;
    let good = admin.csrf().await;
    assert_ne!(good, csrf);
    type Pairs<'a> = &'a [(&'a str, &'a str)];
    let attempts: [(Pairs, Pairs); 6] = [
        (&[], &[]),
        (&[("csrf", "")], &[]),
        (&[("csrf", &csrf)], &[]),
        (&[("csrf", &good)], &[("Origin", "http://evil.example")]),
        (&[("csrf", &good)], &[("Origin", "null")]),
        (&[("csrf", &good)], &[("Sec-Fetch-Site", "cross-site")]),
    ];
    for (form, headers) in attempts {
        let response = admin.post(&cancel, form, headers).await;
        assert_eq!(response.status(), 403, "{form:?} {headers:?}");
        assert_eq!(status(app).await, "queued");
    }
    // A cookie without a session behind it is signed out.
    let mut stranger = Browser::new(app);
    stranger.cookie = Some(format!("{}={}", producer_api::ui::COOKIE, "ab".repeat(32)));
    let response = stranger.post(&cancel, &[("csrf", &good)], &[]).await;
    assert_eq!(response.status(), 303);
    assert_eq!(status(app).await, "queued");

    // The real thing: a confirmation page, then the cancel, recorded with its actor.
    let confirm = admin.page(&cancel).await;
    assert!(confirm.contains("cancelled at once"), "{confirm}");
    let done = admin.post(&cancel, &[("csrf", &good)], &[]).await;
    assert_eq!(done.status(), 303);
    assert_eq!(
        done.headers()["location"],
        format!("/ui/tasks/{task}?done=cancelled").as_str()
    );
    assert_eq!(status(app).await, "cancelled");
    let page = admin
        .page(&format!("/ui/tasks/{task}?done=cancelled"))
        .await;
    assert!(
        page.contains("Cancel asked for by token-1") && page.contains("Retry…"),
        "{page}"
    );
    stack.stop().await;
}
