//! The directories no temp root may be: `/` and anything in `/proc`, never; the system
//! trees (and directories holding one) unless a root says `allow_system_path`. Paths are
//! checked as written and as resolved, and directories by device and inode too, so that a
//! bind mount of `/` or of a system tree is recognised under an innocent path.

use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, StatxFlags, CWD};

use super::Identity;

/// Trees no cleanup should reach by accident; `/lib*` covers lib32, lib64, libx32...
/// `/tmp` and `/var/tmp` are not among them: they are what temp roots are for.
pub const SYSTEM_TREES: &[&str] = &[
    "/proc",
    "/sys",
    "/dev",
    "/etc",
    "/usr",
    "/bin",
    "/sbin",
    "/boot",
    "/var/lib",
    "/root",
    "/run",
    "/var/run",
    "/var/log",
    "/var/spool",
    "/var/cache",
    "/var/mail",
];

/// The names of `path` after a lexical clean-up (`//`, `.` and `..`), as written.
fn lexical_names(path: &Path) -> Vec<&std::ffi::OsStr> {
    let mut names = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => names.push(name),
            Component::ParentDir => {
                names.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    names
}

/// Whether `path` is (or is in) `/proc`, however it is spelt (`//proc`, `/./proc`,
/// `/tmp/../proc`). `..` is taken lexically, which may refuse more than needed, never less:
/// the resolved path and the opened directory are checked as well.
pub fn in_proc(path: &Path) -> bool {
    lexical_names(path).first().is_some_and(|n| *n == "proc")
}

/// Why `path` (absolute, resolved) is a system path, if it is one.
pub fn system_path(path: &Path) -> Option<String> {
    let text = path.to_string_lossy();
    let names: Vec<&str> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => n.to_str(),
            _ => None,
        })
        .collect();
    let is_lib = names.first().is_some_and(|n| n.starts_with("lib"));
    let tree = SYSTEM_TREES
        .iter()
        .map(Path::new)
        .find(|tree| path.starts_with(tree));
    if let Some(tree) = tree {
        return Some(format!(
            "{text} is inside the system tree {}",
            tree.display()
        ));
    }
    if is_lib {
        return Some(format!("{text} is inside the system tree /{}", names[0]));
    }
    if let Some(tree) = SYSTEM_TREES
        .iter()
        .map(Path::new)
        .find(|t| t.starts_with(path))
    {
        return Some(format!("{text} holds the system tree {}", tree.display()));
    }
    match names.as_slice() {
        ["home"] => Some(format!("{text} holds the users' home directories")),
        ["home", _] => Some(format!("{text} is a user's home directory")),
        _ => None,
    }
}

/// Device and inode of the directory at `path`, following symlinks.
pub fn identity_at(path: &Path) -> rustix::io::Result<Identity> {
    let stx = rustix::fs::statx(CWD, path, AtFlags::NO_AUTOMOUNT, StatxFlags::INO)?;
    Ok(Identity {
        dev: rustix::fs::makedev(stx.stx_dev_major, stx.stx_dev_minor),
        ino: stx.stx_ino,
        mnt_id: None,
    })
}

/// `/`, the system trees, the directories holding them and the users' home directories
/// of this host, by device and inode.
#[derive(Debug)]
pub struct SystemDirs(Vec<(PathBuf, Identity)>);

impl SystemDirs {
    pub fn of_this_host() -> Self {
        let mut paths: Vec<PathBuf> = vec![PathBuf::from("/"), PathBuf::from("/home")];
        for tree in SYSTEM_TREES.iter().map(Path::new) {
            paths.extend(
                tree.ancestors()
                    .filter(|a| a.parent().is_some())
                    .map(Path::to_path_buf),
            );
        }
        for (dir, keep) in [
            (
                "/",
                (|name: &str| name.starts_with("lib")) as fn(&str) -> bool,
            ),
            ("/home", |_| true),
        ] {
            if let Ok(entries) = std::fs::read_dir(dir) {
                paths.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_name().to_str().is_some_and(keep))
                        .map(|e| e.path()),
                );
            }
        }
        paths.sort();
        paths.dedup();
        Self(
            paths
                .into_iter()
                .filter_map(|p| identity_at(&p).ok().map(|id| (p, id)))
                .collect(),
        )
    }

    /// The system directory that `dir` is (same device and inode), if any.
    pub fn same_as(&self, dir: &Identity) -> Option<&Path> {
        self.0
            .iter()
            .find(|(_, id)| id.dev == dir.dev && id.ino == dir.ino)
            .map(|(path, _)| path.as_path())
    }
}
