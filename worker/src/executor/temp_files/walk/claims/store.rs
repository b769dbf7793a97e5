//! The counts on disk: the worker's own directory at the top of a root, a task's file in
//! it, and the sweep of old ones.

use std::collections::HashMap;
use std::ffi::CStr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustix::fs::{FileType, FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use super::super::super::roots::TempRoot;
use super::super::meta::{open_dir_at, read_entries};
use super::{describe, lock_one, patiently, refused_when_denied, ClaimsError, Meta, CLAIMS_DIR};

/// A task's file untouched for this long is removed (a copy arriving later starts from
/// the count its message carries).
/// Which file: device and inode.
pub(super) type FileId = (u64, u64);

const KEEP_FOR: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often one process sweeps one root's counts.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// The worker's own directory at the top of the root, created when missing.
pub(super) fn claims_dir(root: &OwnedFd, euid: u32) -> Result<OwnedFd, ClaimsError> {
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
pub(super) fn existing_claims_dir(
    root: &OwnedFd,
    euid: u32,
) -> Result<Option<OwnedFd>, ClaimsError> {
    let dir = match open_dir_at(root, CLAIMS_DIR) {
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
pub(super) fn claims_file(
    dir: &OwnedFd,
    name: &CStr,
    euid: u32,
    stop: &AtomicBool,
) -> Result<Option<(OwnedFd, FileId)>, ClaimsError> {
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
        let locked = patiently(Some(stop), |give_up| {
            lock_one(&file, give_up)
                .map(|held| held.then_some(()))
                .map_err(|e| ClaimsError::Io(describe("cannot lock the task's count", e)))
        })?;
        if locked.is_none() {
            return Ok(None);
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
            return Ok(Some((file, (meta.dev, meta.ino))));
        }
    }
    Err(ClaimsError::Io(
        "the task's count was removed three times as it was opened".into(),
    ))
}

/// Remove the counts untouched for [`KEEP_FOR`] (best effort; at most once per
/// [`SWEEP_EVERY`] for one root in this process). Never the task's own, and a count only
/// under its lock (a copy may be using it) and while still old.
pub(super) fn sweep(root: &TempRoot, dir: &OwnedFd, own: &CStr, euid: u32) {
    static SWEPT: LazyLock<Mutex<HashMap<PathBuf, Instant>>> = LazyLock::new(Mutex::default);
    {
        let mut swept = SWEPT.lock().expect("sweep lock");
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
    let Ok(names) = read_entries(dir) else {
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
