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
//! - The walk never enters a directory of that name. Counts untouched for [`KEEP_FOR`] are
//!   removed when a capped run opens the directory (at most once an hour per root and
//!   process): only the worker's own files named by a task id, never the task's own, and
//!   only under their lock while still old. A copy touches its count under the lock as it
//!   opens it, so a count in use is never removed.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CStr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use rustix::fs::{FileType, FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use super::super::roots::{RootError, TempRoot};
use super::super::RootProgress;
use super::Meta;

/// The directory, at the top of each root, that holds the counts of capped tasks.
pub const CLAIMS_DIR: &str = ".cleanup-service-claims";
/// Files a copy claims at a time (one write and `fsync` of the count per chunk).
pub const CHUNK: u64 = 64;
/// A task's file untouched for this long is removed (a copy arriving later starts from
/// the count its message carries).
pub const KEEP_FOR: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often one process sweeps one root's counts.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);
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
        let mut seen = Vec::new();
        for root in roots {
            let fd = match root.open() {
                Ok((fd, _)) => fd,
                Err(_) if done.get(&root.name).is_some_and(|p| p.complete) => continue,
                Err(error) => return Err(ClaimsError::Root(error)),
            };
            let where_ = format!("temp root `{}`: {CLAIMS_DIR}", root.name);
            let dir = claims_dir(&fd, euid).map_err(|e| e.context(&where_))?;
            sweep(root, &dir, &name, euid);
            let Some(file) =
                claims_file(&dir, &name, euid, stop).map_err(|e| e.context(&where_))?
            else {
                return Ok(None);
            };
            // Locking a second description of the same file would wait for ever.
            let meta = Meta::of(&file).map_err(|e| io(&root.name, "cannot examine", e))?;
            if seen.contains(&(meta.dev, meta.ino)) {
                continue;
            }
            seen.push((meta.dev, meta.ino));
            files.push(((meta.dev, meta.ino), root.name.clone(), file));
        }
        // One lock order for every copy, whatever names its configuration gives the roots.
        files.sort_by_key(|(identity, _, _)| *identity);
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
            let deadline = Instant::now() + LOCK_PATIENCE;
            let give_up = || stop.load(Ordering::Relaxed) || Instant::now() > deadline;
            let Some(locks) = self.lock(give_up)? else {
                if stop.load(Ordering::Relaxed) {
                    return Ok(Claim::Stopped);
                }
                return Err(ClaimsError::Io(format!(
                    "{CLAIMS_DIR}: another copy held the count's lock for {LOCK_PATIENCE:?}"
                )));
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
            let where_ = format!("temp root `{}`: {CLAIMS_DIR}", root.name);
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
        let deadline = Instant::now() + LOCK_PATIENCE;
        let Some(_locks) = self.lock(|| Instant::now() > deadline)? else {
            return Err(ClaimsError::Io(format!(
                "{CLAIMS_DIR}: another copy held the count's lock for {LOCK_PATIENCE:?}"
            )));
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
    fn lock(&self, give_up: impl Fn() -> bool) -> Result<Option<Locks<'_>>, ClaimsError> {
        let mut held = Locks(Vec::with_capacity(self.files.len()));
        for (root, file) in &self.files {
            if !lock_one(file, &give_up).map_err(|e| io(root, "cannot lock the count", e))? {
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
                        "temp root `{root}`: {CLAIMS_DIR}: the count reads {text:?}, not a number; \
                         refusing to guess how many files the task deleted"
                    ))
                })?,
            };
            highest = highest.max(Some(count));
        }
        Ok(highest)
    }

    fn write(&self, count: u64) -> Result<(), ClaimsError> {
        let text = format!("{count:>20}\n");
        for (root, file) in &self.files {
            let n = rustix::io::pwrite(file, text.as_bytes(), 0).map_err(|e| {
                refused_when_denied("cannot write the count", e)
                    .context(&format!("temp root `{root}`: {CLAIMS_DIR}"))
            })?;
            if n != text.len() {
                return Err(ClaimsError::Io(format!(
                    "temp root `{root}`: {CLAIMS_DIR}: short write of the count"
                )));
            }
            rustix::fs::fsync(file).map_err(|e| {
                refused_when_denied("cannot sync the count", e)
                    .context(&format!("temp root `{root}`: {CLAIMS_DIR}"))
            })?;
        }
        Ok(())
    }
}

/// Take `file`'s exclusive `flock`, retrying while another holder has it (false: `give_up`
/// said so first).
fn lock_one(file: &OwnedFd, give_up: &impl Fn() -> bool) -> Result<bool, Errno> {
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

fn io(root: &str, what: &str, e: Errno) -> ClaimsError {
    ClaimsError::Io(format!(
        "temp root `{root}`: {CLAIMS_DIR}: {what}: {}",
        std::io::Error::from(e)
    ))
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

/// The worker's own directory at the top of the root, created when missing.
fn claims_dir(root: &OwnedFd, euid: u32) -> Result<OwnedFd, ClaimsError> {
    match rustix::fs::mkdirat(root, CLAIMS_DIR, Mode::from_raw_mode(0o700)) {
        Ok(()) => {
            // The new directory's entry survives a crash before the first count does.
            rustix::fs::fsync(root).map_err(|e| ClaimsError::Io(describe("cannot sync", e)))?;
        }
        Err(Errno::EXIST) => {}
        Err(e) => return Err(refused_when_denied("cannot be created", e)),
    }
    existing_claims_dir(root, euid)?
        .ok_or_else(|| ClaimsError::Io("vanished as it was created".into()))
}

/// The directory at the top of the root, when there is one, once checked to be the
/// worker's own.
fn existing_claims_dir(root: &OwnedFd, euid: u32) -> Result<Option<OwnedFd>, ClaimsError> {
    let dir = match rustix::fs::openat(
        root,
        CLAIMS_DIR,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(dir) => dir,
        Err(Errno::NOENT) => return Ok(None),
        Err(Errno::LOOP | Errno::NOTDIR) => {
            return Err(ClaimsError::Refused(
                "is not a directory (a symlink or a file is in its place); not followed".into(),
            ))
        }
        Err(e) => return Err(ClaimsError::Io(describe("cannot open", e))),
    };
    let meta = Meta::of(&dir).map_err(|e| ClaimsError::Io(describe("cannot examine", e)))?;
    let root_meta = Meta::of(root).map_err(|e| ClaimsError::Io(describe("cannot examine", e)))?;
    if meta.kind != FileType::Directory {
        return Err(ClaimsError::Refused("is not a directory".into()));
    }
    if meta.uid != euid {
        return Err(ClaimsError::Refused(format!(
            "belongs to uid {}, not to this worker (uid {euid}); remove it",
            meta.uid
        )));
    }
    if meta.mode & 0o022 != 0 {
        return Err(ClaimsError::Refused(format!(
            "others may write in it (mode {:o}); it must be the worker's alone",
            meta.mode & 0o7777
        )));
    }
    if meta.dev != root_meta.dev {
        return Err(ClaimsError::Refused(
            "is on another filesystem than the root (a mount); not used".into(),
        ));
    }
    Ok(Some(dir))
}

/// The task's file in the directory, created (empty: a count of 0) when missing, and
/// touched under its lock: a sweep removes a count only under its lock and while it is
/// old, so the file this returns is not removed under the copy using it (one removed just
/// before is opened again). `None`: told to stop while another copy held its lock.
fn claims_file(
    dir: &OwnedFd,
    name: &CStr,
    euid: u32,
    stop: &AtomicBool,
) -> Result<Option<OwnedFd>, ClaimsError> {
    for _ in 0..3 {
        // Non-blocking: a FIFO in its place must not hang the open (it is refused below).
        let file = rustix::fs::openat(
            dir,
            name,
            OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| match e {
            Errno::LOOP => {
                ClaimsError::Refused("the task's count is a symlink; not followed".into())
            }
            e => refused_when_denied("cannot open the task's count", e),
        })?;
        let meta = Meta::of(&file).map_err(|e| ClaimsError::Io(describe("cannot examine", e)))?;
        if meta.kind != FileType::RegularFile || meta.uid != euid {
            return Err(ClaimsError::Refused(
                "the task's count is not a regular file of this worker's".into(),
            ));
        }
        let deadline = Instant::now() + LOCK_PATIENCE;
        let give_up = || stop.load(Ordering::Relaxed) || Instant::now() > deadline;
        if !lock_one(&file, &give_up)
            .map_err(|e| ClaimsError::Io(describe("cannot lock the task's count", e)))?
        {
            if stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            return Err(ClaimsError::Io(format!(
                "another copy held the task's count locked for {LOCK_PATIENCE:?}"
            )));
        }
        let now = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_NOW,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_NOW,
            },
        };
        rustix::fs::futimens(&file, &now)
            .map_err(|e| refused_when_denied("cannot touch the task's count", e))?;
        let linked = rustix::fs::fstat(&file)
            .map_err(|e| ClaimsError::Io(describe("cannot examine", e)))?
            .st_nlink
            > 0;
        let _ = rustix::fs::flock(&file, FlockOperation::Unlock);
        if linked {
            // A new file's entry survives a crash before its first count does.
            rustix::fs::fsync(dir).map_err(|e| ClaimsError::Io(describe("cannot sync", e)))?;
            return Ok(Some(file));
        }
    }
    Err(ClaimsError::Io(
        "the task's count was removed three times as it was opened".into(),
    ))
}

/// Remove the counts untouched for [`KEEP_FOR`] (best effort; at most once per
/// [`SWEEP_EVERY`] for one root in this process). Never the task's own, and a count only
/// under its lock (a copy may be using it) and while still old.
fn sweep(root: &TempRoot, dir: &OwnedFd, own: &CStr, euid: u32) {
    static SWEPT: Mutex<Option<HashMap<PathBuf, Instant>>> = Mutex::new(None);
    {
        let mut swept = SWEPT.lock().expect("sweep lock");
        let swept = swept.get_or_insert_with(HashMap::new);
        if swept
            .get(&root.path)
            .is_some_and(|at| at.elapsed() < SWEEP_EVERY)
        {
            return;
        }
        swept.insert(root.path.clone(), Instant::now());
    }
    let Some(horizon) = SystemTime::now()
        .checked_sub(KEEP_FOR)
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
    else {
        return;
    };
    let old = |meta: &Meta| {
        meta.kind == FileType::RegularFile
            && meta.uid == euid
            && meta.mtime.0 < horizon.as_secs() as i64
    };
    let Ok(names) = super::meta::read_entries(dir) else {
        return;
    };
    for name in names {
        // Only a task's count (named by its id), never the task's own.
        let a_count = name
            .to_str()
            .is_ok_and(|n| uuid::Uuid::parse_str(n).is_ok());
        if !a_count || name.as_c_str() == own || !Meta::at(dir, &name).is_ok_and(|m| old(&m)) {
            continue;
        }
        let Ok(file) = rustix::fs::openat(
            dir,
            &name,
            // Writable: NFS takes an exclusive `flock` only on a file open for writing.
            OFlags::RDWR | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            continue;
        };
        if rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
            continue;
        }
        let same = match (Meta::of(&file), Meta::at(dir, &name)) {
            (Ok(held), Ok(named)) => old(&held) && (held.dev, held.ino) == (named.dev, named.ino),
            _ => false,
        };
        if same {
            let _ = rustix::fs::unlinkat(dir, &name, rustix::fs::AtFlags::empty());
        }
    }
}

fn describe(what: &str, e: Errno) -> String {
    format!("{what}: {}", std::io::Error::from(e))
}
