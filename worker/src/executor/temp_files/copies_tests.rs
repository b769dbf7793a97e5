//! `max_files` over copies of one task (a message delivered twice), and the count they
//! share, tried the ways it could be defeated.

use super::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use walk::claims::{CHUNK, CLAIMS_DIR};
use walk::tests::old_file;

fn executor(root: &Path) -> TempFilesExecutor {
    let roots = BTreeMap::from([("s".to_string(), TempRoot::new("s", root))]);
    TempFilesExecutor::new(roots, 2, true).unwrap()
}

fn capped(max_files: Option<u64>) -> (TaskEnvelope, CleanupTempFilesParams) {
    let params = CleanupTempFilesParams {
        max_age_hours: 1.0,
        dry_run: false,
        root: None,
        patterns: None,
        max_files,
        remove_empty_dirs: true,
        max_attempts: None,
    };
    let envelope = TaskEnvelope::new(
        uuid::Uuid::now_v7(),
        shared::tasks::TaskSpec::CleanupTempFiles(params.clone()),
        1,
        Utc::now(),
    );
    (envelope, params)
}

async fn run(
    executor: &TempFilesExecutor,
    envelope: &TaskEnvelope,
    params: &CleanupTempFilesParams,
) -> Result<serde_json::Value, ExecError> {
    match executor
        .execute(
            envelope,
            params,
            &CancellationToken::new(),
            &Checkpoint::default(),
        )
        .await?
    {
        Execution::Done(report) => Ok(report.to_json()),
        other => panic!("not done in one turn: {other:?}"),
    }
}

/// Old files `d<i>/f<j>` under `root`, `per_dir` in each of `dirs` directories.
fn old_files(root: &Path, dirs: usize, per_dir: usize) {
    for d in 0..dirs {
        for f in 0..per_dir {
            old_file(&root.join(format!("d{d:02}/f{f:03}")));
        }
    }
}

/// The counts' directory as the worker makes it (`0700`), made ahead of a run.
fn claims_dir(root: &Path) -> std::path::PathBuf {
    let claims = root.join(CLAIMS_DIR);
    std::fs::create_dir(&claims).unwrap();
    std::fs::set_permissions(&claims, std::fs::Permissions::from_mode(0o700)).unwrap();
    claims
}

fn files_left(root: &Path) -> usize {
    walkdir(root)
        .into_iter()
        .filter(|p| !p.starts_with(root.join(CLAIMS_DIR)) && p.is_file())
        .count()
}

fn walkdir(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() && !path.is_symlink() {
            all.extend(walkdir(&path));
        }
        all.push(path);
    }
    all
}

/// The relay published the message again (the ledger failed between the broker's
/// confirm and its commit): the second copy starts from nothing in its message, after
/// the first one finished. It must delete nothing more.
#[tokio::test]
async fn a_second_copy_after_the_first_deletes_nothing_past_max_files() {
    let scratch = tempfile::tempdir().unwrap();
    old_files(scratch.path(), 2, 10);
    let (a, b) = (executor(scratch.path()), executor(scratch.path()));
    let (envelope, params) = capped(Some(5));
    let first = run(&a, &envelope, &params).await.unwrap();
    assert_eq!(first["files_deleted"], 5, "{first}");
    let second = run(&b, &envelope, &params).await.unwrap();
    assert_eq!(second["files_deleted"], 0, "{second}");
    assert_eq!(second["capped"], true, "{second}");
    assert_eq!(
        files_left(scratch.path()),
        15,
        "two copies deleted past max_files"
    );
}

/// Both copies at once, on two workers that see the same files: together they delete
/// no more than `max_files` (more than one chunk, so their claims interleave).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_copies_at_once_delete_no_more_than_max_files_together() {
    let scratch = tempfile::tempdir().unwrap();
    old_files(scratch.path(), 10, 40);
    let (a, b) = (executor(scratch.path()), executor(scratch.path()));
    let cap = 3 * CHUNK + 7;
    let (envelope, params) = capped(Some(cap));
    let (one, two) = tokio::join!(run(&a, &envelope, &params), run(&b, &envelope, &params));
    let (one, two) = (one.unwrap(), two.unwrap());
    let deleted = 400 - files_left(scratch.path()) as u64;
    assert!(deleted <= cap, "{deleted} deleted; {one} {two}");
    let reported = one["files_deleted"].as_u64().unwrap() + two["files_deleted"].as_u64().unwrap();
    assert_eq!(
        reported, deleted,
        "each copy reports what it deleted: {one} {two}"
    );
    // A file both copies claimed is deleted by one and vanished for the other: claims
    // count, so together they may delete fewer than `max_files`, never more. What they
    // claimed and did not use was given back, and a third copy takes nothing.
    let claimed = one["files_matched"].as_u64().unwrap() + two["files_matched"].as_u64().unwrap();
    let count = std::fs::read_to_string(
        scratch
            .path()
            .join(CLAIMS_DIR)
            .join(envelope.task_id.to_string()),
    )
    .unwrap();
    assert_eq!(count.trim().parse::<u64>().unwrap(), claimed, "{one} {two}");
    assert_eq!(claimed, cap, "{one} {two}");
    let third = run(&a, &envelope, &params).await.unwrap();
    assert_eq!(third["files_deleted"], 0, "{third}");
    assert_eq!(third["capped"], true, "{third}");
}

/// Whatever sits where the counts go, a capped real run that cannot trust it deletes
/// nothing and says why; the place it points to is not written.
#[tokio::test]
async fn a_capped_run_refuses_a_count_directory_it_did_not_make() {
    type Plant = fn(&Path, &Path);
    let cases: [(&str, Plant); 5] = [
        ("a symlink", |claims, elsewhere| {
            std::os::unix::fs::symlink(elsewhere, claims).unwrap()
        }),
        ("a file", |claims, _| std::fs::write(claims, b"").unwrap()),
        ("another user's directory", |claims, _| {
            std::fs::create_dir(claims).unwrap();
            std::os::unix::fs::chown(claims, Some(54321), None).unwrap();
        }),
        ("a directory others may write in", |claims, _| {
            std::fs::create_dir(claims).unwrap();
            std::fs::set_permissions(claims, std::fs::Permissions::from_mode(0o777)).unwrap();
        }),
        ("a forged count", |claims, _| {
            std::fs::create_dir(claims).unwrap();
            std::fs::set_permissions(claims, std::fs::Permissions::from_mode(0o700)).unwrap();
        }),
    ];
    for (what, plant) in cases {
        let scratch = tempfile::tempdir().unwrap();
        let root = scratch.path().join("root");
        let elsewhere = scratch.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        old_files(&root, 1, 5);
        let claims = root.join(CLAIMS_DIR);
        plant(&claims, &elsewhere);
        let (envelope, params) = capped(Some(3));
        if what == "a forged count" {
            std::fs::write(claims.join(envelope.task_id.to_string()), b"zero\n").unwrap();
        }
        // The dry run predicts the refusal (all but the forged count, which it never reads).
        let dry = CleanupTempFilesParams {
            dry_run: true,
            ..params.clone()
        };
        let runs = if what == "a forged count" {
            vec![&params]
        } else {
            vec![&dry, &params]
        };
        for p in runs {
            let error = run(&executor(&root), &envelope, p).await.expect_err(what);
            assert!(!error.is_transient(), "{what}: {error}");
            assert!(
                error
                    .message
                    .contains("max_files cannot be kept across copies"),
                "{what} (dry run: {}): {error}",
                p.dry_run
            );
        }
        assert_eq!(files_left(&root), 5, "{what}: deleted with no count kept");
        assert_eq!(
            std::fs::read_dir(&elsewhere).unwrap().count(),
            0,
            "{what}: wrote where the symlink led"
        );
    }
}

/// The counts are never judged, counted or removed by any run, however old and
/// whatever the patterns; nor is a directory of that name deeper in the tree (another
/// root's counts, when a bind mount makes roots overlap).
#[tokio::test]
async fn the_walk_never_touches_the_counts() {
    let scratch = tempfile::tempdir().unwrap();
    old_files(scratch.path(), 1, 3);
    let (envelope, params) = capped(Some(2));
    run(&executor(scratch.path()), &envelope, &params)
        .await
        .unwrap();
    let count = scratch
        .path()
        .join(CLAIMS_DIR)
        .join(envelope.task_id.to_string());
    assert_eq!(std::fs::read_to_string(&count).unwrap().trim(), "2");
    walk::tests::age(&count, 48);
    old_file(&scratch.path().join("d00").join(CLAIMS_DIR).join("f"));
    for dry_run in [true, false] {
        let (envelope, mut params) = capped(None);
        params.dry_run = dry_run;
        params.patterns = Some(vec!["**".into(), ".*".into(), "**/.*".into()]);
        let result = run(&executor(scratch.path()), &envelope, &params)
            .await
            .unwrap();
        // d00's last file only.
        assert_eq!(result["files_matched"], 1, "{result}");
    }
    assert!(count.exists(), "a count was deleted");
    assert!(
        scratch
            .path()
            .join("d00")
            .join(CLAIMS_DIR)
            .join("f")
            .exists(),
        "a deeper count directory was entered"
    );
    assert!(!scratch.path().join("d00/f002").exists());
}

/// Two root names for one directory (a bind mount) share one count file: locking it
/// twice from one copy would wait for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_root_names_for_one_directory_share_one_count() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("dir");
    old_files(&dir, 2, 10);
    // Another spelling of the same directory (in production, a bind mount).
    let again = dir.join(".");
    let roots = BTreeMap::from([
        ("a".to_string(), TempRoot::new("a", &dir)),
        ("b".to_string(), TempRoot::new("b", &again)),
    ]);
    let executor = TempFilesExecutor::new(roots, 2, true).unwrap();
    let (envelope, params) = capped(Some(7));
    let result = tokio::time::timeout(Duration::from_secs(20), run(&executor, &envelope, &params))
        .await
        .expect("the copy waited for its own lock")
        .unwrap();
    assert_eq!(result["files_deleted"], 7, "{result}");
    assert_eq!(files_left(&dir), 13);
}

/// A copy whose claim waits for another copy's lock still stops when told to (a cancel,
/// the end of its turn), deleting nothing meanwhile; the files it passed over are judged
/// by a later turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_waiting_for_the_count_still_stops() {
    let scratch = tempfile::tempdir().unwrap();
    old_files(scratch.path(), 1, 10);
    let (envelope, params) = capped(Some(4));
    let claims = claims_dir(scratch.path());
    let count = std::fs::File::create(claims.join(envelope.task_id.to_string())).unwrap();
    // Another copy holds the count's lock (and never lets go while this one runs).
    rustix::fs::flock(&count, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let executor = executor(scratch.path());
    let cancel = CancellationToken::new();
    let stop = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            cancel.cancel();
        })
    };
    let outcome = tokio::time::timeout(
        Duration::from_secs(20),
        executor.execute(&envelope, &params, &cancel, &Checkpoint::default()),
    )
    .await
    .expect("a stop did not end the wait for the lock")
    .unwrap();
    stop.await.unwrap();
    let Execution::Interrupted { progress } = outcome else {
        panic!("not interrupted: {outcome:?}")
    };
    assert_eq!(files_left(scratch.path()), 10, "deleted without the count");
    // The lock is free again: the next turn judges the files passed over.
    drop(count);
    let mut next = envelope.clone();
    next.progress = Some(progress);
    let result = run(&executor, &next, &params).await.unwrap();
    assert_eq!(result["files_deleted"], 4, "{result}");
    assert_eq!(files_left(scratch.path()), 6);
}

/// Counts untouched for 30 days are removed when a capped run opens the directory,
/// except the task's own and one another copy holds locked; younger ones stay.
#[tokio::test]
async fn old_counts_are_swept_but_never_one_in_use() {
    let scratch = tempfile::tempdir().unwrap();
    old_files(scratch.path(), 1, 3);
    let (envelope, params) = capped(Some(2));
    let claims = claims_dir(scratch.path());
    let count = |name: &str, days: u64| {
        let path = claims.join(name);
        std::fs::write(&path, b"1\n").unwrap();
        walk::tests::age(&path, days * 24);
        path
    };
    let id = || uuid::Uuid::now_v7().to_string();
    let stale = count(&id(), 31);
    let young = count(&id(), 29);
    let locked = count(&id(), 31);
    // Not a count: not the sweep's to remove, however old.
    let other = count("notes.txt", 31);
    let foreign = count(&id(), 31);
    std::os::unix::fs::chown(&foreign, Some(54321), None).unwrap();
    let held = std::fs::File::open(&locked).unwrap();
    rustix::fs::flock(&held, rustix::fs::FlockOperation::LockExclusive).unwrap();
    // The task's own count, as a copy arriving after 31 days finds it: still used.
    let own = count(&envelope.task_id.to_string(), 31);
    let result = run(&executor(scratch.path()), &envelope, &params)
        .await
        .unwrap();
    assert!(!stale.exists(), "an old count was not swept");
    assert!(
        young.exists() && locked.exists(),
        "a count in use or young was swept"
    );
    assert!(
        other.exists() && foreign.exists(),
        "swept what is not the worker's count"
    );
    assert_eq!(result["files_deleted"], 1, "{result}");
    assert_eq!(std::fs::read_to_string(own).unwrap().trim(), "2");
}
