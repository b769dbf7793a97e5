use super::*;
use std::path::Path;

use walk::tests::old_file;

fn executor(roots: &[(&str, &Path)]) -> TempFilesExecutor {
    let roots = roots
        .iter()
        .map(|(name, path)| (name.to_string(), TempRoot::new(*name, *path)))
        .collect();
    TempFilesExecutor::new(roots, 2, true).unwrap()
}

fn dir_id(path: &Path) -> DirId {
    let fd = rustix::fs::open(
        path,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    DirId::of(&walk::Meta::of(&fd).unwrap())
}

fn envelope(params: &CleanupTempFilesParams, progress: Option<serde_json::Value>) -> TaskEnvelope {
    let mut envelope = TaskEnvelope::new(
        uuid::Uuid::now_v7(),
        shared::tasks::TaskSpec::CleanupTempFiles(params.clone()),
        1,
        Utc::now(),
    );
    envelope.progress = progress;
    envelope
}

fn params(max_files: Option<u64>) -> CleanupTempFilesParams {
    CleanupTempFilesParams {
        max_age_hours: 1.0,
        dry_run: false,
        root: None,
        patterns: None,
        max_files,
        remove_empty_dirs: false,
        max_attempts: None,
    }
}

#[tokio::test]
async fn a_continuation_skips_what_earlier_turns_finished_and_adds_their_counts() {
    let scratch = tempfile::tempdir().unwrap();
    for d in 0..3 {
        for f in 0..4 {
            old_file(&scratch.path().join(format!("d{d}/f{f}")));
        }
    }
    old_file(&scratch.path().join("top.tmp"));
    let executor = executor(&[("s", scratch.path())]);
    // An earlier turn finished d0 (deleting 4 files there, which this test keeps so
    // that skipping shows) and the top-level files.
    let progress = TempFilesProgress {
        result: TempFilesResult {
            files_matched: 5,
            files_deleted: 5,
            bytes_matched: 20,
            bytes_freed: 20,
            turns: 1,
            ..Default::default()
        },
        done: BTreeMap::from([(
            "s".into(),
            RootProgress {
                complete: false,
                files_done: true,
                subdirs_done: BTreeSet::from(["d0".into()]),
                ..Default::default()
            },
        )]),
        ..Default::default()
    };
    let p = params(None);
    let env = envelope(&p, Some(serde_json::to_value(&progress).unwrap()));
    let Execution::Done(result) = executor
        .execute(&env, &p, &CancellationToken::new(), &Checkpoint::default())
        .await
        .unwrap()
    else {
        panic!("not interrupted")
    };
    let result = result.to_json();
    assert_eq!(result["files_deleted"], 5 + 8, "{result}");
    assert_eq!(result["turns"], 2);
    assert!(
        scratch.path().join("d0/f0").exists(),
        "d0 was finished earlier"
    );
    assert!(
        scratch.path().join("top.tmp").exists(),
        "top-level files were finished earlier"
    );
    assert!(!scratch.path().join("d1/f0").exists());
}

/// The count an earlier turn's message carries seeds the count kept beside the files (a
/// task that began before it existed, or whose count was removed after 30 days), which
/// then holds for a copy that carries nothing.
#[tokio::test]
async fn max_files_counts_over_every_turn() {
    let scratch = tempfile::tempdir().unwrap();
    for f in 0..6 {
        old_file(&scratch.path().join(format!("d/f{f}")));
    }
    let executor = executor(&[("s", scratch.path())]);
    let progress = TempFilesProgress {
        result: TempFilesResult {
            files_matched: 3,
            files_deleted: 3,
            turns: 1,
            ..Default::default()
        },
        ..Default::default()
    };
    let p = params(Some(4));
    let env = envelope(&p, Some(serde_json::to_value(&progress).unwrap()));
    let Execution::Done(result) = run_envelope(&executor, &env, &p).await.unwrap() else {
        panic!("not done")
    };
    let result = result.to_json();
    assert_eq!(result["files_deleted"], 4, "{result}");
    assert_eq!(result["capped"], true);
    let left = std::fs::read_dir(scratch.path().join("d")).unwrap().count();
    assert_eq!(left, 5, "only one more file in this turn");
    let copy = TaskEnvelope {
        progress: None,
        ..env.clone()
    };
    let Execution::Done(result) = run_envelope(&executor, &copy, &p).await.unwrap() else {
        panic!("not done")
    };
    assert_eq!(result.to_json()["files_deleted"], 0);
    let left = std::fs::read_dir(scratch.path().join("d")).unwrap().count();
    assert_eq!(
        left, 5,
        "a copy that carries nothing deleted past the count kept"
    );
}

async fn run_once(
    executor: &TempFilesExecutor,
    p: &CleanupTempFilesParams,
    progress: Option<serde_json::Value>,
) -> Result<Execution, ExecError> {
    run_envelope(executor, &envelope(p, progress), p).await
}

/// One turn of the task `env` (the same task id every time it is passed).
async fn run_envelope(
    executor: &TempFilesExecutor,
    env: &TaskEnvelope,
    p: &CleanupTempFilesParams,
) -> Result<Execution, ExecError> {
    executor
        .execute(env, p, &CancellationToken::new(), &Checkpoint::default())
        .await
}

/// Two roots; the second cannot be opened, so each attempt fails as transient: a capped
/// real run keeps its count in every root it still has to walk, so it deletes nothing
/// while one of them is missing. Once the root is back, the task deletes `max_files` in
/// all, and the final result counts every attempt.
#[tokio::test]
async fn max_files_holds_across_attempts_that_fail_on_another_root() {
    let scratch = tempfile::tempdir().unwrap();
    let a = scratch.path().join("a");
    let b = scratch.path().join("b");
    for f in 0..10 {
        old_file(&a.join(format!("d/f{f}")));
    }
    std::fs::create_dir(&b).unwrap();
    let executor = executor(&[("a", &a), ("b", &b)]);
    std::fs::rename(&b, scratch.path().join("b-away")).unwrap();
    let p = params(Some(4));
    let mut progress = None;
    for attempt in 1..=3 {
        let error = match run_once(&executor, &p, progress.clone()).await {
            Err(error) => error,
            Ok(other) => panic!("attempt {attempt} did not fail: {other:?}"),
        };
        assert!(error.is_transient(), "{error}");
        assert!(error.message.contains("cannot be opened"), "{error}");
        progress = error.progress.clone();
        assert!(progress.is_some(), "attempt {attempt} carried no progress");
    }
    let left = std::fs::read_dir(a.join("d")).unwrap().count();
    assert_eq!(left, 10, "deleted while a root's count could not be read");
    // The root is back: the last attempt finishes, counting every file once.
    std::fs::rename(scratch.path().join("b-away"), &b).unwrap();
    let Execution::Done(result) = run_once(&executor, &p, progress).await.unwrap() else {
        panic!("not done")
    };
    let result = result.to_json();
    assert_eq!(result["files_deleted"], 4, "{result}");
    assert_eq!(result["turns"], 4, "{result}");
}

#[tokio::test]
async fn counts_merged_across_turns_keep_skips_and_the_oldest_remaining_file() {
    let scratch = tempfile::tempdir().unwrap();
    old_file(&scratch.path().join("d/f.tmp"));
    let executor = executor(&[("s", scratch.path())]);
    let two_days_ago = Utc::now().timestamp() - 10 * 24 * 3600;
    let progress = TempFilesProgress {
        result: TempFilesResult {
            skipped: 2,
            kept: BTreeMap::from([("in_use".into(), 2)]),
            turns: 1,
            ..Default::default()
        },
        oldest_remaining_mtime: Some(two_days_ago),
        ..Default::default()
    };
    let p = params(None);
    let Execution::Done(result) = run_once(
        &executor,
        &p,
        Some(serde_json::to_value(&progress).unwrap()),
    )
    .await
    .unwrap() else {
        panic!("not done")
    };
    let result = result.to_json();
    assert_eq!(result["skipped"], 2, "{result}");
    assert_eq!(result["kept"]["in_use"], 2, "{result}");
    let oldest = result["oldest_remaining_age_seconds"].as_f64().unwrap();
    assert!(oldest >= 10.0 * 24.0 * 3600.0 - 5.0, "{result}");
}

/// A turn deletes in `jobs/1` and is stopped before finishing it; the next turn finds
/// it empty and removes it, because this task emptied it.
#[tokio::test]
async fn a_directory_emptied_over_two_turns_is_removed_by_the_second() {
    let scratch = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(scratch.path().join("jobs/1")).unwrap();
    std::fs::create_dir_all(scratch.path().join("spool")).unwrap();
    let executor = executor(&[("s", scratch.path())]);
    let id = |rel: &str| (rel.to_owned(), dir_id(&scratch.path().join(rel)));
    let mut p = params(None);
    p.remove_empty_dirs = true;
    let progress = TempFilesProgress {
        result: TempFilesResult {
            files_matched: 3,
            files_deleted: 3,
            turns: 1,
            ..Default::default()
        },
        done: BTreeMap::from([(
            "s".into(),
            RootProgress {
                files_done: true,
                touched: BTreeMap::from([id("jobs/1"), id("jobs")]),
                ..Default::default()
            },
        )]),
        ..Default::default()
    };
    let Execution::Done(result) = run_once(
        &executor,
        &p,
        Some(serde_json::to_value(&progress).unwrap()),
    )
    .await
    .unwrap() else {
        panic!("not done")
    };
    let result = result.to_json();
    assert_eq!(result["dirs_removed"], 2, "{result}");
    assert!(!scratch.path().join("jobs").exists());
    assert!(scratch.path().join("spool").is_dir(), "never touched: kept");
}

#[test]
fn globs_match_relative_paths_and_refuse_escapes() {
    let set = build_globset(&["*.tmp".into(), "cache/**".into()]).unwrap();
    assert!(set.is_match("a/b/c.tmp"));
    assert!(set.is_match("cache/x/y.bin"));
    assert!(!set.is_match("a/b/c.log"));
    assert!(build_globset(&["../*.tmp".into()]).is_err());
}

/// A turn emptied `jobs/1` partly; before the next turn, the application replaced it by a
/// new, empty `jobs/1`. That one was never touched by this task: it stays.
#[tokio::test]
async fn a_directory_replaced_between_turns_is_not_removed() {
    let scratch = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(scratch.path().join("jobs/1")).unwrap();
    let executor = executor(&[("s", scratch.path())]);
    let mut p = params(None);
    p.remove_empty_dirs = true;
    // The directory the earlier turn touched stays alive as `old-1`, so the new one
    // cannot reuse its inode.
    let touched = dir_id(&scratch.path().join("jobs/1"));
    std::fs::rename(scratch.path().join("jobs/1"), scratch.path().join("old-1")).unwrap();
    std::fs::create_dir(scratch.path().join("jobs/1")).unwrap();
    let progress = TempFilesProgress {
        done: BTreeMap::from([(
            "s".into(),
            RootProgress {
                files_done: true,
                touched: BTreeMap::from([("jobs/1".into(), touched)]),
                ..Default::default()
            },
        )]),
        ..Default::default()
    };
    let Execution::Done(result) = run_once(
        &executor,
        &p,
        Some(serde_json::to_value(&progress).unwrap()),
    )
    .await
    .unwrap() else {
        panic!("not done")
    };
    let result = result.to_json();
    assert_eq!(result["dirs_removed"], 0, "{result}");
    assert!(scratch.path().join("jobs/1").is_dir());
}

/// Progress written before directories were kept with their identity (paths only) is
/// still read, and those directories count as not touched: they are kept.
#[tokio::test]
async fn progress_with_paths_only_is_read_and_its_directories_are_kept() {
    let scratch = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(scratch.path().join("jobs/1")).unwrap();
    let executor = executor(&[("s", scratch.path())]);
    let mut p = params(None);
    p.remove_empty_dirs = true;
    let progress = serde_json::json!({
        "result": serde_json::to_value(TempFilesResult { turns: 1, ..Default::default() }).unwrap(),
        "done": {"s": {"files_done": true, "touched": ["jobs/1", "jobs"]}},
    });
    let Execution::Done(result) = run_once(&executor, &p, Some(progress)).await.unwrap() else {
        panic!("not done")
    };
    let result = result.to_json();
    assert_eq!(result["dirs_removed"], 0, "{result}");
    assert!(scratch.path().join("jobs/1").is_dir());
}

/// Progress written before birth times were kept (device and inode only) is still read;
/// such a directory cannot be told from one created since at the same inode, so it stays.
#[tokio::test]
async fn a_touched_directory_without_a_birth_time_is_kept() {
    let scratch = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(scratch.path().join("jobs/1")).unwrap();
    let executor = executor(&[("s", scratch.path())]);
    let mut p = params(None);
    p.remove_empty_dirs = true;
    let id = dir_id(&scratch.path().join("jobs/1"));
    assert!(id.same_as(&id), "this filesystem reports birth times");
    let progress = serde_json::json!({
        "result": serde_json::to_value(TempFilesResult { turns: 1, ..Default::default() }).unwrap(),
        "done": {"s": {"files_done": true,
                       "touched_dirs": {"jobs/1": {"dev": id.dev, "ino": id.ino}}}},
    });
    let Execution::Done(result) = run_once(&executor, &p, Some(progress)).await.unwrap() else {
        panic!("not done")
    };
    assert_eq!(result.to_json()["dirs_removed"], 0);
    assert!(scratch.path().join("jobs/1").is_dir());
}
