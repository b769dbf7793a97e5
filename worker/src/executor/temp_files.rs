//! `cleanup_temp_files`: delete old files under the configured temp roots, safely.
//!
//! Safety rules (contract):
//! - a task names a root from `TEMP_ROOTS`, never a path;
//! - the walk works relative to open directory handles (`openat`, `fstatat`, `unlinkat`),
//!   opening each subdirectory with `O_NOFOLLOW | O_DIRECTORY` and checking that the
//!   opened directory is the one it examined (same device and inode), so a directory
//!   swapped for a symlink mid-walk is never followed;
//! - symlinks are never followed: a symlink is judged by its own age and unlinked, its
//!   target is never touched;
//! - the walk never leaves the root's filesystem and never removes the root itself;
//! - the age of each entry is read (`fstatat`, no follow) immediately before its
//!   `unlinkat`, with nothing queued in between.
//!
//! Best effort: an unreadable directory or a vanished file is recorded in `errors`
//! (capped) and the walk goes on. Subdirectories are walked in parallel on a bounded
//! thread pool.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CStr, CString, OsStr};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, Utc};
use globset::{Glob, GlobSet, GlobSetBuilder};
use rayon::prelude::*;
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};
use shared::envelope::TaskEnvelope;
use shared::tasks::CleanupTempFilesParams;
use tokio_util::sync::CancellationToken;

use super::{ExecError, Execution};
use crate::config::TempRoot;

/// Errors kept in a result; the rest are only counted.
const MAX_ERRORS: usize = 20;
/// Deeper trees are not descended (and reported): bounds open descriptors per walk.
const MAX_DEPTH: usize = 128;

/// One recorded problem: where (relative to its root) and what.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileError {
    pub root: String,
    pub path: String,
    pub error: String,
}

/// The result of a `cleanup_temp_files` task (contract; see README). It is also the
/// progress a continuation carries from one turn to the next.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TempFilesResult {
    pub dry_run: bool,
    pub roots: Vec<String>,
    pub cutoff: DateTime<Utc>,
    /// Files (and symlinks) old enough and matching: in a dry run, what a real run
    /// would delete now.
    pub files_matched: u64,
    pub files_deleted: u64,
    pub bytes_matched: u64,
    pub bytes_freed: u64,
    /// Directories left empty that were (or, in a dry run, would be) removed.
    pub dirs_matched: u64,
    pub dirs_removed: u64,
    /// Entries not judged for safety: other filesystems, special files, entries that
    /// changed under the walk.
    pub skipped: u64,
    /// True when `max_files` stopped the run before every eligible file was gone.
    pub capped: bool,
    /// Age in seconds of the oldest eligible file still present after the run.
    pub oldest_remaining_age_seconds: Option<f64>,
    pub errors_total: u64,
    pub errors: Vec<FileError>,
    /// Working time over every turn.
    pub duration_ms: u64,
    /// Turns the task took: more than one when a shutdown or the turn budget handed it on.
    #[serde(default)]
    pub turns: u32,
}

impl TempFilesResult {
    /// Add the work of earlier turns. A new turn walks again from the top: what earlier
    /// turns deleted is gone, so adding their counts counts every file once.
    fn absorb(&mut self, earlier: &TempFilesResult) {
        self.files_matched += earlier.files_matched;
        self.files_deleted += earlier.files_deleted;
        self.bytes_matched += earlier.bytes_matched;
        self.bytes_freed += earlier.bytes_freed;
        self.dirs_matched += earlier.dirs_matched;
        self.dirs_removed += earlier.dirs_removed;
        self.errors_total += earlier.errors_total;
        let mut errors = earlier.errors.clone();
        errors.append(&mut self.errors);
        errors.truncate(MAX_ERRORS);
        self.errors = errors;
        self.duration_ms += earlier.duration_ms;
        self.turns += earlier.turns;
    }
}

/// How far earlier turns got in one root: a later turn skips what is done, so every
/// file is judged (and counted) once however many turns a task takes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RootProgress {
    /// The whole root was walked.
    #[serde(default)]
    pub complete: bool,
    /// The files directly in the root were judged.
    #[serde(default)]
    pub files_done: bool,
    /// Top-level subdirectories walked completely (names; `hex:` prefix when not UTF-8).
    #[serde(default)]
    pub subdirs_done: BTreeSet<String>,
}

/// What a continuation of a temp-file task carries.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TempFilesProgress {
    /// Counts so far.
    pub result: TempFilesResult,
    /// Per root name.
    pub done: BTreeMap<String, RootProgress>,
    /// Consecutive turns that finished nothing new.
    #[serde(default)]
    pub stalled_turns: u32,
}

/// Turns in a row without progress before the task fails instead of looping.
const MAX_STALLED_TURNS: u32 = 3;

fn encode_name(name: &CStr) -> String {
    match name.to_str() {
        Ok(text) if !text.starts_with("hex:") => text.to_owned(),
        _ => {
            let hex: String = name.to_bytes().iter().map(|b| format!("{b:02x}")).collect();
            format!("hex:{hex}")
        }
    }
}

pub struct TempFilesExecutor {
    roots: BTreeMap<String, TempRoot>,
    pool: Arc<rayon::ThreadPool>,
}

impl TempFilesExecutor {
    pub fn new(roots: BTreeMap<String, TempRoot>, threads: usize) -> anyhow::Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("temp-walk-{i}"))
            .build()?;
        Ok(Self {
            roots,
            pool: Arc::new(pool),
        })
    }

    pub async fn execute(
        &self,
        envelope: &TaskEnvelope,
        params: &CleanupTempFilesParams,
        cancel: &CancellationToken,
    ) -> Result<Execution, ExecError> {
        let earlier = match &envelope.progress {
            Some(progress) => Some(
                serde_json::from_value::<TempFilesProgress>(progress.clone()).map_err(|e| {
                    ExecError::permanent(format!("unreadable continuation progress: {e}"))
                })?,
            ),
            None => None,
        };
        let resume = earlier.as_ref().map(|p| p.done.clone()).unwrap_or_default();
        let roots: Vec<TempRoot> = match &params.root {
            Some(name) => match self.roots.get(name) {
                Some(root) => vec![root.clone()],
                None => {
                    let known: Vec<&str> = self.roots.keys().map(String::as_str).collect();
                    return Err(ExecError::permanent(format!(
                        "unknown temp root `{name}`; this worker knows: {}",
                        known.join(", ")
                    )));
                }
            },
            None => self.roots.values().cloned().collect(),
        };
        let patterns = match &params.patterns {
            Some(patterns) => Some(build_globset(patterns).map_err(ExecError::permanent)?),
            None => None,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let walk = Arc::new(Walk {
            cutoff: envelope.cutoff,
            patterns,
            dry_run: params.dry_run,
            remove_empty_dirs: params.remove_empty_dirs,
            max_files: params.max_files,
            stop: stop.clone(),
            counters: Counters::default(),
            errors: Mutex::new(Vec::new()),
            interrupted: AtomicBool::new(false),
            done: Mutex::new(resume.clone()),
            resume,
        });
        // `max_files` counts over every turn.
        if let Some(earlier) = &earlier {
            walk.counters
                .claimed
                .store(earlier.result.files_matched, Ordering::Relaxed);
        }
        let pool = self.pool.clone();
        let started = Instant::now();
        let job = {
            let walk = walk.clone();
            let roots = roots.clone();
            tokio::task::spawn_blocking(move || pool.install(|| walk.run(&roots)))
        };
        // Stop the walk at the next entry when the task is cancelled.
        let watcher = {
            let cancel = cancel.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                cancel.cancelled().await;
                stop.store(true, Ordering::SeqCst);
            })
        };
        let outcome = job.await;
        watcher.abort();
        let outcome =
            outcome.map_err(|e| ExecError::transient(format!("temp-file walk panicked: {e}")))?;
        outcome?;
        let mut result = walk.result(&roots);
        result.duration_ms = started.elapsed().as_millis() as u64;
        result.turns = 1;
        if let Some(earlier) = &earlier {
            result.absorb(&earlier.result);
        }
        if !walk.interrupted.load(Ordering::SeqCst) {
            return Ok(Execution::Done(
                serde_json::to_value(&result).expect("result serializes"),
            ));
        }
        let done = walk.done.lock().expect("done lock").clone();
        // Progress: a part of the tree finished, or (real runs) files deleted.
        let deleted_now = walk.counters.files_deleted.load(Ordering::Relaxed) > 0;
        let progressed =
            (!params.dry_run && deleted_now) || earlier.as_ref().is_none_or(|e| e.done != done);
        let stalled_turns = match (&earlier, progressed) {
            (_, true) => 0,
            (Some(e), false) => e.stalled_turns + 1,
            (None, false) => 1,
        };
        if stalled_turns >= MAX_STALLED_TURNS {
            return Err(ExecError::permanent(format!(
                "the walk finished no directory in {stalled_turns} turns in a row: one \
                 top-level directory takes longer than TURN_BUDGET to walk; raise TURN_BUDGET"
            )));
        }
        let progress = TempFilesProgress {
            result,
            done,
            stalled_turns,
        };
        Ok(Execution::Interrupted {
            progress: serde_json::to_value(progress).expect("progress serializes"),
        })
    }
}

/// Globs are matched against the path relative to the root; `*` also crosses `/`.
pub fn build_globset(patterns: &[String]) -> Result<GlobSet, String> {
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        shared::tasks::validate_pattern(pattern)?;
        builder.add(Glob::new(pattern).map_err(|e| format!("`{pattern}`: {e}"))?);
    }
    builder.build().map_err(|e| e.to_string())
}

#[derive(Default)]
struct Counters {
    files_matched: AtomicU64,
    files_deleted: AtomicU64,
    bytes_matched: AtomicU64,
    bytes_freed: AtomicU64,
    dirs_matched: AtomicU64,
    dirs_removed: AtomicU64,
    skipped: AtomicU64,
    errors_total: AtomicU64,
    /// Files claimed against `max_files`.
    claimed: AtomicU64,
    capped: AtomicBool,
    /// Oldest mtime (seconds) of an eligible file still present; i64::MAX when none.
    oldest_remaining: AtomicI64,
}

struct Walk {
    cutoff: DateTime<Utc>,
    patterns: Option<GlobSet>,
    dry_run: bool,
    remove_empty_dirs: bool,
    max_files: Option<u64>,
    stop: Arc<AtomicBool>,
    counters: Counters,
    errors: Mutex<Vec<FileError>>,
    /// Set when `stop` made the walk pass over entries: the task is not complete.
    interrupted: AtomicBool,
    /// What earlier turns finished (skipped now).
    resume: BTreeMap<String, RootProgress>,
    /// What is finished, earlier turns included.
    done: Mutex<BTreeMap<String, RootProgress>>,
}

/// Where the walk is: which root, the directory's path relative to it, and its device.
struct Position<'a> {
    root: &'a str,
    rel: PathBuf,
    dev: u64,
    depth: usize,
}

/// What a directory looks like after the walk: entries left, and whether anything in it
/// (or below) was removed.
#[derive(Default, Clone, Copy)]
struct DirOutcome {
    remaining: u64,
    removed_any: bool,
    /// Entries were passed over because the walk was told to stop.
    incomplete: bool,
}

impl Walk {
    fn run(&self, roots: &[TempRoot]) -> Result<(), ExecError> {
        self.counters
            .oldest_remaining
            .store(i64::MAX, Ordering::Relaxed);
        for root in roots {
            let prior = self.resume.get(&root.name).cloned().unwrap_or_default();
            if prior.complete {
                continue;
            }
            // The configured path was resolved at start-up: a symlink here now means the
            // root was swapped, and it is not followed.
            let fd = rustix::fs::open(
                &root.path,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| {
                // A missing mount or volume may appear later: worth another attempt.
                ExecError::transient(format!(
                    "temp root `{}` ({}) cannot be opened: {}",
                    root.name,
                    root.path.display(),
                    std::io::Error::from(e)
                ))
            })?;
            let stat = rustix::fs::fstat(&fd).map_err(|e| {
                ExecError::transient(format!("temp root `{}` cannot be examined: {e}", root.name))
            })?;
            let position = Position {
                root: &root.name,
                rel: PathBuf::new(),
                dev: stat.st_dev,
                depth: 0,
            };
            let outcome = self.walk_top(&fd, &position, &prior);
            if !outcome.incomplete {
                self.mark(&root.name, |p| p.complete = true);
            }
        }
        Ok(())
    }

    /// An entry passed over because the walk was told to stop.
    fn stopped(&self, outcome: &mut DirOutcome) {
        self.interrupted.store(true, Ordering::Relaxed);
        outcome.incomplete = true;
        outcome.remaining += 1;
    }

    fn mark(&self, root: &str, change: impl FnOnce(&mut RootProgress)) {
        let mut done = self.done.lock().expect("done lock");
        change(done.entry(root.to_owned()).or_default());
    }

    /// A root's own directory: like any other, but it records which parts are finished
    /// and skips what earlier turns finished.
    fn walk_top(&self, dir: &OwnedFd, at: &Position<'_>, prior: &RootProgress) -> DirOutcome {
        self.walk_entries(dir, at, Some(prior))
    }

    fn walk_dir(&self, dir: &OwnedFd, at: &Position<'_>) -> DirOutcome {
        self.walk_entries(dir, at, None)
    }

    fn walk_entries(
        &self,
        dir: &OwnedFd,
        at: &Position<'_>,
        top: Option<&RootProgress>,
    ) -> DirOutcome {
        let mut outcome = DirOutcome::default();
        let entries = match read_entries(dir) {
            Ok(entries) => entries,
            Err(e) => {
                self.record(at.root, &at.rel, format!("cannot read directory: {e}"));
                outcome.remaining = 1; // unknown content: never treat it as empty
                return outcome;
            }
        };
        let mut subdirs = Vec::new();
        for name in entries {
            let rel = at.rel.join(OsStr::from_bytes(name.as_bytes()));
            if let Some(prior) = top {
                if prior.subdirs_done.contains(&encode_name(&name)) {
                    outcome.remaining += 1;
                    continue;
                }
            }
            // A real run may stop at any entry: what it deleted is gone and counted. A dry
            // run stops only between the root's top-level parts, so that a part is counted
            // whole or not at all (a later turn counts it again from the start).
            if !self.dry_run && self.stop.load(Ordering::Relaxed) {
                self.stopped(&mut outcome);
                continue;
            }
            let stat = match rustix::fs::statat(dir, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => stat,
                Err(Errno::NOENT) => {
                    self.record(at.root, &rel, "vanished during the walk".into());
                    continue;
                }
                Err(e) => {
                    self.record(at.root, &rel, format!("cannot examine: {e}"));
                    outcome.remaining += 1;
                    continue;
                }
            };
            match FileType::from_raw_mode(stat.st_mode) {
                FileType::Directory if stat.st_dev != at.dev => {
                    // A mount point: another filesystem is never entered.
                    self.counters.skipped.fetch_add(1, Ordering::Relaxed);
                    outcome.remaining += 1;
                }
                FileType::Directory => subdirs.push((name, stat, rel)),
                FileType::RegularFile | FileType::Symlink
                    if top.is_some_and(|prior| prior.files_done) =>
                {
                    // Judged by an earlier turn.
                    outcome.remaining += 1;
                }
                FileType::RegularFile | FileType::Symlink => {
                    if self.judge_file(dir, &name, &stat, at.root, &rel) {
                        outcome.removed_any = true;
                    } else {
                        outcome.remaining += 1;
                    }
                }
                _ => {
                    self.counters.skipped.fetch_add(1, Ordering::Relaxed);
                    outcome.remaining += 1;
                }
            }
        }
        if top.is_some() && !outcome.incomplete {
            self.mark(at.root, |p| p.files_done = true);
        }
        let children: Vec<DirOutcome> = subdirs
            .into_par_iter()
            .map(|(name, stat, rel)| {
                if top.is_some() && self.stop.load(Ordering::Relaxed) {
                    let mut skipped = DirOutcome::default();
                    self.stopped(&mut skipped);
                    return skipped;
                }
                let child = self.visit_subdir(dir, &name, &stat, at, rel);
                if top.is_some() && !child.incomplete {
                    self.mark(at.root, |p| {
                        p.subdirs_done.insert(encode_name(&name));
                    });
                }
                child
            })
            .collect();
        for child in children {
            outcome.remaining += child.remaining;
            outcome.removed_any |= child.removed_any;
            outcome.incomplete |= child.incomplete;
        }
        outcome
    }

    /// Walk one subdirectory and, if asked, remove it when the cleanup left it empty.
    /// Returns the parent's view: `remaining` is 0 when the subdirectory is (or would be) gone.
    fn visit_subdir(
        &self,
        parent: &OwnedFd,
        name: &CStr,
        seen: &Stat,
        at: &Position<'_>,
        rel: PathBuf,
    ) -> DirOutcome {
        if at.depth + 1 > MAX_DEPTH {
            self.record(
                at.root,
                &rel,
                format!("deeper than {MAX_DEPTH} levels; not descended"),
            );
            return DirOutcome {
                remaining: 1,
                removed_any: false,
                incomplete: false,
            };
        }
        let fd = match rustix::fs::openat(
            parent,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::LOOP) | Err(Errno::NOTDIR) => {
                // It was a directory when examined and is not any more: swapped mid-walk.
                self.counters.skipped.fetch_add(1, Ordering::Relaxed);
                self.record(
                    at.root,
                    &rel,
                    "replaced during the walk; not followed".into(),
                );
                return DirOutcome {
                    remaining: 1,
                    removed_any: false,
                    incomplete: false,
                };
            }
            Err(Errno::NOENT) => {
                self.record(at.root, &rel, "vanished during the walk".into());
                return DirOutcome::default();
            }
            Err(e) => {
                self.record(at.root, &rel, format!("cannot open directory: {e}"));
                return DirOutcome {
                    remaining: 1,
                    removed_any: false,
                    incomplete: false,
                };
            }
        };
        match rustix::fs::fstat(&fd) {
            Ok(now) if now.st_dev == seen.st_dev && now.st_ino == seen.st_ino => {}
            _ => {
                self.counters.skipped.fetch_add(1, Ordering::Relaxed);
                self.record(
                    at.root,
                    &rel,
                    "replaced during the walk; not followed".into(),
                );
                return DirOutcome {
                    remaining: 1,
                    removed_any: false,
                    incomplete: false,
                };
            }
        }
        let position = Position {
            root: at.root,
            rel,
            dev: at.dev,
            depth: at.depth + 1,
        };
        let inner = self.walk_dir(&fd, &position);
        drop(fd);
        let empty = inner.remaining == 0 && !inner.incomplete;
        let left_by_us = inner.removed_any || self.is_old(seen);
        if !(self.remove_empty_dirs && empty && left_by_us) {
            return DirOutcome {
                remaining: 1,
                removed_any: inner.removed_any,
                incomplete: inner.incomplete,
            };
        }
        self.counters.dirs_matched.fetch_add(1, Ordering::Relaxed);
        if self.dry_run {
            return DirOutcome {
                remaining: 0,
                removed_any: true,
                incomplete: false,
            };
        }
        match rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR) {
            Ok(()) => {
                self.counters.dirs_removed.fetch_add(1, Ordering::Relaxed);
                DirOutcome {
                    remaining: 0,
                    removed_any: true,
                    incomplete: false,
                }
            }
            // Something appeared in it meanwhile: leave it.
            Err(Errno::NOTEMPTY) | Err(Errno::EXIST) => DirOutcome {
                remaining: 1,
                removed_any: true,
                incomplete: false,
            },
            Err(e) => {
                self.record(
                    position.root,
                    &position.rel,
                    format!("cannot remove empty directory: {e}"),
                );
                DirOutcome {
                    remaining: 1,
                    removed_any: true,
                    incomplete: false,
                }
            }
        }
    }

    // `st_mtime`'s integer type differs between platforms.
    #[allow(clippy::unnecessary_cast)]
    fn is_old(&self, stat: &Stat) -> bool {
        let (secs, nanos) = (
            self.cutoff.timestamp(),
            i64::from(self.cutoff.timestamp_subsec_nanos()),
        );
        (stat.st_mtime as i64, stat.st_mtime_nsec as i64) < (secs, nanos)
    }

    /// Decide on one file or symlink, examined just now; delete it when eligible.
    /// Returns true when it is (or, in a dry run, would be) gone.
    fn judge_file(&self, dir: &OwnedFd, name: &CStr, stat: &Stat, root: &str, rel: &Path) -> bool {
        if !self.is_old(stat) {
            return false;
        }
        if let Some(patterns) = &self.patterns {
            if !patterns.is_match(rel) {
                return false;
            }
        }
        if let Some(cap) = self.max_files {
            if self.counters.claimed.fetch_add(1, Ordering::Relaxed) >= cap {
                self.counters.capped.store(true, Ordering::Relaxed);
                self.remember_remaining(stat);
                return false;
            }
        }
        let size = stat.st_size.max(0) as u64;
        self.counters.files_matched.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_matched
            .fetch_add(size, Ordering::Relaxed);
        if self.dry_run {
            self.remember_remaining(stat);
            return true;
        }
        // The age was read by the fstatat just above, with nothing in between: unlink now.
        match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
            Ok(()) => {
                self.counters.files_deleted.fetch_add(1, Ordering::Relaxed);
                self.counters.bytes_freed.fetch_add(size, Ordering::Relaxed);
                true
            }
            Err(Errno::NOENT) => {
                self.record(root, rel, "vanished before it could be deleted".into());
                true
            }
            Err(e) => {
                self.record(root, rel, format!("cannot delete: {e}"));
                self.remember_remaining(stat);
                false
            }
        }
    }

    #[allow(clippy::unnecessary_cast)]
    fn remember_remaining(&self, stat: &Stat) {
        self.counters
            .oldest_remaining
            .fetch_min(stat.st_mtime as i64, Ordering::Relaxed);
    }

    fn record(&self, root: &str, rel: &Path, error: String) {
        self.counters.errors_total.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.errors.lock().expect("errors lock");
        if errors.len() < MAX_ERRORS {
            errors.push(FileError {
                root: root.to_owned(),
                path: rel.display().to_string(),
                error,
            });
        }
    }

    fn result(&self, roots: &[TempRoot]) -> TempFilesResult {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let oldest = c.oldest_remaining.load(Ordering::Relaxed);
        TempFilesResult {
            dry_run: self.dry_run,
            roots: roots.iter().map(|r| r.name.clone()).collect(),
            cutoff: self.cutoff,
            files_matched: load(&c.files_matched),
            files_deleted: load(&c.files_deleted),
            bytes_matched: load(&c.bytes_matched),
            bytes_freed: load(&c.bytes_freed),
            dirs_matched: load(&c.dirs_matched),
            dirs_removed: load(&c.dirs_removed),
            skipped: load(&c.skipped),
            capped: c.capped.load(Ordering::Relaxed),
            oldest_remaining_age_seconds: (oldest != i64::MAX)
                .then(|| (Utc::now().timestamp() - oldest).max(0) as f64),
            errors_total: load(&c.errors_total),
            errors: self.errors.lock().expect("errors lock").clone(),
            duration_ms: 0,
            turns: 0,
        }
    }
}

/// The names in a directory, without `.` and `..`.
fn read_entries(dir: &OwnedFd) -> std::io::Result<Vec<CString>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn walk(dry_run: bool) -> Walk {
        Walk {
            // Everything older than one hour.
            cutoff: Utc::now() - chrono::Duration::hours(1),
            patterns: None,
            dry_run,
            remove_empty_dirs: false,
            max_files: None,
            stop: Arc::new(AtomicBool::new(false)),
            counters: Counters::default(),
            errors: Mutex::new(Vec::new()),
            interrupted: AtomicBool::new(false),
            resume: BTreeMap::new(),
            done: Mutex::new(BTreeMap::new()),
        }
    }

    fn old_file(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"data").unwrap();
        let when = SystemTime::now() - Duration::from_secs(48 * 3600);
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(when)
            .unwrap();
    }

    fn open_dir(path: &Path) -> OwnedFd {
        rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap()
    }

    /// Examine `root/a`, then let `swap` replace it, then visit it as the walk would.
    fn visit_after_swap(swap: impl FnOnce(&Path)) -> (Walk, tempfile::TempDir) {
        let scratch = tempfile::tempdir().unwrap();
        let root = scratch.path().join("root");
        old_file(&root.join("a/inside.tmp"));
        let root_fd = open_dir(&root);
        let seen = rustix::fs::statat(&root_fd, c"a", AtFlags::SYMLINK_NOFOLLOW).unwrap();
        swap(&root);
        let walk = walk(false);
        let at = Position {
            root: "root",
            rel: PathBuf::new(),
            dev: seen.st_dev,
            depth: 0,
        };
        walk.visit_subdir(&root_fd, c"a", &seen, &at, PathBuf::from("a"));
        (walk, scratch)
    }

    #[test]
    fn a_directory_swapped_for_a_symlink_mid_walk_is_not_followed() {
        let outside = tempfile::tempdir().unwrap();
        old_file(&outside.path().join("precious.tmp"));
        let target = outside.path().to_path_buf();
        let (walk, _scratch) = visit_after_swap(|root| {
            std::fs::rename(root.join("a"), root.join("a-moved")).unwrap();
            std::os::unix::fs::symlink(&target, root.join("a")).unwrap();
        });
        assert!(
            outside.path().join("precious.tmp").exists(),
            "the symlink's target was walked"
        );
        assert_eq!(walk.counters.files_deleted.load(Ordering::Relaxed), 0);
        assert_eq!(walk.counters.skipped.load(Ordering::Relaxed), 1);
        let errors = walk.errors.lock().unwrap();
        assert_eq!(errors[0].error, "replaced during the walk; not followed");
    }

    #[test]
    fn a_directory_swapped_for_another_directory_mid_walk_is_not_entered() {
        let (walk, scratch) = visit_after_swap(|root| {
            std::fs::rename(root.join("a"), root.join("a-moved")).unwrap();
            old_file(&root.join("a/other.tmp"));
        });
        assert!(scratch.path().join("root/a/other.tmp").exists());
        assert!(scratch.path().join("root/a-moved/inside.tmp").exists());
        assert_eq!(walk.counters.files_deleted.load(Ordering::Relaxed), 0);
        assert_eq!(walk.counters.skipped.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn an_unswapped_directory_is_walked() {
        let (walk, scratch) = visit_after_swap(|_| {});
        assert!(!scratch.path().join("root/a/inside.tmp").exists());
        assert_eq!(walk.counters.files_deleted.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn max_files_caps_the_run_and_reports_what_remains() {
        let scratch = tempfile::tempdir().unwrap();
        for i in 0..5 {
            old_file(&scratch.path().join(format!("d{i}/f.tmp")));
        }
        let mut walk = walk(false);
        walk.max_files = Some(3);
        let root = TempRoot {
            name: "s".into(),
            path: scratch.path().to_path_buf(),
        };
        walk.run(std::slice::from_ref(&root)).unwrap();
        let result = walk.result(&[root]);
        assert_eq!(result.files_deleted, 3);
        assert!(result.capped);
        assert!(result.oldest_remaining_age_seconds.unwrap() >= 47.0 * 3600.0);
    }

    /// Needs the privilege to mount a tmpfs (CI runs as root); says so and passes otherwise.
    #[test]
    fn another_filesystem_below_a_root_is_never_entered() {
        let scratch = tempfile::tempdir().unwrap();
        let mount_point = scratch.path().join("mnt");
        std::fs::create_dir(&mount_point).unwrap();
        old_file(&scratch.path().join("old.tmp"));
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "cleanup-test", mount_point.to_str().unwrap()])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("skipped: mounting a tmpfs needs privileges this run does not have");
            return;
        }
        old_file(&mount_point.join("on-other-fs.tmp"));
        let mut walk = walk(false);
        walk.remove_empty_dirs = true;
        let root = TempRoot {
            name: "s".into(),
            path: scratch.path().to_path_buf(),
        };
        let outcome = walk.run(std::slice::from_ref(&root));
        let survived = mount_point.join("on-other-fs.tmp").exists();
        let _ = std::process::Command::new("umount")
            .arg(&mount_point)
            .status();
        outcome.unwrap();
        assert!(survived, "a file on another filesystem was deleted");
        assert!(!scratch.path().join("old.tmp").exists());
        let result = walk.result(&[root]);
        assert_eq!(result.files_deleted, 1);
        assert_eq!(result.skipped, 1, "the mount point is skipped");
    }

    fn envelope(
        params: &CleanupTempFilesParams,
        progress: Option<serde_json::Value>,
    ) -> TaskEnvelope {
        let mut envelope = TaskEnvelope::new(
            uuid::Uuid::now_v7(),
            shared::tasks::TaskSpec::CleanupTempFiles(params.clone()),
            1,
            Utc::now(),
        );
        envelope.progress = progress;
        envelope
    }

    fn params(max_files: Option<u64>) -> CleanupTempFilesParams {
        CleanupTempFilesParams {
            max_age_hours: 1.0,
            dry_run: false,
            root: None,
            patterns: None,
            max_files,
            remove_empty_dirs: false,
            max_attempts: None,
        }
    }

    #[tokio::test]
    async fn a_continuation_skips_what_earlier_turns_finished_and_adds_their_counts() {
        let scratch = tempfile::tempdir().unwrap();
        for d in 0..3 {
            for f in 0..4 {
                old_file(&scratch.path().join(format!("d{d}/f{f}")));
            }
        }
        old_file(&scratch.path().join("top.tmp"));
        let root = TempRoot {
            name: "s".into(),
            path: scratch.path().to_path_buf(),
        };
        let executor = TempFilesExecutor::new(BTreeMap::from([("s".into(), root)]), 2).unwrap();
        // An earlier turn finished d0 (deleting 4 files there, which this test keeps so
        // that skipping shows) and the top-level files.
        let progress = TempFilesProgress {
            result: TempFilesResult {
                files_matched: 5,
                files_deleted: 5,
                bytes_matched: 20,
                bytes_freed: 20,
                turns: 1,
                ..Default::default()
            },
            done: BTreeMap::from([(
                "s".into(),
                RootProgress {
                    complete: false,
                    files_done: true,
                    subdirs_done: BTreeSet::from(["d0".into()]),
                },
            )]),
            stalled_turns: 0,
        };
        let p = params(None);
        let env = envelope(&p, Some(serde_json::to_value(&progress).unwrap()));
        let Execution::Done(result) = executor
            .execute(&env, &p, &CancellationToken::new())
            .await
            .unwrap()
        else {
            panic!("not interrupted")
        };
        assert_eq!(result["files_deleted"], 5 + 8, "{result}");
        assert_eq!(result["turns"], 2);
        assert!(
            scratch.path().join("d0/f0").exists(),
            "d0 was finished earlier"
        );
        assert!(
            scratch.path().join("top.tmp").exists(),
            "top-level files were finished earlier"
        );
        assert!(!scratch.path().join("d1/f0").exists());
    }

    #[tokio::test]
    async fn max_files_counts_over_every_turn() {
        let scratch = tempfile::tempdir().unwrap();
        for f in 0..6 {
            old_file(&scratch.path().join(format!("d/f{f}")));
        }
        let root = TempRoot {
            name: "s".into(),
            path: scratch.path().to_path_buf(),
        };
        let executor = TempFilesExecutor::new(BTreeMap::from([("s".into(), root)]), 2).unwrap();
        let progress = TempFilesProgress {
            result: TempFilesResult {
                files_matched: 3,
                files_deleted: 3,
                turns: 1,
                ..Default::default()
            },
            ..Default::default()
        };
        let p = params(Some(4));
        let env = envelope(&p, Some(serde_json::to_value(&progress).unwrap()));
        let Execution::Done(result) = executor
            .execute(&env, &p, &CancellationToken::new())
            .await
            .unwrap()
        else {
            panic!("not interrupted")
        };
        assert_eq!(result["files_deleted"], 4, "{result}");
        assert_eq!(result["capped"], true);
        let left = std::fs::read_dir(scratch.path().join("d")).unwrap().count();
        assert_eq!(left, 5, "only one more file in this turn");
    }

    #[test]
    fn globs_match_relative_paths_and_refuse_escapes() {
        let set = build_globset(&["*.tmp".into(), "cache/**".into()]).unwrap();
        assert!(set.is_match("a/b/c.tmp"));
        assert!(set.is_match("cache/x/y.bin"));
        assert!(!set.is_match("a/b/c.log"));
        assert!(build_globset(&["../*.tmp".into()]).is_err());
    }
}
