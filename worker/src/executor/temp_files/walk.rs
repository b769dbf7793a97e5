//! The walk of one task over its roots: every syscall that decides what is deleted.
//!
//! - It works relative to open directory handles (`openat`, `statx`, `unlinkat`), opening
//!   each subdirectory with `O_NOFOLLOW | O_DIRECTORY` and checking that the opened
//!   directory is the one it examined (device, inode and birth time), so a directory
//!   swapped for a symlink mid-walk is never followed.
//! - Symlinks are never followed: a symlink is judged by its own age and unlinked.
//! - It never crosses a mount point: an entry on another mount (another filesystem, or a
//!   bind mount of the same one: `statx` mount id and `STATX_ATTR_MOUNT_ROOT`) is skipped,
//!   and so is an automount point (`STATX_ATTR_AUTOMOUNT`; `statx` is called with
//!   `AT_NO_AUTOMOUNT`, so examining one does not trigger it).
//! - A file is deleted only when the real run can delete it: not immutable or append-only
//!   (itself or its directory), in a directory the worker may write (sticky bit included),
//!   and, with lock checks on, not held by another process's `flock` or record lock
//!   (`fcntl`, POSIX or OFD): the file is opened without following symlinks, `flock`ed
//!   without blocking, tested for record locks (`F_GETLK`, a test, not a lock), and
//!   unlinked while the `flock` is held. A dry run makes the same checks, so it predicts
//!   the real run.
//! - The age is read (`statx`, no follow) just before the file is judged, and again on the
//!   opened file when locks are checked, right before `unlinkat`.
//! - Before the first unlink in a directory, and again every 256 unlinks there, the walk
//!   checks that the directory is still reachable from the root at its path
//!   (`openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)`, same device and
//!   inode as the held handle), and that the root's configured path still leads to the
//!   root the walk holds (`openat2(RESOLVE_NO_SYMLINKS)`; device, inode and mount id). A
//!   directory moved out of the root keeps what is left in it and is not descended
//!   further; a root renamed away mid-walk has nothing more deleted in it. A move right
//!   after a check can still cost up to 256 files of that directory: the residual window
//!   of the bounded check.
//! - `remove_empty_dirs` removes a directory only when this task deleted something in it
//!   (in any turn) and it is now empty, and so on upwards: never a directory that was
//!   empty before, or that no pattern reached. Across turns it is known by device, inode
//!   and birth time (ext4 reuses a freed inode at once); without a birth time it is kept.
//! - With `max_files`, the walk is sequential in name order, so which files a capped run
//!   takes is the same in the dry run and in the real run. A capped real run claims its
//!   files against a count every copy of the task shares, kept in each root and written
//!   before the files claimed are deleted ([`claims`]); the walk never enters a
//!   directory of that name (at a root's top, whatever it is, it is not even counted).

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, OsStr};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use globset::GlobSet;
use rayon::prelude::*;
use rustix::fs::FileType;
use rustix::io::Errno;

use super::roots::{AgeBy, RootError, TempRoot};
use super::{DirId, FileError, RootProgress, TempFilesResult};
use crate::executor::ExecError;

mod cap;
pub mod claims;
mod file;
mod guard;
mod meta;
mod rmdir;
mod tally;

use claims::{Claim, Claims, ClaimsError, CLAIMS_DIR};
use guard::Reach;
pub use meta::{age_seconds, encode, Counters, DirOutcome, Kept, Meta, Privileges, Unlink};
use meta::{open_dir_at, read_entries};

/// Errors kept in a result; the rest are only counted.
pub use shared::results::MAX_ERRORS;
/// Deeper trees are not descended (and reported): bounds open descriptors per walk.
const MAX_DEPTH: usize = 128;

pub struct Walk {
    pub cutoff: DateTime<Utc>,
    pub patterns: Option<GlobSet>,
    pub dry_run: bool,
    pub remove_empty_dirs: bool,
    pub max_files: Option<u64>,
    /// The task: a capped real run keeps its count under this id ([`claims`]).
    pub task_id: uuid::Uuid,
    /// The count every copy of a capped real run shares, opened when the run starts.
    pub claims: std::sync::OnceLock<Claims>,
    /// Why the shared count could not be kept: the walk stopped deleting.
    pub claims_failed: Mutex<Option<ClaimsError>>,
    pub check_locks: bool,
    pub privileges: Privileges,
    pub stop: Arc<AtomicBool>,
    pub counters: Counters,
    pub errors: Mutex<Vec<FileError>>,
    /// The first files matched (dry run) or deleted, as `root/path`.
    pub samples: Mutex<Vec<String>>,
    /// Set when `stop` made the walk pass over entries: the task is not complete.
    pub interrupted: AtomicBool,
    /// What earlier turns finished (skipped now), and where they deleted.
    pub resume: BTreeMap<String, RootProgress>,
    /// What is finished, earlier turns included.
    pub done: Mutex<BTreeMap<String, RootProgress>>,
    /// Test seam: called with a directory's path relative to its root right after the
    /// directory was opened and read, before anything in it is judged.
    #[cfg(test)]
    pub after_open: Option<Hook>,
}

#[cfg(test)]
pub type Hook = Box<dyn Fn(&std::path::Path) + Send + Sync>;

/// Where the walk is: which root, the directory's path relative to it, its mount, and
/// whether entries in it can be unlinked.
pub struct Position<'a> {
    pub root: &'a TempRoot,
    /// The root, open: directories are checked to be still inside it before unlinks.
    pub root_fd: &'a OwnedFd,
    pub rel: PathBuf,
    /// Set once the root's configured path no longer leads to `root_fd` (renamed away
    /// mid-walk): nothing more is unlinked in this root.
    pub root_moved: &'a AtomicBool,
    pub dev: u64,
    pub mnt_id: Option<u64>,
    pub depth: usize,
}

impl Walk {
    pub fn run(&self, roots: &[TempRoot]) -> Result<(), ExecError> {
        self.counters
            .oldest_remaining
            .store(i64::MAX, Ordering::Relaxed);
        // Before anything is deleted: a count that cannot be kept deletes nothing.
        if !self.open_count(roots)? {
            return Ok(());
        }
        let walked = self.walk_roots(roots);
        self.close_count()?;
        walked
    }

    fn walk_roots(&self, roots: &[TempRoot]) -> Result<(), ExecError> {
        for root in roots {
            let prior = self.resume.get(&root.name).cloned().unwrap_or_default();
            if prior.complete {
                continue;
            }
            let (fd, identity) = root.open().map_err(root_error)?;
            let root_moved = AtomicBool::new(false);
            let position = Position {
                root,
                root_fd: &fd,
                rel: PathBuf::new(),
                root_moved: &root_moved,
                dev: identity.dev,
                mnt_id: identity.mnt_id,
                depth: 0,
            };
            let meta = Meta::of(&fd).map_err(|e| {
                ExecError::transient(format!("temp root `{}` cannot be examined: {e}", root.name))
            })?;
            let outcome = self.walk_entries(&fd, &meta, &position, Some(&prior));
            if !outcome.incomplete {
                self.mark(&root.name, |p| p.complete = true);
            }
        }
        Ok(())
    }

    fn keep(&self, why: Kept) {
        self.counters.kept[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// An entry passed over because the walk was told to stop.
    fn stopped(&self, outcome: &mut DirOutcome) {
        self.interrupted.store(true, Ordering::Relaxed);
        outcome.incomplete = true;
        outcome.remaining += 1;
    }

    fn mark(&self, root: &str, change: impl FnOnce(&mut RootProgress)) {
        let mut done = self.done.lock().expect("done lock");
        change(done.entry(root.to_owned()).or_default());
    }

    /// Walk the entries of `dir`. `top`: what earlier turns did in this root, when `dir`
    /// is the root itself (its finished parts are skipped).
    fn walk_entries(
        &self,
        dir: &OwnedFd,
        meta: &Meta,
        at: &Position<'_>,
        top: Option<&RootProgress>,
    ) -> DirOutcome {
        let mut outcome = DirOutcome::default();
        // A directory an earlier turn deleted in but did not finish counts as emptied by
        // this task: the same directory (device, inode and birth time), not just the same
        // path. Without a birth time it is not known to be the same: it stays.
        if let Some(prior) = self.resume.get(&at.root.name) {
            let rel = encode(at.rel.as_os_str().as_bytes());
            if prior
                .touched
                .get(&rel)
                .is_some_and(|id| id.same_as(&DirId::of(meta)))
            {
                outcome.removed_any = true;
            }
        }
        let mut entries = match read_entries(dir) {
            Ok(entries) => entries,
            Err(e) => {
                self.record(
                    &at.root.name,
                    &at.rel,
                    format!("cannot read directory: {e}"),
                );
                outcome.remaining = 1; // unknown content: never treat it as empty
                return outcome;
            }
        };
        let capped_walk = self.max_files.is_some();
        if capped_walk {
            entries.sort();
        }
        #[cfg(test)]
        if let Some(hook) = &self.after_open {
            hook(&at.rel);
        }
        let rule = self.unlink_rule(dir, meta);
        let mut reach = Reach::default();
        let mut subdirs = Vec::new();
        for name in entries {
            if top.is_some() && name.as_bytes() == CLAIMS_DIR.as_bytes() {
                // The counts of capped tasks: never judged, counted or entered.
                continue;
            }
            let rel = at.rel.join(OsStr::from_bytes(name.as_bytes()));
            if let Some(prior) = top {
                if prior.subdirs_done.contains(&encode(name.as_bytes())) {
                    outcome.remaining += 1;
                    continue;
                }
            }
            // A real run may stop at any entry: what it deleted is gone and counted. A dry
            // run stops only between the root's top-level parts, so that a part is counted
            // whole or not at all (a later turn counts it again from the start).
            if !self.dry_run && self.stop.load(Ordering::Relaxed) {
                self.stopped(&mut outcome);
                continue;
            }
            let entry = match Meta::at(dir, &name) {
                Ok(entry) => entry,
                Err(Errno::NOENT) => {
                    self.record(&at.root.name, &rel, "vanished during the walk".into());
                    continue;
                }
                Err(e) => {
                    self.record(&at.root.name, &rel, format!("cannot examine: {e}"));
                    outcome.remaining += 1;
                    continue;
                }
            };
            if entry.kind == FileType::Directory && name.as_bytes() == CLAIMS_DIR.as_bytes() {
                // Another root's counts, seen through an overlapping mount: left alone.
                outcome.remaining += 1;
                continue;
            }
            if entry.other_mount(at) {
                // A mount point (or a file bind-mounted here): never entered, never removed.
                self.keep(Kept::OtherMount);
                outcome.remaining += 1;
                continue;
            }
            match entry.kind {
                FileType::Directory => subdirs.push((name, entry, rel)),
                FileType::RegularFile | FileType::Symlink
                    if top.is_some_and(|prior| prior.files_done) =>
                {
                    // Judged by an earlier turn.
                    outcome.remaining += 1;
                }
                FileType::RegularFile | FileType::Symlink => {
                    if self.judge_file(dir, &name, &entry, rule, at, &rel, &mut reach) {
                        outcome.removed_any = true;
                    } else {
                        outcome.remaining += 1;
                        // Perhaps passed over for the stop (its claim waited for another
                        // copy's lock): a later turn judges this directory again.
                        if !self.dry_run && self.stop.load(Ordering::Relaxed) {
                            outcome.incomplete = true;
                        }
                    }
                }
                _ => {
                    self.keep(Kept::SpecialFile);
                    outcome.remaining += 1;
                }
            }
        }
        if top.is_some() && !outcome.incomplete {
            self.mark(&at.root.name, |p| p.files_done = true);
        }
        if reach.moved_out || at.root_moved.load(Ordering::Relaxed) {
            // No longer inside the root: nothing below it is the root's business.
            for _ in &subdirs {
                self.keep(Kept::MovedOutOfRoot);
            }
            outcome.remaining += subdirs.len() as u64;
            return outcome;
        }
        let visit = |(name, entry, rel): (CString, Meta, PathBuf)| {
            if top.is_some() && self.stop.load(Ordering::Relaxed) {
                let mut skipped = DirOutcome::default();
                self.stopped(&mut skipped);
                return skipped;
            }
            let child = self.visit_subdir(dir, &name, &entry, rule, at, rel);
            if top.is_some() && !child.incomplete {
                self.mark(&at.root.name, |p| {
                    p.subdirs_done.insert(encode(name.as_bytes()));
                });
            }
            child
        };
        // Capped: one directory after the other, in name order, so the same files are
        // taken every time.
        let children: Vec<DirOutcome> = if capped_walk {
            subdirs.into_iter().map(visit).collect()
        } else {
            subdirs.into_par_iter().map(visit).collect()
        };
        for child in children {
            outcome.remaining += child.remaining;
            outcome.removed_any |= child.removed_any;
            outcome.incomplete |= child.incomplete;
        }
        outcome
    }

    /// Walk one subdirectory and, if asked, remove it when this task emptied it.
    /// Returns the parent's view: `remaining` is 0 when the subdirectory is (or would be) gone.
    pub fn visit_subdir(
        &self,
        parent: &OwnedFd,
        name: &CStr,
        seen: &Meta,
        rule: Unlink,
        at: &Position<'_>,
        rel: PathBuf,
    ) -> DirOutcome {
        let root = &at.root.name;
        if at.depth + 1 > MAX_DEPTH {
            self.record(
                root,
                &rel,
                format!("deeper than {MAX_DEPTH} levels; not descended"),
            );
            return DirOutcome::kept();
        }
        let fd = match open_dir_at(parent, name) {
            Ok(fd) => fd,
            Err(Errno::LOOP) | Err(Errno::NOTDIR) => {
                // It was a directory when examined and is not any more: swapped mid-walk.
                self.keep(Kept::Replaced);
                self.record(root, &rel, "replaced during the walk; not followed".into());
                return DirOutcome::kept();
            }
            Err(Errno::NOENT) => {
                self.record(root, &rel, "vanished during the walk".into());
                return DirOutcome::default();
            }
            Err(e) => {
                self.record(root, &rel, format!("cannot open directory: {e}"));
                return DirOutcome::kept();
            }
        };
        let meta = match Meta::of(&fd) {
            Ok(now)
                if (now.dev, now.ino, now.btime) == (seen.dev, seen.ino, seen.btime)
                    && !now.other_mount(at) =>
            {
                now
            }
            _ => {
                self.keep(Kept::Replaced);
                self.record(root, &rel, "replaced during the walk; not followed".into());
                return DirOutcome::kept();
            }
        };
        let position = Position {
            root: at.root,
            root_fd: at.root_fd,
            rel,
            root_moved: at.root_moved,
            dev: at.dev,
            mnt_id: at.mnt_id,
            depth: at.depth + 1,
        };
        let inner = self.walk_entries(&fd, &meta, &position, None);
        if inner.incomplete && inner.removed_any {
            // A later turn finishes this directory: it must know the task deleted here.
            self.mark(root, |p| {
                p.touched.insert(
                    encode(position.rel.as_os_str().as_bytes()),
                    DirId::of(&meta),
                );
            });
        }
        let empty = inner.remaining == 0 && !inner.incomplete;
        // Only a directory this task emptied: never one that was empty before, or that
        // held only what no pattern matched.
        if !(self.remove_empty_dirs && empty && inner.removed_any) {
            return DirOutcome {
                remaining: 1,
                removed_any: inner.removed_any,
                incomplete: inner.incomplete,
            };
        }
        self.remove_emptied(parent, name, fd, &meta, rule, at, &position.rel)
    }
}

/// A root that cannot be walked: a missing mount or volume may appear later (worth
/// another attempt); one that is not the configured directory never will.
fn root_error(error: RootError) -> ExecError {
    match error {
        RootError::Unavailable(message) => ExecError::transient(message),
        RootError::Refused(message) => ExecError::permanent(message),
    }
}

#[cfg(test)]
#[path = "walk_tests.rs"]
pub mod tests;

#[cfg(test)]
#[path = "walk_rmdir_tests.rs"]
mod rmdir_tests;
