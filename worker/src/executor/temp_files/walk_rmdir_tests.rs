//! Removing the directories a task emptied (`remove_empty_dirs`): only those, and never
//! one swapped or recreated under the walk.

use std::path::Path;
use std::time::{Duration, SystemTime};

use super::tests::*;
use super::*;

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

/// A turn deleted in `A` and ran out of time; before the next turn the application
/// dropped `A` and made a fresh, empty one. ext4 hands the new directory the freed inode
/// at once, so device and inode alone take it for the one this task emptied.
#[test]
fn a_directory_recreated_between_turns_is_not_the_one_this_task_emptied() {
    let scratch = tempfile::tempdir_in("/tmp").unwrap();
    let root = scratch.path().join("root");
    old_file(&root.join("A/a1.tmp"));
    std::fs::create_dir_all(root.join("A/z")).unwrap();
    std::fs::write(root.join("A/z/young.tmp"), b"x").unwrap();
    let mut w1 = walk(false);
    w1.remove_empty_dirs = true;
    let stop = w1.stop.clone();
    w1.after_open = Some(Box::new(move |rel: &Path| {
        if rel == Path::new("A/z") {
            stop.store(true, Ordering::SeqCst); // the turn budget runs out here
        }
    }));
    run(&w1, &root);
    let done = w1.done.lock().unwrap().clone();
    std::fs::remove_dir_all(root.join("A")).unwrap();
    std::fs::create_dir(root.join("A")).unwrap();
    let mut w2 = walk(false);
    w2.remove_empty_dirs = true;
    w2.resume = done.clone();
    *w2.done.lock().unwrap() = done;
    run(&w2, &root);
    assert!(
        root.join("A").exists(),
        "the fresh, never-touched A was removed"
    );
}

/// Right before its removal, the directory this task emptied is swapped for another
/// empty one at the same name: that one was never emptied by this task, and stays.
#[test]
fn an_emptied_directory_swapped_right_before_its_removal_is_kept() {
    let scratch = tempfile::tempdir().unwrap();
    let root_path = scratch.path().join("root");
    std::fs::create_dir_all(root_path.join("a")).unwrap();
    let root_fd = open_dir(&root_path);
    let fd = open_dir(&root_path.join("a"));
    let emptied = Meta::of(&fd).unwrap();
    std::fs::rename(root_path.join("a"), root_path.join("a-moved")).unwrap();
    std::fs::create_dir(root_path.join("a")).unwrap();
    let root_meta = Meta::of(&root_fd).unwrap();
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
    let w = walk(false);
    let rule = Unlink::Allowed;
    let outcome = w.remove_emptied(&root_fd, c"a", fd, &emptied, rule, &at, Path::new("a"));
    assert_eq!(outcome.remaining, 1);
    assert!(
        root_path.join("a").is_dir(),
        "the swapped-in directory was removed"
    );
    assert_eq!(
        w.counters.kept[Kept::Replaced as usize].load(Ordering::Relaxed),
        1
    );
}
