//! The console's forms: a new cleanup (always a dry run first) and its dry-run page, and
//! pruning workers after a preview.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_form_always_enqueues_a_dry_run_and_says_what_is_wrong() {
    let stack = Stack::start_with(AppOptions::without_relay()).await;
    let app = &stack.app;
    let mut browser = Browser::new(app);
    browser.sign_in(TOKEN).await;
    let csrf = browser.csrf().await;

    let bad = browser
        .post(
            "/ui/new",
            &[
                ("csrf", &csrf),
                ("kind", "cleanup_runs"),
                ("max_age_hours", "0.1"),
            ],
            &[],
        )
        .await;
    assert_eq!(bad.status(), 422);
    let page = bad.text().await.unwrap();
    assert!(
        page.contains("max_age_hours") && page.contains("value=\"0.1\""),
        "the form comes back filled: {page}"
    );
    let not_a_number = browser
        .post(
            "/ui/new",
            &[("csrf", &csrf), ("max_age_hours", "forty")],
            &[],
        )
        .await;
    assert_eq!(not_a_number.status(), 422);
    assert_eq!(app.task_count().await, 0);

    // `dry_run=false` smuggled into the form changes nothing: the form makes dry runs.
    let made = browser
        .post(
            "/ui/new",
            &[
                ("csrf", &csrf),
                ("kind", "cleanup_runs"),
                ("max_age_hours", "36"),
                ("statuses", "failed"),
                ("statuses", "cancelled"),
                ("max_rows", "500"),
                ("dry_run", "false"),
            ],
            &[],
        )
        .await;
    assert_eq!(made.status(), 303);
    let location = made.headers()["location"].to_str().unwrap().to_owned();
    let id = location
        .strip_prefix("/ui/tasks/")
        .unwrap()
        .split('?')
        .next()
        .unwrap();
    let task = app.task(id).await;
    assert_eq!(task["params"]["dry_run"], true);
    assert_eq!(task["params"]["statuses"], json!(["failed", "cancelled"]));
    assert_eq!(task["params"]["max_rows"], 500);
    assert_eq!(task["params"]["max_age_hours"], 36.0);
    assert_eq!(task["actor"], "token-1");

    let temp = browser
        .post(
            "/ui/new",
            &[
                ("csrf", &csrf),
                ("kind", "cleanup_temp_files"),
                ("max_age_hours", "24"),
                ("root", "scratch"),
                ("patterns", "*.tmp\n\n*.log\n"),
                ("remove_empty_dirs", "true"),
            ],
            &[],
        )
        .await;
    assert_eq!(temp.status(), 303);
    let id = temp.headers()["location"].to_str().unwrap()["/ui/tasks/".len()..]
        .split('?')
        .next()
        .unwrap()
        .to_owned();
    let task: Value = app.task(&id).await;
    assert_eq!(task["kind"], "cleanup_temp_files");
    assert_eq!(task["params"]["patterns"], json!(["*.tmp", "*.log"]));
    assert_eq!(task["params"]["remove_empty_dirs"], true);
    assert_eq!(task["params"]["dry_run"], true);

    // Its page, once it succeeded: what would go, and the way to run it for real; but a
    // dry run over several roots is not offered (the real run would be refused).
    let finish = |result: Value| {
        let (pool, id) = (app.pool.clone(), id.clone());
        async move {
            sqlx::query(
                "UPDATE cleanup_tasks SET status = 'succeeded', result = $2 WHERE id = $1::uuid",
            )
            .bind(id)
            .bind(result)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    finish(
        json!({"dry_run": true, "files_matched": 2, "bytes_matched": 2048, "roots": ["scratch"],
                  "sample_paths": ["scratch/a.tmp", "scratch/<b>.tmp"]}),
    )
    .await;
    let page = browser.page(&format!("/ui/tasks/{id}")).await;
    assert!(
        page.contains("would delete 2 files (2.0 KiB)") && page.contains("Run it for real"),
        "{page}"
    );
    assert!(
        page.contains("scratch/&lt;b&gt;.tmp") && !page.contains("<b>.tmp"),
        "escaped"
    );
    let everywhere = stack
        .enqueue(
            "/maintenance/cleanup-temp-files",
            json!({"max_age_hours": 24, "dry_run": true}),
        )
        .await;
    sqlx::query("UPDATE cleanup_tasks SET status = 'succeeded', result = $2 WHERE id = $1::uuid")
        .bind(&everywhere)
        .bind(json!({"dry_run": true, "files_matched": 2, "roots": ["a", "b"]}))
        .execute(&app.pool)
        .await
        .unwrap();
    let page = browser.page(&format!("/ui/tasks/{everywhere}")).await;
    assert!(
        page.contains("several roots (a, b)") && !page.contains("Run it for real"),
        "{page}"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_workers_removes_only_what_the_preview_listed() {
    let stack = Stack::start_with(AppOptions::without_relay()).await;
    let app = &stack.app;
    let add = |id: &'static str, status: &'static str| {
        let pool = app.pool.clone();
        async move {
            sqlx::query(
                "INSERT INTO workers (id, host, version, kinds, status, started_at, last_seen_at)
                 VALUES ($1, 'node-1', '0.1.0', '{cleanup_runs}', $2, now(), now())",
            )
            .bind(id)
            .bind(status)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    add("w-stopped", "stopped").await;
    add("w-back", "stopped").await;
    add("w-up", "up").await;
    let mut browser = Browser::new(app);
    browser.sign_in(TOKEN).await;
    let preview = browser.page("/ui/workers/prune").await;
    assert!(
        preview.contains("w-stopped") && preview.contains("w-back") && !preview.contains(">w-up<"),
        "{preview}"
    );
    // Between the preview and the click, one comes back and another stops.
    sqlx::query("UPDATE workers SET status = 'up' WHERE id = 'w-back'")
        .execute(&app.pool)
        .await
        .unwrap();
    add("w-late", "stopped").await;
    let csrf = browser.csrf().await;
    let pruned = browser
        .post(
            "/ui/workers/prune",
            &[
                ("csrf", &csrf),
                ("worker", "w-stopped"),
                ("worker", "w-back"),
            ],
            &[],
        )
        .await;
    assert_eq!(pruned.status(), 303);
    assert_eq!(pruned.headers()["location"], "/ui/workers?pruned=1");
    let left: Vec<String> = sqlx::query_scalar("SELECT id FROM workers ORDER BY id")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, ["w-back", "w-late", "w-up"]);
    stack.stop().await;
}
