use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rustix::fs::{AtFlags, Timespec, Timestamps, CWD};
use serde_json::json;
use test_support::*;

const TEMP: &str = "/maintenance/cleanup-temp-files";

/// Set the mtime of `path` (not following a symlink) to `hours` ago.
fn age(path: &Path, hours: f64) {
    let when = SystemTime::now() - Duration::from_secs_f64(hours * 3600.0);
    let since = when.duration_since(SystemTime::UNIX_EPOCH).unwrap();
    let ts = Timespec {
        tv_sec: since.as_secs() as _,
        tv_nsec: since.subsec_nanos() as _,
    };
    rustix::fs::utimensat(
        CWD,
        path,
        &Timestamps {
            last_access: ts,
            last_modification: ts,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// A file of `size` bytes, last modified `hours` ago.
fn file(path: &Path, size: usize, hours: f64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, vec![b'x'; size]).unwrap();
    age(path, hours);
}

/// Every entry below `root` (relative paths; directories end with `/`), never following links.
fn tree(root: &Path) -> BTreeSet<String> {
    fn visit(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                out.insert(format!("{rel}/"));
                visit(root, &path, out);
            } else {
                out.insert(rel);
            }
        }
    }
    let mut out = BTreeSet::new();
    visit(root, root, &mut out);
    out
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_predicts_exactly_what_the_real_run_deletes_and_deletes_nothing() {
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path();
    file(&root.join("old.tmp"), 100, 30.0);
    file(&root.join("old.log"), 50, 30.0);
    file(&root.join("young.tmp"), 10, 1.5);
    file(&root.join("cache/a/old1.tmp"), 1000, 48.0);
    file(&root.join("cache/a/old2.tmp"), 1000, 48.0);
    file(&root.join("cache/b/young.tmp"), 7, 0.5);
    file(&root.join("keep/old.dat"), 5, 100.0);
    age(&root.join("cache/a"), 48.0);

    let stack = Stack::start().await;
    let worker = stack.worker(&[temp_root_flag("scratch", root)]).await;
    let before = tree(root);

    let body = json!({"max_age_hours": 24, "root": "scratch", "patterns": ["*.tmp", "keep/*"], "remove_empty_dirs": true});
    let mut dry_body = body.clone();
    dry_body["dry_run"] = json!(true);
    let dry = stack.run(TEMP, dry_body).await;
    assert_eq!(dry["status"], "succeeded", "{dry}");
    assert_eq!(tree(root), before, "a dry run deletes nothing");
    let predicted = &dry["result"];
    assert_eq!(predicted["files_matched"], 4, "{predicted}");
    assert_eq!(predicted["bytes_matched"], 100 + 1000 + 1000 + 5);
    assert_eq!(predicted["files_deleted"], 0);
    assert_eq!(predicted["bytes_freed"], 0);
    assert_eq!(
        predicted["dirs_matched"], 2,
        "cache/a and keep would be left empty"
    );
    assert_eq!(predicted["dirs_removed"], 0);

    let real = stack.run(TEMP, body).await;
    assert_eq!(real["status"], "succeeded", "{real}");
    let result = &real["result"];
    assert_eq!(result["files_deleted"], predicted["files_matched"]);
    assert_eq!(result["bytes_freed"], predicted["bytes_matched"]);
    assert_eq!(result["dirs_removed"], predicted["dirs_matched"]);
    assert_eq!(result["errors_total"], 0, "{result}");
    assert_eq!(
        tree(root),
        set(&[
            "old.log",
            "young.tmp",
            "cache/",
            "cache/b/",
            "cache/b/young.tmp"
        ]),
        "only old files matching the patterns, and the directories they left empty, are gone"
    );
    let metrics = worker.metrics().await;
    assert!(
        metrics.contains("cleanup_files_deleted_total{root=\"scratch\"} 4"),
        "{metrics}"
    );
    worker.stop().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_are_judged_as_links_and_their_targets_never_touched() {
    let scratch = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let root = scratch.path().join("root");
    std::fs::create_dir(&root).unwrap();
    // Outside the root: an old file and an old directory full of old files.
    file(&outside.path().join("precious.txt"), 10, 500.0);
    file(&outside.path().join("dir/deep/precious.bin"), 10, 500.0);
    age(&outside.path().join("dir"), 500.0);
    // Inside: old symlinks to both, and a young symlink.
    std::os::unix::fs::symlink(
        outside.path().join("precious.txt"),
        root.join("link-to-file"),
    )
    .unwrap();
    std::os::unix::fs::symlink(outside.path().join("dir"), root.join("link-to-dir")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("dir"), root.join("young-link")).unwrap();
    age(&root.join("link-to-file"), 100.0);
    age(&root.join("link-to-dir"), 100.0);
    file(&root.join("old.tmp"), 3, 100.0);
    let outside_before = tree(outside.path());

    let stack = Stack::start().await;
    let worker = stack.worker(&[temp_root_flag("scratch", &root)]).await;
    let task = stack
        .run(
            TEMP,
            json!({"max_age_hours": 24, "remove_empty_dirs": true}),
        )
        .await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(
        task["result"]["files_deleted"], 3,
        "two old links and one old file: {task}"
    );

    assert_eq!(
        tree(outside.path()),
        outside_before,
        "nothing outside the root changed"
    );
    assert!(outside.path().join("precious.txt").exists());
    assert!(outside.path().join("dir/deep/precious.bin").exists());
    assert_eq!(tree(&root), set(&["young-link"]));
    assert!(root.exists(), "the root itself is never removed");
    worker.stop().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_root_fails_the_task_permanently_with_a_clear_error() {
    let scratch = tempfile::tempdir().unwrap();
    file(&scratch.path().join("old.tmp"), 1, 100.0);
    let stack = Stack::start().await;
    let worker = stack
        .worker(&[temp_root_flag("scratch", scratch.path())])
        .await;
    let task = stack
        .run(TEMP, json!({"max_age_hours": 24, "root": "uploads"}))
        .await;
    assert_eq!(task["status"], "failed", "{task}");
    assert_eq!(task["attempts"], 1);
    assert_eq!(task["error"]["class"], "permanent");
    assert_eq!(
        task["error"]["message"],
        "unknown temp root `uploads`; this worker knows: scratch"
    );
    assert!(scratch.path().join("old.tmp").exists());
    worker.stop().await;
    stack.stop().await;
}

/// `max_files` over two roots, one of which cannot be opened, so attempts fail as
/// transient and are retried through the ledger. However many attempts run, no more than
/// `max_files` go, and the result of the attempt that finally succeeds counts them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_files_holds_over_every_attempt_and_the_result_counts_them_all() {
    let scratch = tempfile::tempdir().unwrap();
    let (a, b) = (scratch.path().join("a"), scratch.path().join("b"));
    for i in 0..10 {
        file(&a.join(format!("jobs/{i:02}.tmp")), 10, 100.0);
    }
    std::fs::create_dir(&b).unwrap();
    let stack = Stack::start().await;
    let app = &stack.app;
    let worker = stack
        .worker(&[format!("--temp-roots=a={},b={}", a.display(), b.display())])
        .await;
    // The volume of root `b` goes away after start-up.
    let away = scratch.path().join("b-away");
    std::fs::rename(&b, &away).unwrap();
    let id = enqueue(
        app,
        TEMP,
        json!({"max_age_hours": 24, "max_files": 4, "max_attempts": 3}),
    )
    .await;
    // Two attempts fail on `b`; then `b` is back for the third.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let task: serde_json::Value = app.task(&id).await;
        if task["status"] == "retrying" && task["attempts"] == 2 {
            assert_eq!(task["error"]["class"], "transient", "{task}");
            assert!(
                task["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("cannot be opened"),
                "{task}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no second failed attempt: {task}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::rename(&away, &b).unwrap();
    let task = wait_for(app, &id, DONE, Duration::from_secs(30)).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(task["attempts"], 3, "{task}");
    let left = std::fs::read_dir(a.join("jobs")).unwrap().count();
    assert_eq!(
        left, 6,
        "more than max_files were deleted over the attempts: {task}"
    );
    assert_eq!(task["result"]["files_deleted"], 4, "{task}");
    assert_eq!(task["result"]["capped"], true, "{task}");
    assert_eq!(task["result"]["turns"], 3, "{task}");
    worker.stop().await;
    stack.stop().await;
}
