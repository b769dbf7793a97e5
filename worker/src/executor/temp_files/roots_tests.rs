//! Roots: parsing, the paths refused, and the directory a walk may open.

use super::*;
use std::path::{Path, PathBuf};

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
        "/run",
        "/run/user/1000",
        "/var/run",
        "/var/log",
        "/var/log/app",
        "/var/spool/cron",
        "/var/cache",
        "/var/mail",
    ] {
        assert!(system_path(Path::new(refused)).is_some(), "{refused}");
    }
    for allowed in [
        "/tmp",
        "/var/tmp",
        "/var/tmp/app",
        "/var/lib-backup",
        "/runner",
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

/// `/proc` holds other processes' views of the filesystem (`/proc/<pid>/root`, `cwd`,
/// `fd/*`): never a root, however it is spelt, allowance or not.
#[test]
fn roots_in_proc_are_refused_in_any_spelling() {
    let scratch = tempfile::tempdir().unwrap();
    let link = scratch.path().join("to-cwd");
    std::os::unix::fs::symlink("/proc/self/cwd", &link).unwrap();
    let link = link.display().to_string();
    for spelling in [
        "//",
        "/./",
        "/proc",
        "/proc/self/root",
        "/proc/1/root",
        "/proc/self/cwd",
        "/proc/thread-self/cwd",
        "//proc/self/cwd",
        "/./proc/self/cwd",
        "/tmp/../proc/self/cwd",
        "/proc/self/root/tmp",
        "/proc/self/fd/0",
        "/proc/does-not-exist/x",
        &link,
    ] {
        for option in ["", ";allow_system_path"] {
            let item = format!("x={spelling}{option}");
            assert!(TempRoot::parse(&item).is_err(), "{item} was accepted");
        }
    }
}

#[test]
fn tmp_and_var_tmp_are_still_roots() {
    for parent in ["/tmp", "/var/tmp"] {
        let scratch = tempfile::tempdir_in(parent).unwrap();
        TempRoot::parse(&format!("x={}", scratch.path().display())).unwrap();
    }
    TempRoot::parse("x=/tmp").unwrap();
    TempRoot::parse("x=/var/tmp").unwrap();
}

/// The comparison behind the bind-mount check, on real directories: `/` itself, given
/// through a spelling the path check does not see, is recognised by device and inode.
#[test]
fn a_directory_is_recognised_as_a_system_directory_by_device_and_inode() {
    let table = SystemDirs::of_this_host();
    let root_itself = identity_at(Path::new("/proc/self/root")).unwrap();
    assert_eq!(table.same_as(&root_itself), Some(Path::new("/")));
    let etc = identity_at(Path::new("/proc/self/root/etc")).unwrap();
    assert_eq!(table.same_as(&etc), Some(Path::new("/etc")));
    let scratch = tempfile::tempdir().unwrap();
    assert!(table
        .same_as(&identity_at(scratch.path()).unwrap())
        .is_none());
}

/// Unmounts (never deletes) when dropped; the mount point is then removed only if empty.
struct Bind(PathBuf);

impl Bind {
    fn new(source: &str, at: PathBuf) -> Option<Self> {
        std::fs::create_dir(&at).unwrap();
        let bound = crate::executor::temp_files::walk::tests::privileged(
            "mount",
            &["--bind", source, at.to_str().unwrap()],
        );
        if !bound {
            std::fs::remove_dir(&at).unwrap();
        }
        bound.then_some(Bind(at))
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        let unmounted = std::process::Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        // Never a recursive removal: if the unmount failed, the mount point holds `/`.
        if !unmounted || std::fs::remove_dir(&self.0).is_err() {
            eprintln!("could not unmount {}; left in place", self.0.display());
        }
    }
}

/// A bind mount of `/` or of a system tree has an innocent path; its device and inode
/// give it away. Needs the privilege to mount; says so and passes otherwise.
#[test]
fn a_bind_mount_of_the_filesystem_root_or_of_a_system_tree_is_refused() {
    // Not a `TempDir`: its drop removes recursively, and a mount of `/` may be inside.
    let scratch = tempfile::tempdir().unwrap().keep();
    let Some(root_bind) = Bind::new("/", scratch.join("rootfs")) else {
        return;
    };
    for option in ["", ";allow_system_path"] {
        let error = TempRoot::parse(&format!("x={}{option}", root_bind.0.display()))
            .unwrap_err()
            .to_string();
        assert!(error.contains("same directory as /"), "{error}");
    }
    drop(root_bind);
    let etc_bind = Bind::new("/etc", scratch.join("etc")).unwrap();
    let error = TempRoot::parse(&format!("x={}", etc_bind.0.display()))
        .unwrap_err()
        .to_string();
    assert!(error.contains("same directory as /etc"), "{error}");
    assert!(error.contains("allow_system_path"), "{error}");
    TempRoot::parse(&format!("x={};allow_system_path", etc_bind.0.display())).unwrap();
    drop(etc_bind);
    std::fs::remove_dir(&scratch).unwrap();
}

/// Kernels before 5.8 do not report mount ids: a bind mount of the same filesystem below
/// the root could not be told apart, so such a root is refused at start-up.
#[test]
fn a_root_without_a_mount_id_is_refused() {
    let error = require_mount_id(None).unwrap_err();
    assert!(error.contains("Linux 5.8"), "{error}");
    assert_eq!(require_mount_id(Some(42)), Ok(42));
    // This kernel reports them: a root parses and carries its mount id.
    let scratch = tempfile::tempdir().unwrap();
    let root = TempRoot::parse(&format!("x={}", scratch.path().display())).unwrap();
    assert!(root.open().unwrap().1.mnt_id.is_some());
}
