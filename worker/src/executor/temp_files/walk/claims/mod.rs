//! `max_files` shared by every copy of a task: the count of files claimed, kept beside
//! the files.
//!
//! Delivery is at least once, so one task can run twice, one copy after the other or
//! both at once, each starting from the progress its own message carries. Counting only
//! what a copy's message carries would let every copy delete up to `max_files`. So a
//! capped real run keeps the task's count in each of its roots, in
//! [`CLAIMS_DIR`]`/<task id>`: whoever sees the same files sees the same count.
//!
//! - A copy claims files in chunks of [`CHUNK`]: under an exclusive `flock` of the task's
//!   file in every root (taken in the files' device and inode order), it reads the highest count, adds what it claims
//!   (never past `max_files`), writes the new count to every file and `fsync`s them,
//!   before it deletes any of the files claimed. What a turn claimed and did not use is
//!   given back when the turn ends; a copy that dies keeps it claimed, so the task can
//!   delete up to one chunk less than `max_files`, never more.
//! - The files are the authority: the highest count among them is the task's. Only when
//!   none holds a count yet (the task's first capped turn here, a task that began on an
//!   older worker, or one whose file was removed) does the copy's own count, what its
//!   message carries, seed them: as for `cleanup_runs`' progress table. (A floor taken
//!   from every copy's message would let a copy's count absorb what another copy claimed
//!   and has not used yet, and that copy's giving it back would then undercount.)
//! - The directory is the worker's own (created `0700`, opened without following a
//!   symlink, owned by the worker, writable by no one else), and every file in it is
//!   opened without following a symlink and must be a regular file of the worker's. A
//!   capped real run refuses to start when any of this does not hold, deleting nothing,
//!   and so does its dry run ([`Claims::check`], which writes nothing).
//! - Every root the task still has to walk must be open to hold its count: a capped real
//!   run deletes nothing while one of them cannot be opened (a count it cannot read may be
//!   higher than the others). Two root names for one directory share one count file.
//! - A copy waits for another's lock at most 5 s (`LOCK_PATIENCE`), and no longer than its
//!   walk is allowed to go on; a copy that found the cap reached does not ask again in
//!   that turn.
//! - The walk never enters a directory of that name. Counts untouched for 30 days are
//!   removed when a capped run opens the directory (`store.rs`; at most once an hour per
//!   root and process): only the worker's own files named by a task id, never the task's
//!   own, and only under their lock while still old. A copy touches its count under the
//!   lock as it opens it, so a count in use is never removed.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustix::fs::FlockOperation;
use rustix::io::Errno;

use super::super::roots::{RootError, TempRoot};
use super::super::RootProgress;
use super::Meta;

mod store;

use store::{claims_dir, claims_file, existing_claims_dir, sweep};

/// The directory, at the top of each root, that holds the counts of capped tasks.
pub const CLAIMS_DIR: &str = ".cleanup-service-claims";
/// Files a copy claims at a time (one write and `fsync` of the count per chunk).
pub const CHUNK: u64 = 64;
/// How long a claim, opening a count, or giving back what a turn did not use waits for
/// another copy's lock (each holds it for one read, write and `fsync`).
const LOCK_PATIENCE: Duration = Duration::from_secs(5);

/// The task's count in each root that could be opened, and what this turn claimed and
/// has not used yet.
pub struct Claims {
    /// One open file per root (one for two names of the same directory), in the order of
    /// their device and inode: the order every copy locks them in.
    files: Vec<(String, OwnedFd)>,
    unused: Mutex<u64>,
    /// The cap was found reached: no more asking in this turn.
    reached: AtomicBool,
}

/// What a claim got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The file may go.
    Granted,
    /// The task reached `max_files`.
    Capped,
    /// The walk was told to stop while the claim waited for another copy's lock.
    Stopped,
}

/// Why a capped real run cannot keep its count (it then deletes nothing more).
#[derive(Debug, thiserror::Error)]
pub enum ClaimsError {
    /// A root the task still has to walk cannot be opened, or is refused.
    #[error(transparent)]
    Root(RootError),
    /// The directory or a file in it is not what the worker made: refused for good.
    #[error("{0}")]
    Refused(String),
    /// An I/O error: worth another attempt.
    #[error("{0}")]
    Io(String),
}

impl Claims {
    /// Open (creating them when missing) the task's count in each of its roots. A root
    /// that earlier turns finished is skipped when it cannot be opened (the others hold
    /// the same count); any other root that cannot be opened fails the open. `None`: the
    /// walk was told to stop while another copy held a count's lock.
    pub fn open(
        roots: &[TempRoot],
        done: &BTreeMap<String, RootProgress>,
        task_id: uuid::Uuid,
        euid: u32,
        stop: &AtomicBool,
    ) -> Result<Option<Self>, ClaimsError> {
        let name = std::ffi::CString::new(task_id.to_string()).expect("a uuid has no NUL");
        let mut files = Vec::new();
        for root in roots {
            let fd = match root.open() {
                Ok((fd, _)) => fd,
                Err(_) if done.get(&root.name).is_some_and(|p| p.complete) => continue,
                Err(error) => return Err(ClaimsError::Root(error)),
            };
            let where_ = at(&root.name);
            let dir = claims_dir(&fd, euid).map_err(|e| e.context(&where_))?;
            sweep(root, &dir, &name, euid);
            let Some((file, identity)) =
                claims_file(&dir, &name, euid, stop).map_err(|e| e.context(&where_))?
            else {
                return Ok(None);
            };
            files.push((identity, root.name.clone(), file));
        }
        // One lock order for every copy, whatever names its configuration gives the roots;
        // and one file for two names of a directory (locking a second description of the
        // same file would wait for ever).
        files.sort_by_key(|(identity, _, _)| *identity);
        files.dedup_by_key(|(identity, _, _)| *identity);
        let files = files
            .into_iter()
            .map(|(_, root, file)| (root, file))
            .collect();
        Ok(Some(Self {
            files,
            unused: Mutex::new(0),
            reached: AtomicBool::new(false),
        }))
    }

    /// Claim one file against `cap`: from what this turn claimed already, else a new
    /// chunk. `own` is the count this copy knows of (its message's and this turn's
    /// claims), used only while no count is kept.
    pub fn take(&self, cap: u64, own: u64, stop: &AtomicBool) -> Result<Claim, ClaimsError> {
        if self.reached.load(Ordering::Relaxed) {
            return Ok(Claim::Capped);
        }
        let mut unused = self.unused.lock().expect("claims lock");
        if *unused == 0 {
            let Some(locks) = patiently(Some(stop), |give_up| self.lock(give_up))? else {
                return Ok(Claim::Stopped);
            };
            *unused = self.reserve(&locks, cap, own)?;
        }
        if *unused == 0 {
            self.reached.store(true, Ordering::Relaxed);
            return Ok(Claim::Capped);
        }
        *unused -= 1;
        Ok(Claim::Granted)
    }

    /// What a capped dry run checks, writing nothing: that the real run could keep its
    /// count in each root that can be opened now (the walk reports the others). A
    /// directory the real run would refuse, or a root where it could not make one, is
    /// refused the same way.
    pub fn check(roots: &[TempRoot], euid: u32) -> Result<(), ClaimsError> {
        for root in roots {
            let Ok((fd, _)) = root.open() else {
                continue;
            };
            let where_ = at(&root.name);
            if existing_claims_dir(&fd, euid)
                .map_err(|e| e.context(&where_))?
                .is_none()
            {
                // Only a clear no is a refusal: an older seccomp profile answers the
                // syscall itself with EPERM, and the real run then says what holds.
                if let Err(e @ (Errno::ACCESS | Errno::ROFS)) = rustix::fs::accessat(
                    &fd,
                    ".",
                    rustix::fs::Access::WRITE_OK,
                    rustix::fs::AtFlags::EACCESS,
                ) {
                    return Err(refused_when_denied("cannot be created", e).context(&where_));
                }
            }
        }
        Ok(())
    }

    /// The cap was found reached in this turn.
    pub fn reached(&self) -> bool {
        self.reached.load(Ordering::Relaxed)
    }

    /// Give back what this turn claimed and did not use.
    pub fn release(&self) -> Result<(), ClaimsError> {
        let mut unused = self.unused.lock().expect("claims lock");
        if *unused == 0 {
            return Ok(());
        }
        // Without a stop, `None` never comes: the wait ends in the locks or an error.
        let Some(_locks) = patiently(None, |give_up| self.lock(give_up))? else {
            return Ok(());
        };
        // Written by this turn's claims, so never missing here.
        let count = self.read_highest()?.unwrap_or(0);
        self.write(count.saturating_sub(*unused))?;
        *unused = 0;
        Ok(())
    }

    /// Add up to [`CHUNK`] to the count, never past `cap`; returns how many were added.
    fn reserve(&self, _locks: &Locks<'_>, cap: u64, own: u64) -> Result<u64, ClaimsError> {
        let count = self.read_highest()?.unwrap_or(own);
        let added = CHUNK.min(cap.saturating_sub(count));
        if added > 0 {
            self.write(count + added)?;
        }
        Ok(added)
    }

    /// Every file's lock, in the files' order. `None` once `give_up` says so while
    /// another copy holds a lock (what is held is released).
    fn lock(&self, give_up: &dyn Fn() -> bool) -> Result<Option<Locks<'_>>, ClaimsError> {
        let mut held = Locks(Vec::with_capacity(self.files.len()));
        for (root, file) in &self.files {
            if !lock_one(file, give_up).map_err(|e| io(root, "cannot lock the count", e))? {
                return Ok(None);
            }
            held.0.push(file);
        }
        Ok(Some(held))
    }

    /// The highest count kept, `None` when no file holds one yet.
    fn read_highest(&self) -> Result<Option<u64>, ClaimsError> {
        let mut highest = None;
        for (root, file) in &self.files {
            let mut buf = [0u8; 32];
            let n = rustix::io::pread(file, &mut buf, 0)
                .map_err(|e| io(root, "cannot read the count", e))?;
            let text = std::str::from_utf8(&buf[..n]).unwrap_or("?").trim();
            let count = match text {
                "" => continue,
                text => text.parse::<u64>().map_err(|_| {
                    ClaimsError::Refused(format!(
                        "the count reads {text:?}, not a number; refusing to guess how many \
                         files the task deleted"
                    ))
                    .context(&at(root))
                })?,
            };
            highest = highest.max(Some(count));
        }
        Ok(highest)
    }

    fn write(&self, count: u64) -> Result<(), ClaimsError> {
        let text = format!("{count:>20}\n");
        for (root, file) in &self.files {
            let n = rustix::io::pwrite(file, text.as_bytes(), 0)
                .map_err(|e| refused_when_denied("cannot write the count", e).context(&at(root)))?;
            if n != text.len() {
                return Err(ClaimsError::Io("short write of the count".into()).context(&at(root)));
            }
            rustix::fs::fsync(file)
                .map_err(|e| refused_when_denied("cannot sync the count", e).context(&at(root)))?;
        }
        Ok(())
    }
}

/// Wait for locks (`lock`, given when to give up) at most [`LOCK_PATIENCE`], and no
/// longer than `stop` allows: `None` once stopped; an error once the patience ran out.
fn patiently<T>(
    stop: Option<&AtomicBool>,
    lock: impl FnOnce(&dyn Fn() -> bool) -> Result<Option<T>, ClaimsError>,
) -> Result<Option<T>, ClaimsError> {
    let deadline = Instant::now() + LOCK_PATIENCE;
    let stopped = || stop.is_some_and(|s| s.load(Ordering::Relaxed));
    match lock(&|| stopped() || Instant::now() > deadline)? {
        Some(held) => Ok(Some(held)),
        None if stopped() => Ok(None),
        None => Err(ClaimsError::Io(format!(
            "another copy held the task's count locked for {LOCK_PATIENCE:?}"
        ))),
    }
}

/// Take `file`'s exclusive `flock`, retrying while another holder has it (false: `give_up`
/// said so first).
fn lock_one(file: &OwnedFd, give_up: &dyn Fn() -> bool) -> Result<bool, Errno> {
    let mut wait = Duration::from_millis(1);
    loop {
        match rustix::fs::flock(file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(true),
            Err(Errno::WOULDBLOCK) | Err(Errno::INTR) => {
                if give_up() {
                    return Ok(false);
                }
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The `flock`s of one reservation, released when dropped.
struct Locks<'a>(Vec<&'a OwnedFd>);

impl Drop for Locks<'_> {
    fn drop(&mut self) {
        for file in self.0.iter().rev() {
            let _ = rustix::fs::flock(file, FlockOperation::Unlock);
        }
    }
}

/// Where a count is, for messages.
fn at(root: &str) -> String {
    format!("temp root `{root}`: {CLAIMS_DIR}")
}

fn io(root: &str, what: &str, e: Errno) -> ClaimsError {
    ClaimsError::Io(describe(what, e)).context(&at(root))
}

impl ClaimsError {
    fn context(self, where_: &str) -> Self {
        match self {
            Self::Refused(m) => Self::Refused(format!("{where_}: {m}")),
            Self::Io(m) => Self::Io(format!("{where_}: {m}")),
            root @ Self::Root(_) => root,
        }
    }
}

/// A cause the operator has to act on: retrying would not help.
fn refused_when_denied(what: &str, e: Errno) -> ClaimsError {
    match e {
        Errno::ACCESS | Errno::PERM | Errno::ROFS => ClaimsError::Refused(format!(
            "{}; a capped real run keeps its count there: let the worker write in the \
             root, or run without max_files",
            describe(what, e)
        )),
        Errno::NOSPC | Errno::DQUOT => ClaimsError::Refused(format!(
            "{}; a capped real run keeps its count there: run without max_files to free \
             space first",
            describe(what, e)
        )),
        e => ClaimsError::Io(describe(what, e)),
    }
}

fn describe(what: &str, e: Errno) -> String {
    format!("{what}: {}", std::io::Error::from(e))
}
