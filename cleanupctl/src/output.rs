//! Text for people: numbers with separators, sizes, ages, tables, and a task's result as
//! a sentence.

use chrono::{DateTime, Utc};
use serde_json::Value;
use shared::results::{RunsResult, TempFilesResult};

/// 1234567 → "1,234,567".
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub use shared::results::human_bytes as bytes;

/// An age in its largest whole unit: "41 days", "3 hours", "12 minutes".
pub fn age(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    let (n, unit) = if s >= 2 * 86_400 {
        (s / 86_400, "day")
    } else if s >= 2 * 3_600 {
        (s / 3_600, "hour")
    } else if s >= 120 {
        (s / 60, "minute")
    } else {
        (s, "second")
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// "2026-10-24 03:00 UTC".
pub fn time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// How long ago `at` was, from `now`: "3h ago".
pub fn ago(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let seconds = (now - at).num_seconds().max(0) as u64;
    let short = humantime::format_duration(std::time::Duration::from_secs(seconds)).to_string();
    // "3h 12m 5s" → "3h"
    format!("{} ago", short.split(' ').next().unwrap_or("0s"))
}

fn seconds(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

/// A task's result as a sentence, by kind; `None` when it has no result to tell.
pub fn result_sentence(kind: &str, result: &Value) -> Option<String> {
    match kind {
        "cleanup_runs" => {
            let r: RunsResult = serde_json::from_value(result.clone()).ok()?;
            let statuses = r.statuses.join(", ");
            let oldest = r
                .oldest_remaining_age_seconds
                .map(|s| format!("; oldest {}", age(s)))
                .unwrap_or_default();
            Some(if r.dry_run {
                format!(
                    "Would delete {} runs ({statuses}) finished before {}{oldest}. Nothing was \
                     deleted (dry run).",
                    count(r.runs_matched),
                    time(r.cutoff)
                )
            } else {
                let capped = if r.capped { " (max_rows reached)" } else { "" };
                // Partitions dropped without reading them are counted from statistics.
                let about = if r.runs_estimated > 0 { "about " } else { "" };
                let whole = match r.partitions.len() {
                    0 => String::new(),
                    1 => " and 1 whole partition".to_owned(),
                    n => format!(" and {n} whole partitions"),
                };
                format!(
                    "Deleted {about}{} runs in {} batch{}{whole} ({}){capped}.",
                    count(r.runs_deleted),
                    count(r.batches),
                    if r.batches == 1 { "" } else { "es" },
                    seconds(r.duration_ms)
                )
            })
        }
        "cleanup_temp_files" => {
            let r: TempFilesResult = serde_json::from_value(result.clone()).ok()?;
            let dirs = |n: u64| {
                if n == 0 {
                    String::new()
                } else {
                    format!(
                        " and {} director{}",
                        count(n),
                        if n == 1 { "y" } else { "ies" }
                    )
                }
            };
            let roots = r.roots.join(", ");
            Some(if r.dry_run {
                format!(
                    "Would delete {} files ({}){} in {roots} older than {}. Nothing was deleted \
                     (dry run).",
                    count(r.files_matched),
                    bytes(r.bytes_matched),
                    dirs(r.dirs_matched),
                    time(r.cutoff)
                )
            } else {
                let errors = if r.errors_total > 0 {
                    format!(" {} error(s).", count(r.errors_total))
                } else {
                    String::new()
                };
                format!(
                    "Deleted {} files ({}){} in {} from {roots}.{errors}",
                    count(r.files_deleted),
                    bytes(r.bytes_freed),
                    dirs(r.dirs_removed),
                    seconds(r.duration_ms)
                )
            })
        }
        _ => None,
    }
}

/// Print rows under a header, each column as wide as its widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.trim_end().to_owned()
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// A JSON string field, or "-".
pub fn text(value: &Value, key: &str) -> String {
    match value.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".to_owned(),
        Some(other) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_sizes_and_ages_read_well() {
        assert_eq!(count(0), "0");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3_565_158), "3.4 MiB");
        assert_eq!(age(41.0 * 86400.0 + 5.0), "41 days");
        assert_eq!(age(3600.0), "60 minutes");
        assert_eq!(age(1.0), "1 second");
    }

    #[test]
    fn a_dry_run_reads_as_a_sentence() {
        let result = json!({"dry_run": true, "runs_matched": 1000, "runs_deleted": 0,
            "batches": 0, "sample_ids": [], "cutoff": "2026-10-24T03:00:00Z",
            "statuses": ["succeeded", "failed", "cancelled"], "capped": false,
            "oldest_remaining_age_seconds": 3542400.0, "duration_ms": 12, "turns": 1});
        assert_eq!(
            result_sentence("cleanup_runs", &result).unwrap(),
            "Would delete 1,000 runs (succeeded, failed, cancelled) finished before \
             2026-10-24 03:00 UTC; oldest 41 days. Nothing was deleted (dry run)."
        );
        let mut real = result.clone();
        real["dry_run"] = json!(false);
        real["runs_deleted"] = json!(1000);
        real["batches"] = json!(3);
        real["duration_ms"] = json!(400);
        assert_eq!(
            result_sentence("cleanup_runs", &real).unwrap(),
            "Deleted 1,000 runs in 3 batches (0.4 s)."
        );
        real["partitions"] = json!([
            {"name": "public.runs_2026_01", "rows": 900, "action": "dropped", "estimated": true},
            {"name": "public.runs_2026_02", "rows": 40, "action": "dropped"}]);
        real["runs_estimated"] = json!(900);
        assert_eq!(
            result_sentence("cleanup_runs", &real).unwrap(),
            "Deleted about 1,000 runs in 3 batches and 2 whole partitions (0.4 s)."
        );
    }

    #[test]
    fn tables_align_columns() {
        let out = table(
            &["ID", "STATUS"],
            &[
                vec!["a".into(), "running".into()],
                vec!["bbbb".into(), "up".into()],
            ],
        );
        assert_eq!(out, "ID    STATUS\na     running\nbbbb  up");
    }
}
