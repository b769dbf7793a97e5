//! The workers and schedules commands.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_and_schedules() {
    let runs = RunsDb::create().await;
    let stack = Stack::start().await;
    let app = &stack.app;
    let worker = stack.worker(&[runs_database_flag(runs.db.url())]).await;
    eventually(Duration::from_secs(15), "the worker is up", || async {
        ctl(app, &["workers", "list"]).await.stdout.contains(" up ")
    })
    .await;
    worker.stop().await;
    eventually(Duration::from_secs(15), "the worker stopped", || async {
        ctl(app, &["workers", "list", "--status", "stopped"])
            .await
            .stdout
            .lines()
            .count()
            == 2
    })
    .await;
    let listed = ctl(app, &["-o", "json", "workers", "list"]).await.json();
    assert_eq!(listed["items"][0]["status"], "stopped", "{listed}");
    let preview = ctl(app, &["-o", "json", "workers", "prune", "--dry-run"])
        .await
        .json();
    assert_eq!(preview["pruned"].as_array().unwrap().len(), 1, "{preview}");
    assert_eq!(preview["dry_run"], true);
    let out = ctl(app, &["workers", "prune", "--dry-run"]).await;
    assert!(
        out.stdout.contains("Would prune worker '") && out.stdout.contains("(stopped "),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("1 worker(s) would be pruned, 0 skipped (up)"),
        "{}",
        out.stdout
    );
    let out = ctl(app, &["workers", "prune"]).await;
    assert!(out.stdout.contains("1 worker(s) pruned"), "{}", out.stdout);

    let dir = tempdir();
    let file = dir.join("schedules.yaml");
    let write = |cron: &str| {
        std::fs::write(
            &file,
            format!("schedules:\n  - name: nightly\n    kind: cleanup_runs\n    params: {{max_age_hours: 720}}\n    cron: \"{cron}\"\n"),
        )
        .unwrap()
    };
    write("30 2 * * *");
    let path = file.to_str().unwrap();
    let plan = ctl(app, &["schedules", "apply", "-f", path, "--dry-run"]).await;
    assert_eq!(
        plan.stdout,
        "+ nightly (create)\nDry run: nothing was changed.\n"
    );
    let plan = ctl(
        app,
        &["-o", "json", "schedules", "apply", "-f", path, "--dry-run"],
    )
    .await;
    assert_eq!(
        plan.json()["schedules"][0]["action"],
        "create",
        "{}",
        plan.stdout
    );
    assert_eq!(
        ctl(app, &["schedules", "list"])
            .await
            .stdout
            .lines()
            .count(),
        1
    );
    assert_eq!(
        ctl(app, &["schedules", "apply", "-f", path]).await.stdout,
        "+ nightly (create)\n"
    );
    assert_eq!(
        ctl(app, &["schedules", "apply", "-f", path]).await.stdout,
        "= nightly (unchanged)\n"
    );
    write("0 3 * * *");
    let plan = ctl(app, &["schedules", "apply", "-f", path, "--dry-run"]).await;
    assert!(
        plan.stdout
            .contains("~ nightly (replace)\n    cron: \"30 2 * * *\" → \"0 3 * * *\""),
        "{}",
        plan.stdout
    );
    let get = ctl(app, &["-o", "json", "schedules", "get", "nightly"]).await;
    assert_eq!(
        get.json()["cron"],
        "30 2 * * *",
        "a dry run changes nothing"
    );

    let listed = ctl(app, &["-o", "json", "schedules", "list"]).await.json();
    assert_eq!(listed["schedules"][0]["name"], "nightly", "{listed}");
    let table = ctl(app, &["schedules", "list"]).await.stdout;
    assert!(
        table.lines().nth(1).unwrap().starts_with("nightly "),
        "{table}"
    );
    let out = ctl(app, &["schedules", "pause", "nightly"]).await;
    assert!(
        out.stdout.starts_with("Paused schedule 'nightly'"),
        "{}",
        out.stdout
    );
    let out = ctl(app, &["schedules", "resume", "nightly"]).await;
    assert!(
        out.stdout
            .starts_with("Resumed schedule 'nightly'; it fires next at 20"),
        "{}",
        out.stdout
    );
    let out = ctl(app, &["schedules", "trigger", "nightly"]).await;
    assert!(
        out.stdout.starts_with("Schedule 'nightly' fired task "),
        "{}",
        out.stdout
    );
    let out = ctl(app, &["schedules", "delete", "nightly"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = ctl(app, &["schedules", "get", "nightly"]).await;
    assert_eq!(out.code, 4, "{}", out.stderr);

    let bash = ctl(app, &["completion", "bash"]).await;
    assert!(bash.stdout.contains("_cleanupctl()"), "{}", bash.stdout);
    let version = ctl(app, &["--version"]).await;
    assert_eq!(
        version.stdout.trim(),
        format!("cleanupctl {}", env!("CARGO_PKG_VERSION"))
    );
    let _ = std::fs::remove_dir_all(&dir);
    stack.stop().await;
}
