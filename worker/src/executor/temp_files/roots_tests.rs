//! Roots: parsing, the paths refused, and the directory a walk may open.

use super::*;

#[test]
fn system_paths_are_recognized() {
    for refused in [
        "/etc",
        "/etc/x",
        "/usr/lib",
        "/lib64",
        "/libx32/a",
        "/var/lib/postgresql",
        "/var",
        "/home",
        "/home/alice",
        "/root",
        "/proc/1",
        "/sys",
        "/dev/shm",
        "/boot",
    ] {
        assert!(system_path(Path::new(refused)).is_some(), "{refused}");
    }
    for allowed in [
        "/tmp",
        "/var/tmp/app",
        "/home/alice/tmp",
        "/data/scratch",
        "/srv/x",
    ] {
        assert_eq!(system_path(Path::new(allowed)), None, "{allowed}");
    }
}

#[test]
fn a_root_that_resolves_to_the_filesystem_root_is_refused() {
    let error = TempRoot::parse("x=/tmp/..").unwrap_err().to_string();
    assert!(error.contains("resolves to the filesystem root"), "{error}");
    let scratch = tempfile::tempdir().unwrap();
    let link = scratch.path().join("to-root");
    std::os::unix::fs::symlink("/", &link).unwrap();
    let error = TempRoot::parse(&format!("x={}", link.display()))
        .unwrap_err()
        .to_string();
    assert!(error.contains("resolves to the filesystem root"), "{error}");
}

#[test]
fn a_root_on_a_system_tree_needs_an_explicit_allowance() {
    let scratch = tempfile::tempdir().unwrap();
    let link = scratch.path().join("etc-link");
    std::os::unix::fs::symlink("/etc", &link).unwrap();
    let error = TempRoot::parse(&format!("x={}", link.display()))
        .unwrap_err()
        .to_string();
    assert!(error.contains("system tree /etc"), "{error}");
    assert!(error.contains("allow_system_path"), "{error}");
    let root = TempRoot::parse(&format!("x={};allow_system_path", link.display())).unwrap();
    assert_eq!(root.path, Path::new("/etc"));
    assert!(TempRoot::parse("x=/var/lib/app").is_err());
    assert!(TempRoot::parse("x=/home/alice").is_err());
}

#[test]
fn root_options_are_parsed_and_unknown_ones_refused() {
    let scratch = tempfile::tempdir().unwrap();
    let p = scratch.path().display();
    let root = TempRoot::parse(&format!("x={p};age_by=atime+mtime")).unwrap();
    assert_eq!(
        root.age_by,
        AgeBy {
            atime: true,
            mtime: true,
            ctime: false
        }
    );
    assert_eq!(root.age_by.to_string(), "atime+mtime");
    assert!(TempRoot::parse(&format!("x={p};age_by=btime")).is_err());
    assert!(TempRoot::parse(&format!("x={p};follow_symlinks")).is_err());
}

#[test]
fn a_parent_swapped_for_a_symlink_after_start_up_is_not_followed() {
    let scratch = tempfile::tempdir().unwrap();
    let parent = scratch.path().join("app");
    std::fs::create_dir_all(parent.join("scratch")).unwrap();
    let root = TempRoot::parse(&format!("x={}", parent.join("scratch").display())).unwrap();
    root.open().unwrap();
    // The parent is moved away and replaced by a symlink to a directory that also has
    // a `scratch` inside.
    let elsewhere = scratch.path().join("elsewhere");
    std::fs::create_dir_all(elsewhere.join("scratch")).unwrap();
    std::fs::rename(&parent, scratch.path().join("app-moved")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &parent).unwrap();
    let error = root.open().unwrap_err();
    assert!(matches!(error, RootError::Refused(_)), "{error}");
    assert!(error.to_string().contains("symlink"), "{error}");
}

#[test]
fn a_root_replaced_by_another_directory_after_start_up_is_refused() {
    let scratch = tempfile::tempdir().unwrap();
    let path = scratch.path().join("scratch");
    std::fs::create_dir(&path).unwrap();
    let root = TempRoot::parse(&format!("x={}", path.display())).unwrap();
    std::fs::rename(&path, scratch.path().join("moved")).unwrap();
    std::fs::create_dir(&path).unwrap();
    let error = root.open().unwrap_err();
    assert!(
        error.to_string().contains("no longer the directory"),
        "{error}"
    );
}

/// Every task walks a clone of the configured root: a root that was not there at
/// start-up learns its directory at the first walk, and every later clone must check
/// that same directory.
#[test]
fn every_clone_checks_the_directory_learned_at_the_first_walk() {
    let scratch = tempfile::tempdir().unwrap();
    let path = scratch.path().join("mounted-later");
    let root = TempRoot::parse(&format!("x={}", path.display())).unwrap();
    std::fs::create_dir(&path).unwrap();
    root.clone().open().unwrap();
    // A clone made after the first walk, then the directory renamed away and replaced.
    let later = root.clone();
    std::fs::rename(&path, scratch.path().join("moved")).unwrap();
    std::fs::create_dir(&path).unwrap();
    for (which, clone) in [
        ("clone after the first walk", later),
        ("new clone", root.clone()),
    ] {
        let error = clone.open().unwrap_err();
        assert!(
            error.to_string().contains("no longer the directory"),
            "{which}: {error}"
        );
    }
    assert!(root.open().is_err(), "the configured root itself");
}
