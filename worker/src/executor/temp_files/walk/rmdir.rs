//! Removing a directory this task emptied: the last checks, then `unlinkat(AT_REMOVEDIR)`.

use std::ffi::CStr;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::Ordering;

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use super::{DirOutcome, Kept, Meta, Position, Reach, Unlink, Walk};

/// The parent's view of a directory left in place.
const KEPT: DirOutcome = DirOutcome {
    remaining: 1,
    removed_any: true,
    incomplete: false,
};

/// The parent's view of a directory that is (or, in a dry run, would be) gone.
const GONE: DirOutcome = DirOutcome {
    remaining: 0,
    removed_any: true,
    incomplete: false,
};

/// Whether `name` in `parent` is still `emptied`: opened again without following a
/// symlink, same device, inode and birth time.
fn still_there(parent: &OwnedFd, name: &CStr, emptied: &Meta) -> bool {
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::openat(parent, name, flags, Mode::empty())
        .is_ok_and(|fd| Meta::of(&fd).is_ok_and(|now| same_dir(&now, emptied)))
}

fn same_dir(a: &Meta, b: &Meta) -> bool {
    (a.dev, a.ino, a.btime) == (b.dev, b.ino, b.btime)
}

impl Walk {
    /// Remove `name` in `parent` (at `at`), which this task just emptied: `fd` is that
    /// directory, still open, and `emptied` its `statx`. Returns the parent's view:
    /// `remaining` is 0 when it is (or would be) gone.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn remove_emptied(
        &self,
        parent: &OwnedFd,
        name: &CStr,
        fd: OwnedFd,
        emptied: &Meta,
        rule: Unlink,
        at: &Position<'_>,
        rel: &Path,
    ) -> DirOutcome {
        if let Some(why) = self.refusal(rule, emptied) {
            self.keep(why);
            return KEPT;
        }
        if !self.still_in_root(parent, at, &mut Reach::default()) {
            self.keep(Kept::MovedOutOfRoot);
            return KEPT;
        }
        self.counters.dirs_matched.fetch_add(1, Ordering::Relaxed);
        if self.dry_run {
            return GONE;
        }
        // Only the parent was checked above: the name must still lead to the directory
        // this task emptied, not to one swapped in at that name meanwhile. `fd` is held
        // until the rmdir, so its inode cannot be freed and reused by another directory in
        // between. Residual window: a swap between this check and `unlinkat` is not seen;
        // `AT_REMOVEDIR` removes only an empty directory, so at worst an empty directory
        // put there in that instant is removed, and no file is lost.
        if !still_there(parent, name, emptied) {
            self.keep(Kept::Replaced);
            self.record(
                &at.root.name,
                rel,
                "replaced before it could be removed; kept".into(),
            );
            return KEPT;
        }
        let removed = rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR);
        drop(fd);
        match removed {
            Ok(()) => {
                self.counters.dirs_removed.fetch_add(1, Ordering::Relaxed);
                GONE
            }
            // Something appeared in it meanwhile: leave it.
            Err(Errno::NOTEMPTY) | Err(Errno::EXIST) => KEPT,
            Err(e) => {
                self.record(
                    &at.root.name,
                    rel,
                    format!("cannot remove empty directory: {e}"),
                );
                KEPT
            }
        }
    }
}
