//! The checks that decide whether one entry may be unlinked: the directory's unlink
//! rule, the entry's age, and the locks other processes hold on it.

use std::ffi::CStr;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::Ordering;

use rustix::fs::{Access, AtFlags, FileType, FlockOperation, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use rustix::process::{Flock, FlockOffsetType, FlockType};

use super::super::roots::identity_of;
use super::{AgeBy, Kept, Meta, Position, Unlink, Walk};

/// Unlinks in one directory between two checks that it is still inside the root.
pub const RECHECK_EVERY: u64 = 256;

/// Whether a directory being walked is still inside its root, as last checked.
#[derive(Debug, Default)]
pub struct Reach {
    /// Unlinks allowed since the last check; `None` before the first.
    since_check: Option<u64>,
    /// Found outside the root: nothing more in it is unlinked, nothing below it walked.
    pub moved_out: bool,
}

/// Whether `dir` is still the directory at `rel` beneath the open root: resolved from
/// the root without leaving it, following no symlink and crossing no mount.
fn reachable(root: &OwnedFd, rel: &Path, dir: &OwnedFd) -> bool {
    let Ok(held) = Meta::of(dir) else {
        return false;
    };
    // EAGAIN: a rename elsewhere raced the lookup; worth another try or two.
    for _ in 0..3 {
        match rustix::fs::openat2(
            root,
            rel,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH
                | ResolveFlags::NO_SYMLINKS
                | ResolveFlags::NO_MAGICLINKS
                | ResolveFlags::NO_XDEV,
        ) {
            Ok(fd) => return Meta::of(&fd).is_ok_and(|m| m.dev == held.dev && m.ino == held.ino),
            Err(Errno::AGAIN) => continue,
            Err(_) => return false,
        }
    }
    false
}

/// Refuses a file on which a record lock (`fcntl`, POSIX or OFD) is held, which `flock`
/// does not see on Linux. Asks `F_GETLK` whether a write lock on the whole file could be
/// placed: that reports POSIX locks of other processes and OFD locks on any other open
/// file description, read or write. (`F_OFD_GETLK` would also report this process's own
/// POSIX locks, which the worker never takes; rustix offers only `F_GETLK`, and the
/// workspace forbids `unsafe`.) Only a test, not a lock: a process may lock the file after
/// it, in the moment before the unlink.
fn record_locked(fd: &OwnedFd) -> Result<(), Kept> {
    let whole_file = Flock {
        start: 0,
        length: 0,
        pid: None,
        typ: FlockType::WriteLock,
        offset_type: FlockOffsetType::Set,
    };
    match rustix::process::fcntl_getlk(fd, &whole_file) {
        Ok(None) => Ok(()),
        Ok(Some(_)) => Err(Kept::Locked),
        // A filesystem without record locks: none can be held.
        Err(Errno::NOLCK) | Err(Errno::OPNOTSUPP) => Ok(()),
        Err(_) => Err(Kept::Unreadable),
    }
}

impl Walk {
    /// Whether entries of `dir` (at `at`) may still be unlinked: it must still be reachable
    /// from the root at its relative path, and the root's configured path must still lead
    /// to the root the walk holds. An application may build `root/job/` and rename it
    /// elsewhere while the walk holds it open, and an operator may rename the whole root
    /// away (`mv /srv/scratch /data/keep`); unlinking through the held handles would then
    /// delete outside the root. Checked before the first unlink in a directory and again
    /// every [`RECHECK_EVERY`] unlinks, to bound the cost: a directory (or root) moved
    /// right after a check can still lose up to that many files (the residual window).
    pub(super) fn still_in_root(
        &self,
        dir: &OwnedFd,
        at: &Position<'_>,
        reach: &mut Reach,
    ) -> bool {
        if reach.moved_out || at.root_moved.load(Ordering::Relaxed) {
            reach.moved_out = true;
            return false;
        }
        if let Some(n) = reach.since_check.filter(|n| *n < RECHECK_EVERY) {
            reach.since_check = Some(n + 1);
            return true;
        }
        if !self.root_in_place(at) {
            reach.moved_out = true;
            return false;
        }
        // The root itself is reachable when its path still leads to it.
        if at.rel.as_os_str().is_empty() || reachable(at.root_fd, &at.rel, dir) {
            reach.since_check = Some(1);
            return true;
        }
        reach.moved_out = true;
        self.record(
            &at.root.name,
            &at.rel,
            "moved out of the root during the walk; what is left in it is kept".into(),
        );
        false
    }

    /// Whether the root's configured path, opened again (`openat2(RESOLVE_NO_SYMLINKS)`,
    /// as for the walk's start), still leads to the root the walk holds: same device,
    /// inode and mount. If not, the root is marked moved (an error names it, once) and
    /// nothing more is unlinked in it.
    fn root_in_place(&self, at: &Position<'_>) -> bool {
        if identity_of(at.root_fd).is_ok_and(|held| at.root.still_at_path(&held)) {
            return true;
        }
        if !at.root_moved.swap(true, Ordering::SeqCst) {
            self.record(
                &at.root.name,
                Path::new(""),
                format!(
                    "temp root `{}` ({}) was moved or replaced during the walk; nothing more \
                     is deleted in it",
                    at.root.name,
                    at.root.path.display()
                ),
            );
        }
        false
    }

    /// Whether this worker will be allowed to unlink entries of `dir`.
    pub(super) fn unlink_rule(&self, dir: &OwnedFd, meta: &Meta) -> Unlink {
        if meta.sealed {
            return Unlink::Refused(Kept::Immutable);
        }
        // Effective ids and capabilities, as unlink(2) will judge them.
        if rustix::fs::accessat(
            dir,
            c".",
            Access::WRITE_OK | Access::EXEC_OK,
            AtFlags::EACCESS,
        )
        .is_err()
        {
            return Unlink::Refused(Kept::NotPermitted);
        }
        let sticky = meta.mode & 0o1000 != 0;
        if sticky && !self.privileges.fowner && meta.uid != self.privileges.euid {
            Unlink::Sticky
        } else {
            Unlink::Allowed
        }
    }

    /// Why an entry of a directory under `rule` cannot be unlinked, if it cannot.
    pub(super) fn refusal(&self, rule: Unlink, entry: &Meta) -> Option<Kept> {
        if entry.sealed {
            return Some(Kept::Immutable);
        }
        match rule {
            Unlink::Allowed => None,
            Unlink::Sticky if entry.uid == self.privileges.euid => None,
            Unlink::Sticky => Some(Kept::NotPermitted),
            Unlink::Refused(why) => Some(why),
        }
    }

    pub(super) fn is_old(&self, meta: &Meta, age_by: AgeBy) -> bool {
        let cutoff = (
            self.cutoff.timestamp(),
            self.cutoff.timestamp_subsec_nanos(),
        );
        (!age_by.mtime || meta.mtime < cutoff)
            && (!age_by.atime || meta.atime < cutoff)
            && (!age_by.ctime || meta.ctime < cutoff)
    }

    /// Open the file without following symlinks and take its `flock` without waiting.
    /// Refuses a file another process holds, one that is not the file examined, and one
    /// that became young meanwhile.
    pub(super) fn lock(
        &self,
        dir: &OwnedFd,
        name: &CStr,
        seen: &Meta,
        age_by: AgeBy,
    ) -> Result<OwnedFd, Kept> {
        let fd = rustix::fs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::ACCESS | Errno::PERM => Kept::Unreadable,
            // A write lease held by another process.
            Errno::WOULDBLOCK => Kept::InUse,
            _ => Kept::Replaced,
        })?;
        let now = Meta::of(&fd).map_err(|_| Kept::Replaced)?;
        if now.dev != seen.dev || now.ino != seen.ino || now.kind != FileType::RegularFile {
            return Err(Kept::Replaced);
        }
        if !self.is_old(&now, age_by) {
            return Err(Kept::Young);
        }
        match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(Errno::WOULDBLOCK) => return Err(Kept::InUse),
            // A filesystem without flock: the file cannot be held by another process.
            Err(Errno::NOLCK) | Err(Errno::OPNOTSUPP) => {}
            Err(_) => return Err(Kept::Unreadable),
        }
        record_locked(&fd)?;
        Ok(fd)
    }
}

#[cfg(test)]
#[path = "guard_tests.rs"]
mod tests;
