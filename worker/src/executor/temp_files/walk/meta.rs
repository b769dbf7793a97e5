//! What the walk knows and reports: why entries are kept, its counters, the worker's
//! privileges, one entry's `statx`, and small helpers.

use std::ffi::{CStr, CString};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64};

use rustix::fs::{AtFlags, Dir, FileType, Statx, StatxAttributes, StatxFlags};

use super::Position;

/// Why an old, matching file (or a directory) was kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// One of the root's `age_by` times is younger than the cutoff.
    Young,
    /// `max_files` was reached.
    Capped,
    /// Another process holds a `flock` on it.
    InUse,
    /// Another process (or open file description) holds a POSIX or OFD record lock on it.
    Locked,
    /// Immutable or append-only (the file or its directory).
    Immutable,
    /// The worker may not unlink it (directory not writable, sticky bit).
    NotPermitted,
    /// Its lock could not be checked (the worker may not open it).
    Unreadable,
    /// On another mount (another filesystem or a bind mount).
    OtherMount,
    /// A device, socket or FIFO.
    SpecialFile,
    /// Changed between being examined and being acted on.
    Replaced,
    /// Its directory was moved out of the root during the walk.
    MovedOutOfRoot,
}

impl Kept {
    pub const ALL: [Kept; 11] = [
        Kept::Young,
        Kept::Capped,
        Kept::InUse,
        Kept::Locked,
        Kept::Immutable,
        Kept::NotPermitted,
        Kept::Unreadable,
        Kept::OtherMount,
        Kept::SpecialFile,
        Kept::Replaced,
        Kept::MovedOutOfRoot,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kept::Young => "young",
            Kept::Capped => "capped",
            Kept::InUse => "in_use",
            Kept::Locked => "locked",
            Kept::Immutable => "immutable",
            Kept::NotPermitted => "not_permitted",
            Kept::Unreadable => "unreadable",
            Kept::OtherMount => "other_mount",
            Kept::SpecialFile => "special_file",
            Kept::Replaced => "replaced",
            Kept::MovedOutOfRoot => "moved_out_of_root",
        }
    }

    /// Counted in `skipped`: entries left alone for safety, not by the request's rules.
    pub fn is_skip(self) -> bool {
        !matches!(self, Kept::Young | Kept::Capped)
    }
}

#[derive(Default)]
pub struct Counters {
    pub files_matched: AtomicU64,
    pub files_deleted: AtomicU64,
    pub bytes_matched: AtomicU64,
    pub bytes_freed: AtomicU64,
    pub dirs_matched: AtomicU64,
    pub dirs_removed: AtomicU64,
    pub kept: [AtomicU64; Kept::ALL.len()],
    pub errors_total: AtomicU64,
    /// Files claimed against `max_files`, earlier turns included.
    pub claimed: AtomicU64,
    pub capped: AtomicBool,
    /// Oldest mtime (seconds) of an eligible file still present; i64::MAX when none.
    pub oldest_remaining: AtomicI64,
}

/// Who the worker is, for predicting whether an unlink will be allowed.
#[derive(Debug, Clone, Copy)]
pub struct Privileges {
    pub euid: u32,
    /// CAP_FOWNER: the sticky bit does not stop this process.
    pub fowner: bool,
}

impl Privileges {
    pub fn of_this_process() -> Self {
        let fowner = rustix::thread::capabilities(None)
            .map(|caps| {
                caps.effective
                    .contains(rustix::thread::CapabilitySet::FOWNER)
            })
            .unwrap_or(false);
        Self {
            euid: rustix::process::geteuid().as_raw(),
            fowner,
        }
    }
}

/// What the walk knows of an entry, from one `statx`.
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    pub kind: FileType,
    pub mode: u32,
    pub uid: u32,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub atime: (i64, u32),
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
    /// Birth time; None when the filesystem does not report it (`STATX_BTIME` not in the
    /// returned mask).
    pub btime: Option<(i64, u32)>,
    pub mnt_id: Option<u64>,
    pub mount_root: bool,
    /// An automount point (not triggered: the walk passes `AT_NO_AUTOMOUNT`).
    pub automount: bool,
    /// Immutable or append-only: nothing in it (or it) can be unlinked.
    pub sealed: bool,
}

const STATX_MASK: StatxFlags = StatxFlags::TYPE
    .union(StatxFlags::MODE)
    .union(StatxFlags::UID)
    .union(StatxFlags::INO)
    .union(StatxFlags::SIZE)
    .union(StatxFlags::ATIME)
    .union(StatxFlags::MTIME)
    .union(StatxFlags::CTIME)
    .union(StatxFlags::BTIME)
    .union(StatxFlags::MNT_ID);

impl Meta {
    fn from_statx(stx: &Statx) -> Self {
        let time = |t: &rustix::fs::StatxTimestamp| (t.tv_sec, t.tv_nsec);
        let known = stx.stx_attributes_mask;
        let has = |attr: StatxAttributes| known.contains(attr) && stx.stx_attributes.contains(attr);
        Self {
            kind: FileType::from_raw_mode(u32::from(stx.stx_mode)),
            mode: u32::from(stx.stx_mode),
            uid: stx.stx_uid,
            dev: rustix::fs::makedev(stx.stx_dev_major, stx.stx_dev_minor),
            ino: stx.stx_ino,
            size: stx.stx_size,
            atime: time(&stx.stx_atime),
            mtime: time(&stx.stx_mtime),
            ctime: time(&stx.stx_ctime),
            btime: (stx.stx_mask & StatxFlags::BTIME.bits() != 0).then(|| time(&stx.stx_btime)),
            mnt_id: (stx.stx_mask & StatxFlags::MNT_ID.bits() != 0).then_some(stx.stx_mnt_id),
            mount_root: has(StatxAttributes::MOUNT_ROOT),
            automount: has(StatxAttributes::AUTOMOUNT),
            sealed: has(StatxAttributes::IMMUTABLE) || has(StatxAttributes::APPEND),
        }
    }

    /// `name` in `dir`, without following a symlink.
    pub fn at(dir: &OwnedFd, name: &CStr) -> rustix::io::Result<Self> {
        let flags = AtFlags::SYMLINK_NOFOLLOW | AtFlags::NO_AUTOMOUNT;
        rustix::fs::statx(dir, name, flags, STATX_MASK).map(|s| Self::from_statx(&s))
    }

    /// An open file or directory.
    pub fn of(fd: &OwnedFd) -> rustix::io::Result<Self> {
        let flags = AtFlags::EMPTY_PATH | AtFlags::NO_AUTOMOUNT;
        rustix::fs::statx(fd, c"", flags, STATX_MASK).map(|s| Self::from_statx(&s))
    }

    /// On a mount other than the directory `at` it is in.
    pub(super) fn other_mount(&self, at: &Position<'_>) -> bool {
        self.dev != at.dev
            || self.mount_root
            || self.automount
            || (self.mnt_id.is_some() && self.mnt_id != at.mnt_id)
    }
}

/// Whether the directory being walked lets this worker unlink its entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unlink {
    Allowed,
    /// Sticky: only entries owned by the worker (or the directory's owner) may go.
    Sticky,
    Refused(Kept),
}

/// What a directory looks like after the walk: entries left, and whether anything in it
/// (or below) was removed.
#[derive(Default, Clone, Copy)]
pub struct DirOutcome {
    pub remaining: u64,
    pub removed_any: bool,
    /// Entries were passed over because the walk was told to stop.
    pub incomplete: bool,
}

impl DirOutcome {
    pub(super) fn kept() -> Self {
        DirOutcome {
            remaining: 1,
            ..Default::default()
        }
    }
}

/// Names of directories and parts kept in a continuation (`hex:` when not UTF-8).
pub fn encode(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) if !text.starts_with("hex:") => text.to_owned(),
        _ => {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            format!("hex:{hex}")
        }
    }
}

/// Open the directory `name` in `parent` to read it, never through a symlink (`ELOOP` or
/// `ENOTDIR` when something else is there).
pub(super) fn open_dir_at(
    parent: &OwnedFd,
    name: impl rustix::path::Arg,
) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        parent,
        name,
        rustix::fs::OFlags::RDONLY
            | rustix::fs::OFlags::DIRECTORY
            | rustix::fs::OFlags::NOFOLLOW
            | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
}

/// The names in a directory, without `.` and `..`.
pub(super) fn read_entries(dir: &OwnedFd) -> std::io::Result<Vec<CString>> {
    let mut names = Vec::new();
    for entry in Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_bytes() == b"." || name.to_bytes() == b".." {
            continue;
        }
        names.push(name.to_owned());
    }
    Ok(names)
}

/// Seconds from `then` to `now`, 0 when `then` is later. Never overflows, whatever
/// timestamp a filesystem stores (tmpfs keeps even `i64::MIN`).
pub fn age_seconds(now: i64, then: i64) -> f64 {
    now.saturating_sub(then).max(0) as f64
}
