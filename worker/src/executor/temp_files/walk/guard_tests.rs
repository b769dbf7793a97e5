//! The checks on one entry before its unlink: locks, permissions, immutability, the
//! directory still being inside the root, and ages at the ends of the range.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use rustix::fs::FlockOperation;

use super::super::tests::{kept, old_file, open_dir, privileged, run, walk};
use super::super::{Meta, Privileges, TempFilesResult};
use crate::executor::temp_files::walk::age_seconds;

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
            "executor::temp_files::walk::guard::tests::record_lock_holder",
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
