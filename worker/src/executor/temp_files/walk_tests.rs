//! The walk's safety rules, each tried the way it could go wrong.

use super::*;
use rustix::fs::{Mode, OFlags};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

pub fn walk(dry_run: bool) -> Walk {
    Walk {
        // Everything older than one hour.
        cutoff: Utc::now() - chrono::Duration::hours(1),
        patterns: None,
        dry_run,
        remove_empty_dirs: false,
        max_files: None,
        task_id: uuid::Uuid::now_v7(),
        claims: Default::default(),
        claims_failed: Mutex::new(None),
        check_locks: true,
        privileges: Privileges::of_this_process(),
        stop: Arc::new(AtomicBool::new(false)),
        counters: Counters::default(),
        errors: Mutex::new(Vec::new()),
        samples: Mutex::new(Vec::new()),
        interrupted: AtomicBool::new(false),
        resume: BTreeMap::new(),
        done: Mutex::new(BTreeMap::new()),
        after_open: None,
    }
}

pub fn age(path: &Path, hours: u64) {
    let when = SystemTime::now() - Duration::from_secs(hours * 3600);
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_times(
        std::fs::FileTimes::new()
            .set_accessed(when)
            .set_modified(when),
    )
    .unwrap();
}

pub fn old_file(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, b"data").unwrap();
    age(path, 48);
}

pub fn open_dir(path: &Path) -> OwnedFd {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap()
}

pub fn run(walk: &Walk, path: &Path) -> TempFilesResult {
    let root = TempRoot::new("s", path);
    walk.run(std::slice::from_ref(&root)).unwrap();
    walk.result(&[root])
}

pub fn kept(result: &TempFilesResult, reason: &str) -> u64 {
    result.kept.get(reason).copied().unwrap_or(0)
}

/// Run a privileged command; false (and a note) when this run may not.
pub fn privileged(program: &str, args: &[&str]) -> bool {
    let ok = Command::new(program)
        .args(args)
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "skipped: `{program} {}` needs privileges or support this run does not have",
            args.join(" ")
        );
    }
    ok
}

/// Examine `root/a`, then let `swap` replace it, then visit it as the walk would.
fn visit_after_swap(swap: impl FnOnce(&Path)) -> (Walk, tempfile::TempDir) {
    let scratch = tempfile::tempdir().unwrap();
    let root_path = scratch.path().join("root");
    old_file(&root_path.join("a/inside.tmp"));
    let root_fd = open_dir(&root_path);
    let seen = Meta::at(&root_fd, c"a").unwrap();
    let root_meta = Meta::of(&root_fd).unwrap();
    swap(&root_path);
    let walk = walk(false);
    let root = TempRoot::new("root", &root_path);
    let at = Position {
        root: &root,
        root_fd: &root_fd,
        rel: PathBuf::new(),
        root_moved: &AtomicBool::new(false),
        dev: root_meta.dev,
        mnt_id: root_meta.mnt_id,
        depth: 0,
    };
    walk.visit_subdir(
        &root_fd,
        c"a",
        &seen,
        Unlink::Allowed,
        &at,
        PathBuf::from("a"),
    );
    (walk, scratch)
}

#[test]
fn a_directory_swapped_for_a_symlink_mid_walk_is_not_followed() {
    let outside = tempfile::tempdir().unwrap();
    old_file(&outside.path().join("precious.tmp"));
    let target = outside.path().to_path_buf();
    let (walk, _scratch) = visit_after_swap(|root| {
        std::fs::rename(root.join("a"), root.join("a-moved")).unwrap();
        std::os::unix::fs::symlink(&target, root.join("a")).unwrap();
    });
    assert!(
        outside.path().join("precious.tmp").exists(),
        "the symlink's target was walked"
    );
    assert_eq!(walk.counters.files_deleted.load(Ordering::Relaxed), 0);
    assert_eq!(
        walk.counters.kept[Kept::Replaced as usize].load(Ordering::Relaxed),
        1
    );
    let errors = walk.errors.lock().unwrap();
    assert_eq!(errors[0].error, "replaced during the walk; not followed");
}

#[test]
fn a_directory_swapped_for_another_directory_mid_walk_is_not_entered() {
    let (walk, scratch) = visit_after_swap(|root| {
        std::fs::rename(root.join("a"), root.join("a-moved")).unwrap();
        old_file(&root.join("a/other.tmp"));
    });
    assert!(scratch.path().join("root/a/other.tmp").exists());
    assert!(scratch.path().join("root/a-moved/inside.tmp").exists());
    assert_eq!(walk.counters.files_deleted.load(Ordering::Relaxed), 0);
    assert_eq!(
        walk.counters.kept[Kept::Replaced as usize].load(Ordering::Relaxed),
        1
    );
}

#[test]
fn an_unswapped_directory_is_walked() {
    let (walk, scratch) = visit_after_swap(|_| {});
    assert!(!scratch.path().join("root/a/inside.tmp").exists());
    assert_eq!(walk.counters.files_deleted.load(Ordering::Relaxed), 1);
}

#[test]
fn max_files_caps_the_run_and_reports_what_remains() {
    let scratch = tempfile::tempdir().unwrap();
    for i in 0..5 {
        old_file(&scratch.path().join(format!("d{i}/f.tmp")));
    }
    let mut walk = walk(false);
    walk.max_files = Some(3);
    let result = run(&walk, scratch.path());
    assert_eq!(result.files_deleted, 3);
    assert!(result.capped);
    assert_eq!(kept(&result, "capped"), 2);
    assert!(result.oldest_remaining_age_seconds.unwrap() >= 47.0 * 3600.0);
    // In name order: the first three directories lost their file.
    for (i, gone) in [true, true, true, false, false].into_iter().enumerate() {
        assert_eq!(
            !scratch.path().join(format!("d{i}/f.tmp")).exists(),
            gone,
            "d{i}"
        );
    }
}

#[test]
fn a_capped_dry_run_predicts_exactly_the_files_and_directories_of_the_real_run() {
    let scratch = tempfile::tempdir().unwrap();
    for d in 0..12 {
        for f in 0..(d % 4 + 1) {
            old_file(&scratch.path().join(format!("d{d:02}/sub/f{f}.tmp")));
        }
    }
    let plan = |dry_run: bool| {
        let mut w = walk(dry_run);
        w.max_files = Some(13);
        w.remove_empty_dirs = true;
        w.check_locks = true;
        w
    };
    let predictions: Vec<(u64, u64)> = (0..5)
        .map(|_| {
            let r = run(&plan(true), scratch.path());
            (r.files_matched, r.dirs_matched)
        })
        .collect();
    assert!(
        predictions.windows(2).all(|w| w[0] == w[1]),
        "{predictions:?}"
    );
    let real = run(&plan(false), scratch.path());
    assert_eq!((real.files_deleted, real.dirs_removed), predictions[0]);
    assert_eq!(real.files_matched, 13);
    // A few of the files deleted are named, as `root/path` under the root ("s").
    assert_eq!(real.sample_paths.len(), shared::results::MAX_SAMPLES);
    for sample in &real.sample_paths {
        let (root, rel) = sample.split_once('/').unwrap();
        assert_eq!(root, "s", "{sample}");
        assert!(
            rel.starts_with('d') && rel.contains("/sub/f") && rel.ends_with(".tmp"),
            "{sample}"
        );
    }
}

/// Needs the privilege to mount (CI runs as root); says so and passes otherwise.
#[test]
fn another_filesystem_below_a_root_is_never_entered() {
    let scratch = tempfile::tempdir().unwrap();
    let mount_point = scratch.path().join("mnt");
    std::fs::create_dir(&mount_point).unwrap();
    old_file(&scratch.path().join("old.tmp"));
    if !privileged(
        "mount",
        &["-t", "tmpfs", "cleanup-test", mount_point.to_str().unwrap()],
    ) {
        return;
    }
    old_file(&mount_point.join("on-other-fs.tmp"));
    let mut walk = walk(false);
    walk.remove_empty_dirs = true;
    let root = TempRoot::new("s", scratch.path());
    let outcome = walk.run(std::slice::from_ref(&root));
    let survived = mount_point.join("on-other-fs.tmp").exists();
    let _ = Command::new("umount").arg(&mount_point).status();
    outcome.unwrap();
    assert!(survived, "a file on another filesystem was deleted");
    assert!(!scratch.path().join("old.tmp").exists());
    let result = walk.result(&[root]);
    assert_eq!(result.files_deleted, 1);
    assert_eq!(
        kept(&result, "other_mount"),
        1,
        "the mount point is skipped"
    );
}

/// A bind mount of the same filesystem (what Kubernetes hostPath and local volumes make):
/// same device, another mount. Needs the privilege to mount.
#[test]
fn a_bind_mount_of_the_same_filesystem_below_a_root_is_never_entered() {
    let scratch = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir_in(scratch.path().parent().unwrap()).unwrap();
    old_file(&elsewhere.path().join("precious.tmp"));
    let mount_point = scratch.path().join("bound");
    std::fs::create_dir(&mount_point).unwrap();
    if !privileged(
        "mount",
        &[
            "--bind",
            elsewhere.path().to_str().unwrap(),
            mount_point.to_str().unwrap(),
        ],
    ) {
        return;
    }
    let mut walk = walk(false);
    walk.remove_empty_dirs = true;
    let root = TempRoot::new("s", scratch.path());
    let outcome = walk.run(std::slice::from_ref(&root));
    let _ = Command::new("umount").arg(&mount_point).status();
    outcome.unwrap();
    assert!(
        elsewhere.path().join("precious.tmp").exists(),
        "a file behind a bind mount was deleted"
    );
    assert_eq!(kept(&walk.result(&[root]), "other_mount"), 1);
}

#[test]
fn age_by_atime_keeps_a_file_read_recently() {
    let scratch = tempfile::tempdir().unwrap();
    let path = scratch.path().join("read-yesterday.tmp");
    old_file(&path);
    // Modified 48 h ago, read just now.
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_times(std::fs::FileTimes::new().set_accessed(SystemTime::now()))
        .unwrap();
    let w = walk(false);
    let root = TempRoot::new("s", scratch.path()).with_age_by("atime+mtime".parse().unwrap());
    w.run(std::slice::from_ref(&root)).unwrap();
    let result = w.result(&[root]);
    assert!(path.exists());
    assert_eq!(kept(&result, "young"), 1);
    // By mtime alone it is old.
    assert_eq!(run(&walk(false), scratch.path()).files_deleted, 1);
}

/// An operator moves the whole root away mid-walk (`mv /srv/scratch /data/keep`): the
/// walk holds the old root open, and what it holds is no longer the configured root.
#[test]
fn a_root_renamed_away_mid_walk_is_not_cleaned_at_its_new_place() {
    let scratch = tempfile::tempdir_in("/tmp").unwrap();
    let root = scratch.path().join("root");
    let kept_copy = scratch.path().join("preserved");
    std::fs::create_dir_all(root.join("a")).unwrap();
    std::fs::write(root.join("a/young"), b"x").unwrap();
    for f in 0..3 {
        old_file(&root.join(format!("b/f{f}.tmp")));
    }
    let mut w = walk(false);
    w.max_files = Some(1000); // sequential, name order
    let (from, to) = (root.clone(), kept_copy.clone());
    w.after_open = Some(Box::new(move |rel: &Path| {
        if rel == Path::new("a") {
            std::fs::rename(&from, &to).unwrap(); // operator: mv root preserved
            std::fs::create_dir(&from).unwrap();
        }
    }));
    let result = run(&w, &root);
    let left: Vec<_> = std::fs::read_dir(kept_copy.join("b")).unwrap().collect();
    assert_eq!(left.len(), 3, "files were deleted in the renamed-away root");
    assert_eq!(kept(&result, "moved_out_of_root"), 3, "{result:?}");
    assert!(
        result.errors[0].error.starts_with("temp root `s` (")
            && result.errors[0].error.contains("was moved"),
        "{result:?}"
    );
}
