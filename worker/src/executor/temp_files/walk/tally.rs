//! What a walk adds up to: errors as they are met, and the counts of a turn.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::Utc;

use super::{age_seconds, FileError, Kept, TempFilesResult, TempRoot, Walk, MAX_ERRORS};

impl Walk {
    /// An error met at `rel` under `root`: counted, and listed while there is room.
    pub fn record(&self, root: &str, rel: &Path, error: String) {
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

    /// A file matched (dry run) or deleted: listed while there is room.
    pub fn sample(&self, root: &str, rel: &Path) {
        let mut samples = self.samples.lock().expect("samples lock");
        if samples.len() < shared::results::MAX_SAMPLES {
            samples.push(format!("{root}/{}", rel.display()));
        }
    }

    /// The counts of this turn.
    pub fn result(&self, roots: &[TempRoot]) -> TempFilesResult {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let oldest = c.oldest_remaining.load(Ordering::Relaxed);
        let kept: BTreeMap<String, u64> = Kept::ALL
            .iter()
            .map(|k| (k.as_str().to_owned(), load(&c.kept[*k as usize])))
            .filter(|(_, n)| *n > 0)
            .collect();
        let skipped = Kept::ALL
            .iter()
            .filter(|k| k.is_skip())
            .map(|k| load(&c.kept[*k as usize]))
            .sum();
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
            skipped,
            kept,
            capped: c.capped.load(Ordering::Relaxed),
            oldest_remaining_age_seconds: (oldest != i64::MAX)
                .then(|| age_seconds(Utc::now().timestamp(), oldest)),
            errors_total: load(&c.errors_total),
            errors: self.errors.lock().expect("errors lock").clone(),
            sample_paths: self.samples.lock().expect("samples lock").clone(),
            duration_ms: 0,
            turns: 0,
        }
    }
}
