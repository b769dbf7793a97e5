//! `cleanup_temp_files`: delete old files under the configured temp roots, safely.
//!
//! A task names a root from `TEMP_ROOTS`, never a path ([`roots`] resolves and checks
//! them); [`walk`] holds every syscall that decides what is deleted, and its module
//! documentation lists the safety rules. This module runs a walk for one turn of a task
//! and carries its progress between turns and attempts, so that every file is judged (and
//! counted) once and `max_files` holds over the whole task.
//!
//! Best effort: an unreadable directory or a vanished file is recorded in `errors`
//! (capped) and the walk goes on. Subdirectories are walked in parallel on a bounded
//! thread pool, except under `max_files`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::Utc;
use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};
use shared::envelope::TaskEnvelope;
use shared::tasks::CleanupTempFilesParams;
use tokio_util::sync::CancellationToken;

use super::{Checkpoint, ExecError, Execution, Report};

pub mod roots;
pub mod walk;

pub use roots::TempRoot;
pub use shared::results::{FileError, TempFilesResult};
use walk::{Counters, Privileges, Walk};

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
    /// Directories (paths relative to the root, with their device, inode and birth time)
    /// where a turn deleted something without finishing them: when a later turn finds the
    /// same directory there, empty, this task emptied it. A directory replaced at that path
    /// meanwhile is another one, never touched. Progress written before identities were
    /// kept (`touched`, paths only) is read as nothing touched: such directories stay.
    #[serde(
        default,
        rename = "touched_dirs",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub touched: BTreeMap<String, DirId>,
}

/// Which directory: device, inode and birth time. Device and inode alone do not tell a
/// directory from one created after it was deleted: ext4 hands the freed inode number to
/// the next new directory at once.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct DirId {
    pub dev: u64,
    pub ino: u64,
    /// Birth time (`statx` `STATX_BTIME`: seconds, nanoseconds). None when the filesystem
    /// does not report one, and in progress written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub btime: Option<(i64, u32)>,
}

impl DirId {
    pub fn of(meta: &walk::Meta) -> Self {
        Self {
            dev: meta.dev,
            ino: meta.ino,
            btime: meta.btime,
        }
    }

    /// Whether `now` is this directory: same device, inode and birth time. Without a birth
    /// time it cannot be told from a directory created since at the same inode, so it is
    /// taken for another one (and kept).
    pub fn same_as(&self, now: &DirId) -> bool {
        self.btime.is_some() && (self.dev, self.ino, self.btime) == (now.dev, now.ino, now.btime)
    }
}

/// What a continuation (or a retry) of a temp-file task carries.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TempFilesProgress {
    /// Counts so far.
    pub result: TempFilesResult,
    /// Per root name.
    pub done: BTreeMap<String, RootProgress>,
    /// Consecutive turns that finished nothing new.
    #[serde(default)]
    pub stalled_turns: u32,
    /// Modification time (Unix seconds) of the oldest eligible file left by any turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_remaining_mtime: Option<i64>,
}

/// Turns in a row without progress before the task fails instead of looping.
const MAX_STALLED_TURNS: u32 = 3;

pub struct TempFilesExecutor {
    roots: BTreeMap<String, TempRoot>,
    pool: Arc<rayon::ThreadPool>,
    check_locks: bool,
    privileges: Privileges,
}

impl TempFilesExecutor {
    pub fn new(
        roots: BTreeMap<String, TempRoot>,
        threads: usize,
        check_locks: bool,
    ) -> anyhow::Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("temp-walk-{i}"))
            .build()?;
        Ok(Self {
            roots,
            pool: Arc::new(pool),
            check_locks,
            privileges: Privileges::of_this_process(),
        })
    }

    pub async fn execute(
        &self,
        envelope: &TaskEnvelope,
        params: &CleanupTempFilesParams,
        cancel: &CancellationToken,
        checkpoint: &Checkpoint,
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
        // The ledger hears of a real run before it deletes anything (a cancel that comes
        // meanwhile sets the stop flag below before the walk's first entry).
        if !params.dry_run && !checkpoint.announce().await {
            return Err(ExecError::unannounced());
        }
        // A turn stopped before it began deletes nothing: the walk checks this flag before
        // each entry, and the watcher below sets it only once it runs.
        let stop = Arc::new(AtomicBool::new(cancel.is_cancelled()));
        let walk = Arc::new(Walk {
            cutoff: envelope.cutoff,
            patterns,
            dry_run: params.dry_run,
            remove_empty_dirs: params.remove_empty_dirs,
            max_files: params.max_files,
            task_id: envelope.task_id,
            claims: Default::default(),
            claims_failed: Mutex::new(None),
            check_locks: self.check_locks,
            privileges: self.privileges,
            stop: stop.clone(),
            counters: Counters::default(),
            errors: Mutex::new(Vec::new()),
            samples: Mutex::new(Vec::new()),
            interrupted: AtomicBool::new(false),
            done: Mutex::new(resume.clone()),
            resume,
            #[cfg(test)]
            after_open: None,
        });
        // `max_files` counts over every turn and every attempt.
        if let Some(earlier) = &earlier {
            walk.counters
                .claimed
                .store(earlier.result.files_matched, Ordering::Relaxed);
        }
        let started = Instant::now();
        let turn = Turn {
            walk: walk.clone(),
            roots: roots.clone(),
            earlier: earlier.clone(),
            started,
        };
        // Whatever happens to this turn, its progress so far can be reported.
        checkpoint.source({
            let turn = turn.clone();
            move || serde_json::to_value(turn.progress()).expect("progress serializes")
        });
        let pool = self.pool.clone();
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
        let failed = |error: ExecError| {
            let progress = serde_json::to_value(turn.progress()).expect("progress serializes");
            error.with_progress(progress)
        };
        match outcome {
            Err(panic) => {
                return Err(failed(ExecError::transient(format!(
                    "temp-file walk panicked: {panic}"
                ))))
            }
            Ok(Err(error)) => return Err(failed(error)),
            Ok(Ok(())) => {}
        }
        let mut progress = turn.progress();
        if !walk.interrupted.load(Ordering::SeqCst) {
            return Ok(Execution::Done(Report::TempFiles(progress.result)));
        }
        // Progress: a part of the tree finished, or (real runs) files deleted.
        let deleted_now = walk.counters.files_deleted.load(Ordering::Relaxed) > 0;
        let progressed = (!params.dry_run && deleted_now)
            || earlier.as_ref().is_none_or(|e| e.done != progress.done);
        progress.stalled_turns = match (&earlier, progressed) {
            (_, true) => 0,
            (Some(e), false) => e.stalled_turns + 1,
            (None, false) => 1,
        };
        if progress.stalled_turns >= MAX_STALLED_TURNS {
            return Err(failed(ExecError::permanent(format!(
                "the walk finished no directory in {} turns in a row: one top-level directory \
                 takes longer than TURN_BUDGET to walk; raise TURN_BUDGET",
                progress.stalled_turns
            ))));
        }
        Ok(Execution::Interrupted {
            progress: serde_json::to_value(progress).expect("progress serializes"),
        })
    }
}

/// One turn's walk and what came before it: enough to say how far the task got.
#[derive(Clone)]
struct Turn {
    walk: Arc<Walk>,
    roots: Vec<TempRoot>,
    earlier: Option<TempFilesProgress>,
    started: Instant,
}

impl Turn {
    /// The task's progress as of now: this turn's counts added to the earlier ones.
    fn progress(&self) -> TempFilesProgress {
        let mut result = self.walk.result(&self.roots);
        result.duration_ms = self.started.elapsed().as_millis() as u64;
        result.turns = 1;
        let oldest = self.walk.counters.oldest_remaining.load(Ordering::Relaxed);
        let mut oldest = (oldest != i64::MAX).then_some(oldest);
        if let Some(earlier) = &self.earlier {
            result.absorb(&earlier.result);
            oldest = match (oldest, earlier.oldest_remaining_mtime) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        result.oldest_remaining_age_seconds =
            oldest.map(|mtime| walk::age_seconds(Utc::now().timestamp(), mtime));
        TempFilesProgress {
            result,
            done: self.walk.done.lock().expect("done lock").clone(),
            stalled_turns: self.earlier.as_ref().map_or(0, |e| e.stalled_turns),
            oldest_remaining_mtime: oldest,
        }
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

#[cfg(test)]
#[path = "tests.rs"]
mod tests;

#[cfg(test)]
#[path = "copies_tests.rs"]
mod copies_tests;
