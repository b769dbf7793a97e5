//! The walk's safety rules, each tried the way it could go wrong.

use super::*;
use rustix::fs::FlockOperation;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

fn walk(dry_run: bool) -> Walk {
    Walk {
        // Everything older than one hour.
        cutoff: Utc::now() - chrono::Duration::hours(1),
        patterns: None,
        dry_run,
        remove_empty_dirs: false,
        max_files: None,
        check_locks: true,
        privileges: Privileges::of_this_process(),
        stop: Arc::new(AtomicBool::new(false)),
        counters: Counters::default(),
        errors: Mutex::new(Vec::new()),
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

fn open_dir(path: &Path) -> OwnedFd {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap()
}

fn run(walk: &Walk, path: &Path) -> TempFilesResult {
    let root = TempRoot::new("s", path);
    walk.run(std::slice::from_ref(&root)).unwrap();
    walk.result(&[root])
}

fn kept(result: &TempFilesResult, reason: &str) -> u64 {
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
fn remove_empty_dirs_removes_only_what_this_task_emptied() {
    let scratch = tempfile::tempdir().unwrap();
    let s = scratch.path();
    // Emptied by the task, with a parent that becomes empty only because of it.
    old_file(&s.join("jobs/42/out.tmp"));
    // Empty before the task: an application's spool directory. Old, and still kept.
    std::fs::create_dir_all(s.join("spool/incoming")).unwrap();
    // Holds only what the patterns do not match.
    old_file(&s.join("keep/notes.txt"));
    // A parent that keeps another, untouched, empty child.
    old_file(&s.join("mixed/a/x.tmp"));
    std::fs::create_dir_all(s.join("mixed/empty-before")).unwrap();
    for dir in ["spool/incoming", "spool", "mixed/empty-before"] {
        let when = SystemTime::now() - Duration::from_secs(72 * 3600);
        std::fs::File::open(s.join(dir))
            .unwrap()
            .set_modified(when)
            .unwrap();
    }
    for dry_run in [true, false] {
        let mut w = walk(dry_run);
        w.remove_empty_dirs = true;
        w.patterns =
            Some(crate::executor::temp_files::build_globset(&["**/*.tmp".into()]).unwrap());
        let result = run(&w, s);
        assert_eq!(result.files_matched, 2, "dry run {dry_run}");
        // jobs/42, jobs, mixed/a.
        assert_eq!(result.dirs_matched, 3, "dry run {dry_run}: {result:?}");
    }
    assert!(!s.join("jobs").exists());
    assert!(!s.join("mixed/a").exists());
    assert!(
        s.join("spool/incoming").is_dir(),
        "an already empty directory was removed"
    );
    assert!(s.join("keep/notes.txt").exists());
    assert!(s.join("mixed/empty-before").is_dir());
}

#[test]
fn without_patterns_an_already_empty_directory_is_kept_too() {
    let scratch = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(scratch.path().join("spool/incoming")).unwrap();
    let mut w = walk(false);
    w.remove_empty_dirs = true;
    let result = run(&w, scratch.path());
    assert_eq!(result.dirs_removed, 0);
    assert!(scratch.path().join("spool/incoming").is_dir());
}

#[test]
fn a_file_another_process_holds_a_flock_on_is_kept_in_dry_and_real_runs() {
    let scratch = tempfile::tempdir().unwrap();
    old_file(&scratch.path().join("held.tmp"));
    old_file(&scratch.path().join("free.tmp"));
    // A lock on another open file description behaves as another process's lock.
    let held = std::fs::File::open(scratch.path().join("held.tmp")).unwrap();
    rustix::fs::flock(&held, FlockOperation::LockExclusive).unwrap();
    for dry_run in [true, false] {
        let result = run(&walk(dry_run), scratch.path());
        assert_eq!(result.files_matched, 1, "dry run {dry_run}");
        assert_eq!(kept(&result, "in_use"), 1);
        assert_eq!(result.skipped, 1);
    }
    assert!(scratch.path().join("held.tmp").exists());
    assert!(!scratch.path().join("free.tmp").exists());
    // With lock checks off the file goes (the operator's choice).
    let mut w = walk(false);
    w.check_locks = false;
    assert_eq!(run(&w, scratch.path()).files_deleted, 1);
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

/// The sticky bit: as an unprivileged worker would judge it (this test may run as root,
/// so the worker's identity is set here; the rule is ours, not the kernel's).
#[test]
fn in_a_sticky_directory_only_the_workers_own_files_are_matched() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("shared");
    old_file(&dir.join("someone-elses.tmp"));
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    let owner = rustix::fs::stat(dir.join("someone-elses.tmp"))
        .unwrap()
        .st_uid;
    let mut w = walk(true);
    w.privileges = Privileges {
        euid: owner + 1,
        fowner: false,
    };
    let result = run(&w, scratch.path());
    assert_eq!(result.files_matched, 0);
    assert_eq!(kept(&result, "not_permitted"), 1);
    w = walk(true);
    w.privileges = Privileges {
        euid: owner,
        fowner: false,
    };
    assert_eq!(run(&w, scratch.path()).files_matched, 1);
}

/// Immutable files cannot be unlinked even by root: a dry run must not count them.
/// Needs chattr and a filesystem that supports it.
#[test]
fn immutable_files_are_skipped_in_dry_and_real_runs() {
    let scratch = tempfile::tempdir().unwrap();
    let path = scratch.path().join("sealed.tmp");
    old_file(&path);
    if !privileged("chattr", &["+i", path.to_str().unwrap()]) {
        return;
    }
    let dry = run(&walk(true), scratch.path());
    let real = run(&walk(false), scratch.path());
    let _ = Command::new("chattr")
        .args(["-i", path.to_str().unwrap()])
        .status();
    assert_eq!(dry.files_matched, 0);
    assert_eq!(kept(&dry, "immutable"), 1);
    assert_eq!(real.files_matched, 0);
    assert_eq!(
        real.errors_total, 0,
        "no unlink was attempted: {:?}",
        real.errors
    );
    assert_eq!(kept(&real, "immutable"), 1);
}

/// An application builds `root/job1/` and renames it to its results while the walk holds
/// the directory open: nothing is deleted through the held handle once it is outside.
#[test]
fn a_directory_moved_out_of_the_root_mid_walk_keeps_its_files() {
    for dry_run in [true, false] {
        let scratch = tempfile::tempdir().unwrap();
        let root = scratch.path().join("root");
        let results = scratch.path().join("results");
        std::fs::create_dir(&results).unwrap();
        for f in 0..3 {
            old_file(&root.join(format!("job1/f{f}.tmp")));
        }
        old_file(&root.join("job1/sub/deep.tmp"));
        old_file(&root.join("other/x.tmp"));
        let mut w = walk(dry_run);
        w.remove_empty_dirs = true;
        let (from, to) = (root.join("job1"), results.join("job1"));
        w.after_open = Some(Box::new(move |rel: &Path| {
            if rel == Path::new("job1") {
                std::fs::rename(&from, &to).unwrap();
            }
        }));
        let result = run(&w, &root);
        for f in 0..3 {
            assert!(results.join(format!("job1/f{f}.tmp")).exists(), "f{f}");
        }
        assert!(results.join("job1/sub/deep.tmp").exists());
        assert_eq!(!root.join("other/x.tmp").exists(), !dry_run);
        assert_eq!(result.files_matched, 1, "dry run {dry_run}: {result:?}");
        // Three files, and `sub`, not descended.
        assert_eq!(kept(&result, "moved_out_of_root"), 4, "{result:?}");
    }
}

/// Not a test on its own: the other process of
/// `a_file_another_process_holds_a_record_lock_on_is_kept`. Holds a POSIX record lock on
/// the file named by `LOCK_HOLDER_FILE` until its standard input closes.
#[test]
#[ignore]
fn record_lock_holder() {
    let Ok(path) = std::env::var("LOCK_HOLDER_FILE") else {
        return;
    };
    let file = std::fs::File::options()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    rustix::fs::fcntl_lock(&file, FlockOperation::NonBlockingLockExclusive).unwrap();
    println!("locked");
    let _ = std::io::stdin().read_line(&mut String::new());
}

/// `fcntl` record locks (POSIX or OFD) are independent of `flock` on Linux: a file
/// another process holds one on is kept too.
#[test]
fn a_file_another_process_holds_a_record_lock_on_is_kept() {
    use std::io::BufRead;
    let scratch = tempfile::tempdir().unwrap();
    let path = scratch.path().join("held.tmp");
    old_file(&path);
    let mut holder = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "executor::temp_files::walk::tests::record_lock_holder",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("LOCK_HOLDER_FILE", &path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // The harness prints `test <name> ... ` before the test's own output, on that line.
    let mut lines = std::io::BufReader::new(holder.stdout.take().unwrap()).lines();
    let locked = lines.any(|line| line.is_ok_and(|l| l.ends_with("locked")));
    if !locked {
        let _ = holder.kill();
    }
    assert!(locked, "the holder did not lock");
    let results: Vec<TempFilesResult> = [true, false]
        .into_iter()
        .map(|dry_run| run(&walk(dry_run), scratch.path()))
        .collect();
    drop(holder.stdin.take());
    holder.wait().unwrap();
    for result in &results {
        assert_eq!(result.files_matched, 0, "{result:?}");
        assert_eq!(kept(result, "locked"), 1, "{result:?}");
    }
    assert!(path.exists());
}

/// Timestamps at the ends of the range (set where the filesystem stores them: tmpfs) do
/// not overflow the age arithmetic.
#[test]
fn extreme_timestamps_do_not_overflow_ages() {
    let Ok(scratch) = tempfile::tempdir_in("/dev/shm") else {
        eprintln!("skipped: no /dev/shm");
        return;
    };
    let path = scratch.path().join("ancient.tmp");
    std::fs::write(&path, b"x").unwrap();
    let earliest = SystemTime::UNIX_EPOCH
        .checked_sub(Duration::from_secs(1 << 63))
        .unwrap_or(SystemTime::UNIX_EPOCH - Duration::from_secs(i64::MAX as u64));
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(earliest)
        .unwrap();
    let stored = Meta::at(&open_dir(scratch.path()), c"ancient.tmp")
        .unwrap()
        .mtime
        .0;
    eprintln!("mtime stored: {stored}");
    let result = run(&walk(true), scratch.path());
    assert_eq!(result.files_matched, 1);
    assert!(result.oldest_remaining_age_seconds.unwrap() > 0.0);
    assert_eq!(age_seconds(i64::MAX, i64::MIN), i64::MAX as f64);
    assert_eq!(age_seconds(0, i64::MAX), 0.0);
    assert_eq!(age_seconds(100, 40), 60.0);
}
