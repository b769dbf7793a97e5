//! The checks that decide whether one entry may be unlinked: the directory's unlink
//! rule, the entry's age, and the locks other processes hold on it.

use std::ffi::CStr;
use std::os::fd::OwnedFd;

use rustix::fs::{Access, AtFlags, FileType, FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use super::{AgeBy, Kept, Meta, Unlink, Walk};

impl Walk {
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
            Ok(()) => Ok(fd),
            Err(Errno::WOULDBLOCK) => Err(Kept::InUse),
            // A filesystem without flock: the file cannot be held by another process.
            Err(Errno::NOLCK) | Err(Errno::OPNOTSUPP) => Ok(fd),
            Err(_) => Err(Kept::Unreadable),
        }
    }
}
