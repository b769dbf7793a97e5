//! One file, examined just now: whether it goes, and its unlink.

use std::ffi::CStr;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::Ordering;

use rustix::fs::{AtFlags, FileType};
use rustix::io::Errno;

use super::{Claim, Kept, Meta, Position, Reach, Unlink, Walk};

impl Walk {
    /// Decide on one file or symlink, examined just now; delete it when eligible.
    /// Returns true when it is (or, in a dry run, would be) gone.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn judge_file(
        &self,
        dir: &OwnedFd,
        name: &CStr,
        meta: &Meta,
        rule: Unlink,
        at: &Position<'_>,
        rel: &Path,
        reach: &mut Reach,
    ) -> bool {
        if let Some(patterns) = &self.patterns {
            if !patterns.is_match(rel) {
                return false;
            }
        }
        if !self.is_old(meta, at.root.age_by) {
            self.keep(Kept::Young);
            return false;
        }
        if let Some(why) = self.refusal(rule, meta) {
            self.keep(why);
            self.remember_remaining(meta);
            return false;
        }
        if self.capped() {
            self.counters.capped.store(true, Ordering::Relaxed);
            self.keep(Kept::Capped);
            self.remember_remaining(meta);
            return false;
        }
        // Held open (and locked) until the unlink, when locks are checked.
        let _lock = if self.check_locks && meta.kind == FileType::RegularFile {
            match self.lock(dir, name, meta, at.root.age_by) {
                Ok(lock) => Some(lock),
                Err(why) => {
                    self.keep(why);
                    if why != Kept::Young {
                        self.remember_remaining(meta);
                    }
                    return false;
                }
            }
        } else {
            None
        };
        if !self.still_in_root(dir, at, reach) {
            self.keep(Kept::MovedOutOfRoot);
            self.remember_remaining(meta);
            return false;
        }
        if let Some(cap) = self.max_files {
            // Sequential when capped: the check above and this claim cannot interleave.
            match self.claim(cap) {
                Claim::Granted => {}
                Claim::Capped => {
                    self.counters.capped.store(true, Ordering::Relaxed);
                    self.keep(Kept::Capped);
                    self.remember_remaining(meta);
                    return false;
                }
                Claim::Stopped => {
                    self.remember_remaining(meta);
                    return false;
                }
            }
        }
        let size = meta.size;
        self.counters.files_matched.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_matched
            .fetch_add(size, Ordering::Relaxed);
        if self.dry_run {
            self.remember_remaining(meta);
            self.sample(&at.root.name, rel);
            return true;
        }
        match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
            Ok(()) => {
                self.sample(&at.root.name, rel);
                self.counters.files_deleted.fetch_add(1, Ordering::Relaxed);
                self.counters.bytes_freed.fetch_add(size, Ordering::Relaxed);
                true
            }
            Err(Errno::NOENT) => {
                self.record(
                    &at.root.name,
                    rel,
                    "vanished before it could be deleted".into(),
                );
                true
            }
            Err(e) => {
                self.record(&at.root.name, rel, format!("cannot delete: {e}"));
                self.remember_remaining(meta);
                false
            }
        }
    }

    pub(super) fn remember_remaining(&self, meta: &Meta) {
        self.counters
            .oldest_remaining
            .fetch_min(meta.mtime.0, Ordering::Relaxed);
    }
}
