//! The results of the two kinds of task (contract): what `task.succeeded` carries, what
//! `GET /tasks/{id}` shows as `result`, and what a failure's progress holds. The README
//! documents every field.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// At most this many errors are listed in a temp-files result (all are counted).
pub const MAX_ERRORS: usize = 20;
/// Sample paths a temp-file result lists.
pub const MAX_SAMPLES: usize = 10;

/// The result of a `cleanup_runs` task (contract; see README). It is also the progress a
/// continuation or a retry carries from one turn to the next.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RunsResult {
    pub dry_run: bool,
    /// Rows that matched: in a dry run, what a real run would delete now; else = deleted.
    pub runs_matched: u64,
    pub runs_deleted: u64,
    pub batches: u64,
    /// A few ids of matched rows (dry run) or deleted rows (first batch).
    pub sample_ids: Vec<String>,
    pub cutoff: DateTime<Utc>,
    pub statuses: Vec<String>,
    /// True when `max_rows` stopped the run before every eligible row was gone.
    pub capped: bool,
    /// Age in seconds of the oldest row still eligible after the run (null when none).
    pub oldest_remaining_age_seconds: Option<f64>,
    /// Working time over every turn.
    pub duration_ms: u64,
    /// The longest transaction of the run that locked the runs table (a batch, or a
    /// partition's detach): about how long the run held any lock on it at once.
    #[serde(default)]
    pub longest_batch_ms: u64,
    /// Turns the task took: more than one when a shutdown or the turn budget handed it on.
    #[serde(default)]
    pub turns: u32,
    /// How batches walked the table: `keyset` (an index leads with the timestamp column:
    /// oldest first) or `key_range` (in key order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// Where the last batch stopped, carried by a continuation or a retry so that the
    /// next turn goes on from there; not part of a finished result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<RunsCursor>,
    /// Partitions removed whole, oldest first (in a dry run: those that would be); their
    /// rows are counted in `runs_deleted` (`runs_matched`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<RunsPartition>,
    /// How many of `runs_deleted` are estimates: the rows of partitions dropped without
    /// reading them, from PostgreSQL's statistics (`RUNS_PARTITION_COUNT=estimate`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub runs_estimated: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A partition of the runs table removed whole: every row in it was eligible.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RunsPartition {
    /// As PostgreSQL names it.
    pub name: String,
    pub rows: u64,
    /// `dropped`, or `detached` (kept as a table of its own: RUNS_PARTITIONS=detach).
    pub action: String,
    /// `rows` comes from PostgreSQL's statistics: the partition was proven eligible from
    /// its indexes and dropped without reading it (never in a dry run, which counts).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub estimated: bool,
}

/// The last row a batch passed, as text in the columns' own types.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RunsCursor {
    pub ts: String,
    pub id: String,
}

/// One recorded problem: where (relative to its root) and what.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileError {
    pub root: String,
    pub path: String,
    pub error: String,
}

/// The result of a `cleanup_temp_files` task (contract; see README).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TempFilesResult {
    pub dry_run: bool,
    pub roots: Vec<String>,
    pub cutoff: DateTime<Utc>,
    /// Files (and symlinks) old enough, matching, and deletable: in a dry run, what a real
    /// run would delete now.
    pub files_matched: u64,
    pub files_deleted: u64,
    pub bytes_matched: u64,
    pub bytes_freed: u64,
    /// Directories this task emptied that were (or, in a dry run, would be) removed.
    pub dirs_matched: u64,
    pub dirs_removed: u64,
    /// Entries left alone for safety: other mounts, special files, entries that changed
    /// under the walk or were moved out of the root, files in use, immutable or not
    /// deletable by this worker.
    pub skipped: u64,
    /// Matching files (and directories) kept, by reason: `young`, `capped`, `in_use`,
    /// `locked`, `immutable`, `not_permitted`, `unreadable`, `other_mount`, `special_file`,
    /// `replaced`, `moved_out_of_root`. Reasons with no entry are left out.
    #[serde(default)]
    pub kept: BTreeMap<String, u64>,
    /// True when `max_files` stopped the run before every eligible file was gone.
    pub capped: bool,
    /// Age in seconds of the oldest eligible file still present after the run.
    pub oldest_remaining_age_seconds: Option<f64>,
    pub errors_total: u64,
    pub errors: Vec<FileError>,
    /// A few of the files matched (dry run) or deleted, as `root/path`, at most
    /// [`MAX_SAMPLES`].
    #[serde(default)]
    pub sample_paths: Vec<String>,
    /// Working time over every turn.
    pub duration_ms: u64,
    /// Turns the task took: more than one when a shutdown, the turn budget or a failed
    /// attempt handed it on.
    #[serde(default)]
    pub turns: u32,
}

impl TempFilesResult {
    /// Add the work of earlier turns. A later turn skips what earlier turns finished, and
    /// what they deleted is gone, so adding their counts counts every file once.
    pub fn absorb(&mut self, earlier: &TempFilesResult) {
        self.files_matched += earlier.files_matched;
        self.files_deleted += earlier.files_deleted;
        self.bytes_matched += earlier.bytes_matched;
        self.bytes_freed += earlier.bytes_freed;
        self.dirs_matched += earlier.dirs_matched;
        self.dirs_removed += earlier.dirs_removed;
        self.skipped += earlier.skipped;
        for (reason, n) in &earlier.kept {
            *self.kept.entry(reason.clone()).or_default() += n;
        }
        self.capped |= earlier.capped;
        self.errors_total += earlier.errors_total;
        let mut errors = earlier.errors.clone();
        errors.append(&mut self.errors);
        errors.truncate(MAX_ERRORS);
        self.errors = errors;
        let mut samples = earlier.sample_paths.clone();
        samples.append(&mut self.sample_paths);
        samples.truncate(MAX_SAMPLES);
        self.sample_paths = samples;
        self.duration_ms += earlier.duration_ms;
        self.turns += earlier.turns;
    }
}
/// A size in binary units, as results are written for a person: "3.4 MiB".
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64;
    let mut unit = "B";
    for u in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = u;
    }
    format!("{value:.1} {unit}")
}
