//! Temp roots: parsing `TEMP_ROOTS`, refusing roots that are not safe to clean, and
//! opening a root so that nothing but the configured directory can be reached.
//!
//! A root is resolved once, at start-up (symlinks in the configured path are followed
//! then, and only then), and the resolved path is checked: never `/`, and not one of the
//! system trees (or a directory holding one) unless that root says `allow_system_path`.
//! Every walk opens the resolved path again with `openat2(RESOLVE_NO_SYMLINKS)`, so a
//! component swapped for a symlink after start-up is refused, and checks that the opened
//! directory is the one seen at start-up (device, inode and mount), so a directory
//! renamed away and replaced, or a mount placed over the path, is refused too.

use std::os::fd::OwnedFd;
use std::path::{Component, PathBuf};
use std::sync::{Arc, OnceLock};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, StatxFlags, CWD};
use rustix::io::Errno;

mod system;

pub use system::{identity_at, in_proc, system_path, SystemDirs, SYSTEM_TREES};

/// Which timestamps decide that a file is old: all chosen ones must be older than the
/// cutoff (a file is young if any chosen time is recent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgeBy {
    pub atime: bool,
    pub mtime: bool,
    pub ctime: bool,
}

impl Default for AgeBy {
    fn default() -> Self {
        Self {
            atime: false,
            mtime: true,
            ctime: false,
        }
    }
}

impl std::str::FromStr for AgeBy {
    type Err = String;

    /// `mtime`, `atime+mtime`, `atime+mtime+ctime`, ...
    fn from_str(text: &str) -> Result<Self, String> {
        let mut age_by = AgeBy {
            atime: false,
            mtime: false,
            ctime: false,
        };
        for part in text.split('+').map(str::trim) {
            match part {
                "atime" => age_by.atime = true,
                "mtime" => age_by.mtime = true,
                "ctime" => age_by.ctime = true,
                other => {
                    return Err(format!(
                        "age_by `{other}` is not one of atime, mtime, ctime (join several with `+`)"
                    ))
                }
            }
        }
        Ok(age_by)
    }
}

impl std::fmt::Display for AgeBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = [
            (self.atime, "atime"),
            (self.mtime, "mtime"),
            (self.ctime, "ctime"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        f.write_str(&names.join("+"))
    }
}

/// Which directory an open root must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub dev: u64,
    pub ino: u64,
    pub mnt_id: Option<u64>,
}

/// A named directory that temp-file tasks may clean. Clones share the directory seen at
/// start-up or learned at the first walk: every task walks a clone, and all of them check
/// the same directory.
#[derive(Debug, Clone)]
pub struct TempRoot {
    pub name: String,
    /// Resolved at start-up; opened later without following any symlink.
    pub path: PathBuf,
    pub age_by: AgeBy,
    /// Set explicitly per root: the path may be (or hold) a system tree.
    pub allow_system_path: bool,
    /// The directory seen at start-up (or at the first walk, when it did not exist yet),
    /// shared by every clone.
    identity: Arc<OnceLock<Identity>>,
}

impl PartialEq for TempRoot {
    fn eq(&self, other: &Self) -> bool {
        (&self.name, &self.path, self.age_by, self.allow_system_path)
            == (
                &other.name,
                &other.path,
                other.age_by,
                other.allow_system_path,
            )
    }
}

impl TempRoot {
    /// Parse one `TEMP_ROOTS` entry: `name=/path[;age_by=atime+mtime][;allow_system_path]`,
    /// resolve the path and check it.
    pub fn parse(item: &str) -> anyhow::Result<Self> {
        let mut parts = item.split(';');
        let spec = parts.next().unwrap_or_default();
        let Some((name, path)) = spec.split_once('=') else {
            anyhow::bail!("TEMP_ROOTS entry `{item}` must look like name=/absolute/path");
        };
        let (name, configured) = (name.trim(), PathBuf::from(path.trim()));
        shared::tasks::validate_root_name(name).map_err(|e| anyhow::anyhow!("TEMP_ROOTS: {e}"))?;
        let mut age_by = AgeBy::default();
        let mut allow_system_path = false;
        for option in parts.map(str::trim).filter(|o| !o.is_empty()) {
            match option.split_once('=') {
                Some(("age_by", value)) => {
                    age_by = value
                        .parse()
                        .map_err(|e| anyhow::anyhow!("TEMP_ROOTS: root `{name}`: {e}"))?;
                }
                None if option == "allow_system_path" => allow_system_path = true,
                _ => anyhow::bail!(
                    "TEMP_ROOTS: root `{name}`: unknown option `{option}` (known: age_by=..., \
                     allow_system_path)"
                ),
            }
        }
        if !configured.is_absolute() {
            anyhow::bail!(
                "TEMP_ROOTS: the path of `{name}` must be absolute, got {}",
                configured.display()
            );
        }
        if in_proc(&configured) {
            anyhow::bail!(
                "TEMP_ROOTS: `{name}` ({}) is in /proc, which is never a temp root",
                configured.display()
            );
        }
        // `/proc/<pid>/cwd`, `root` and `fd/*` (and symlinks to them) lead into another
        // process's view of the filesystem; `canonicalize` would only return their text.
        if let Err(Errno::LOOP) = rustix::fs::openat2(
            CWD,
            &configured,
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::NO_MAGICLINKS,
        ) {
            anyhow::bail!(
                "TEMP_ROOTS: `{name}` ({}) resolves through a /proc magic link (or too many \
                 symlinks); name the directory itself",
                configured.display()
            );
        }
        // Symlinks in the configured path are resolved here, once; later walks follow none.
        let path = match std::fs::canonicalize(&configured) {
            Ok(path) => path,
            Err(_) if configured.components().any(|c| c == Component::ParentDir) => anyhow::bail!(
                "TEMP_ROOTS: the path of `{name}` ({}) does not exist and contains `..`; \
                 name the directory itself",
                configured.display()
            ),
            // Not there yet (a volume mounted later): it will be opened without symlinks.
            Err(_) => configured.components().collect(),
        };
        if path.parent().is_none() {
            anyhow::bail!(
                "TEMP_ROOTS: `{name}` ({}) resolves to the filesystem root `/`; refused",
                configured.display()
            );
        }
        if in_proc(&path) {
            anyhow::bail!(
                "TEMP_ROOTS: `{name}` ({}) resolves to {}, in /proc, which is never a temp root",
                configured.display(),
                path.display()
            );
        }
        if let Some(why) = system_path(&path) {
            if !allow_system_path {
                anyhow::bail!(
                    "TEMP_ROOTS: `{name}` ({}) is refused: {why}. If this is really meant, add \
                     `;allow_system_path` to that root",
                    configured.display()
                );
            }
            tracing::warn!(root = name, path = %path.display(), %why, "temp root allowed on a system path");
        }
        let root = TempRoot {
            name: name.to_owned(),
            path,
            age_by,
            allow_system_path,
            identity: Arc::new(OnceLock::new()),
        };
        // Remember which directory this is; a root that is not there yet is remembered
        // at its first walk.
        if let Ok(fd) = root.open_path() {
            let identity = root
                .check_directory(&fd)
                .map_err(|e| anyhow::anyhow!("TEMP_ROOTS: {e}"))?;
            let _ = root.identity.set(identity);
        }
        Ok(root)
    }

    /// A root for tests and tools: the path taken as it is, default options.
    pub fn new(name: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            path: path.into(),
            age_by: AgeBy::default(),
            allow_system_path: false,
            identity: Arc::new(OnceLock::new()),
        }
    }

    pub fn with_age_by(mut self, age_by: AgeBy) -> Self {
        self.age_by = age_by;
        self
    }

    fn open_path(&self) -> rustix::io::Result<OwnedFd> {
        rustix::fs::openat2(
            CWD,
            &self.path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        )
    }

    /// Whether the configured path, opened again without following any symlink, still
    /// leads to `held` (device, inode and mount): not once the root was renamed away.
    pub fn still_at_path(&self, held: &Identity) -> bool {
        self.open_path()
            .ok()
            .and_then(|fd| identity_of(&fd).ok())
            .is_some_and(|now| same_directory(held, &now))
    }

    /// Open the root for a walk: no symlink anywhere in the path, and the same directory
    /// (device, inode, mount) as at start-up.
    pub fn open(&self) -> Result<(OwnedFd, Identity), RootError> {
        let fd = self.open_path().map_err(|e| match e {
            rustix::io::Errno::LOOP | rustix::io::Errno::XDEV => RootError::Refused(format!(
                "temp root `{}` ({}): a component of the path is now a symlink; not followed",
                self.name,
                self.path.display()
            )),
            other => RootError::Unavailable(format!(
                "temp root `{}` ({}) cannot be opened: {}",
                self.name,
                self.path.display(),
                std::io::Error::from(other)
            )),
        })?;
        let now = identity_of(&fd).map_err(|e| RootError::Unavailable(e.to_string()))?;
        let expected = match self.identity.get() {
            Some(seen) => *seen,
            // Not there at start-up: checked now as it would have been then.
            None => {
                let checked = self.check_directory(&fd).map_err(RootError::Refused)?;
                *self.identity.get_or_init(|| checked)
            }
        };
        if !same_directory(&expected, &now) {
            return Err(RootError::Refused(format!(
                "temp root `{}` ({}) is no longer the directory it was at start-up (device, \
                 inode or mount changed); not cleaned. Restart the worker if the change is meant",
                self.name,
                self.path.display()
            )));
        }
        Ok((fd, now))
    }
}

impl TempRoot {
    /// The checks a path cannot make, on the opened directory: not on procfs, and not `/`
    /// or a system directory under another name (a bind mount); its identity when it passes.
    fn check_directory(&self, fd: &OwnedFd) -> Result<Identity, String> {
        let identity = identity_of(fd).map_err(|e| e.to_string())?;
        let refused = |why: String| {
            format!(
                "`{}` ({}) is refused: {why}",
                self.name,
                self.path.display()
            )
        };
        require_mount_id(identity.mnt_id).map_err(refused)?;
        if rustix::fs::fstatfs(fd).is_ok_and(|fs| fs.f_type == rustix::fs::PROC_SUPER_MAGIC) {
            return Err(refused(
                "it is on procfs, which is never a temp root".into(),
            ));
        }
        if let Some(dir) = SystemDirs::of_this_host().same_as(&identity) {
            let why = format!(
                "it is the same directory as {} (same device and inode: a bind mount?)",
                dir.display()
            );
            if dir.parent().is_none() || in_proc(dir) {
                return Err(refused(why));
            }
            if !self.allow_system_path {
                return Err(refused(format!(
                    "{why}. If this is really meant, add `;allow_system_path` to that root"
                )));
            }
            tracing::warn!(root = %self.name, path = %self.path.display(), %why, "temp root allowed on a system directory");
        }
        Ok(identity)
    }
}

/// The walk tells a bind mount of the same filesystem below a root by its mount id
/// (`statx` `STATX_MNT_ID`, Linux 5.8+). Without one that check would silently be lost,
/// so a root whose mount id the kernel does not report is refused.
pub fn require_mount_id(mnt_id: Option<u64>) -> Result<u64, String> {
    mnt_id.ok_or_else(|| {
        "this kernel does not report mount ids (statx STATX_MNT_ID): Linux 5.8 or later is \
         required to detect bind mounts below a root"
            .to_owned()
    })
}

fn same_directory(a: &Identity, b: &Identity) -> bool {
    a.dev == b.dev
        && a.ino == b.ino
        && match (a.mnt_id, b.mnt_id) {
            (Some(x), Some(y)) => x == y,
            _ => true,
        }
}

/// Device, inode and mount of an open directory.
pub fn identity_of(fd: &OwnedFd) -> anyhow::Result<Identity> {
    let stx = rustix::fs::statx(
        fd,
        c"",
        AtFlags::EMPTY_PATH | AtFlags::NO_AUTOMOUNT,
        StatxFlags::INO | StatxFlags::MNT_ID | StatxFlags::TYPE,
    )?;
    Ok(Identity {
        dev: rustix::fs::makedev(stx.stx_dev_major, stx.stx_dev_minor),
        ino: stx.stx_ino,
        mnt_id: (stx.stx_mask & StatxFlags::MNT_ID.bits() != 0).then_some(stx.stx_mnt_id),
    })
}

/// Why a root cannot be walked now.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    /// Missing or unreadable: a volume may appear later (transient).
    #[error("{0}")]
    Unavailable(String),
    /// Not the directory that was configured (permanent).
    #[error("{0}")]
    Refused(String),
}

#[cfg(test)]
#[path = "roots_tests.rs"]
mod tests;
