//! Task kinds and their parameters: the one definition of what a client may ask for.
//!
//! Parameters are parsed with `deny_unknown_fields` and then validated against
//! [`ValidationRules`], so the API refuses a bad request before anything is stored and a
//! worker can run the same check again on what it receives.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Largest batch a `cleanup_runs` task may ask for: bounds lock time per statement.
pub const MAX_BATCH_SIZE: u32 = 10_000;
/// Batch size used when a `cleanup_runs` task names none.
pub const DEFAULT_BATCH_SIZE: u32 = 1_000;
/// Most glob patterns a `cleanup_temp_files` task may carry.
pub const MAX_PATTERNS: usize = 32;
/// Longest glob pattern accepted.
pub const MAX_PATTERN_LEN: usize = 256;
/// Largest `max_age_hours` accepted (100 years): beyond it the cutoff predates any data.
pub const MAX_AGE_HOURS_LIMIT: f64 = 876_000.0;

/// The kinds of cleanup the service performs. The name is the routing key and queue suffix.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// Delete old, finished rows of the `runs` table.
    CleanupRuns,
    /// Delete old files under the worker's configured temp roots.
    CleanupTempFiles,
}

impl TaskKind {
    pub const ALL: [TaskKind; 2] = [TaskKind::CleanupRuns, TaskKind::CleanupTempFiles];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::CleanupRuns => "cleanup_runs",
            TaskKind::CleanupTempFiles => "cleanup_temp_files",
        }
    }
}

impl fmt::Display for TaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for TaskKind {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl FromStr for TaskKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!("unknown task kind `{s}`; expected one of cleanup_runs, cleanup_temp_files")
            })
    }
}

/// Parameters of a `cleanup_runs` task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CleanupRunsParams {
    /// Only runs that finished more than this many hours before enqueue time are deleted.
    #[schema(example = 720.0, exclusive_minimum = 0.0)]
    pub max_age_hours: f64,
    /// Report what would be deleted without deleting anything.
    #[serde(default)]
    pub dry_run: bool,
    /// Restrict deletion to these terminal statuses (default: all terminal statuses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statuses: Option<Vec<String>>,
    /// Rows deleted per statement (1..=10000, default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 10000)]
    pub batch_size: Option<u32>,
    /// Stop after this many rows; bounds the blast radius of one task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub max_rows: Option<u64>,
    /// Attempts for this task (default: the deployment's `MAX_ATTEMPTS`), up to its limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub max_attempts: Option<u32>,
    /// Only rows whose columns equal these values (per tenant or project retention):
    /// column names from the deployment's `RUNS_SCOPE_COLUMNS`, values compared as the
    /// column's type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = json!({"project_id": "42"}))]
    pub scope: Option<BTreeMap<String, String>>,
}

/// Parameters of a `cleanup_temp_files` task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CleanupTempFilesParams {
    /// Only files last modified more than this many hours before enqueue time are deleted.
    #[schema(example = 24.0, exclusive_minimum = 0.0)]
    pub max_age_hours: f64,
    /// Report what would be deleted without deleting anything.
    #[serde(default)]
    pub dry_run: bool,
    /// Name of one configured temp root (see the worker's `TEMP_ROOTS`); all roots when absent.
    /// A task names a root, never a path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "scratch")]
    pub root: Option<String>,
    /// Only files whose path relative to the root matches one of these globs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = json!(["*.tmp", "cache/**"]))]
    pub patterns: Option<Vec<String>>,
    /// Stop after this many files; bounds the blast radius of one task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub max_files: Option<u64>,
    /// Also remove directories that the cleanup left empty (never the root itself).
    #[serde(default)]
    pub remove_empty_dirs: bool,
    /// Attempts for this task (default: the deployment's `MAX_ATTEMPTS`), up to its limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub max_attempts: Option<u32>,
}

/// A task: its kind and parameters, as carried by the envelope and stored in the ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "params", rename_all = "snake_case")]
pub enum TaskSpec {
    CleanupRuns(CleanupRunsParams),
    CleanupTempFiles(CleanupTempFilesParams),
}

impl TaskSpec {
    pub fn kind(&self) -> TaskKind {
        match self {
            TaskSpec::CleanupRuns(_) => TaskKind::CleanupRuns,
            TaskSpec::CleanupTempFiles(_) => TaskKind::CleanupTempFiles,
        }
    }

    pub fn max_age_hours(&self) -> f64 {
        match self {
            TaskSpec::CleanupRuns(p) => p.max_age_hours,
            TaskSpec::CleanupTempFiles(p) => p.max_age_hours,
        }
    }

    pub fn dry_run(&self) -> bool {
        match self {
            TaskSpec::CleanupRuns(p) => p.dry_run,
            TaskSpec::CleanupTempFiles(p) => p.dry_run,
        }
    }

    /// Attempts the request asked for, if any.
    pub fn max_attempts(&self) -> Option<u32> {
        match self {
            TaskSpec::CleanupRuns(p) => p.max_attempts,
            TaskSpec::CleanupTempFiles(p) => p.max_attempts,
        }
    }

    /// The parameters alone, as JSON (what the ledger stores and the API shows).
    pub fn params_json(&self) -> serde_json::Value {
        let value = match self {
            TaskSpec::CleanupRuns(p) => serde_json::to_value(p),
            TaskSpec::CleanupTempFiles(p) => serde_json::to_value(p),
        };
        value.expect("task parameters always serialize")
    }

    /// Rebuild a spec from its kind and stored parameters.
    pub fn from_parts(kind: TaskKind, params: serde_json::Value) -> serde_json::Result<Self> {
        Ok(match kind {
            TaskKind::CleanupRuns => TaskSpec::CleanupRuns(serde_json::from_value(params)?),
            TaskKind::CleanupTempFiles => {
                TaskSpec::CleanupTempFiles(serde_json::from_value(params)?)
            }
        })
    }

    /// Check the parameters against the deployment's rules. The error names the field.
    pub fn validate(&self, rules: &ValidationRules) -> Result<(), ValidationError> {
        validate_age(self.max_age_hours(), rules)?;
        if let Some(n) = self.max_attempts() {
            if n == 0 || n > rules.max_attempts_limit {
                return Err(ValidationError::new(
                    "max_attempts",
                    format!(
                        "must be between 1 and {}, got {n}",
                        rules.max_attempts_limit
                    ),
                ));
            }
        }
        match self {
            TaskSpec::CleanupRuns(p) => validate_runs(p, rules),
            TaskSpec::CleanupTempFiles(p) => validate_temp_files(p),
        }
    }
}

/// Deployment-wide limits that requests are checked against.
#[derive(Debug, Clone)]
pub struct ValidationRules {
    /// The youngest data any task may delete, in hours (the minimum age floor).
    pub min_age_hours: f64,
    /// Statuses of the runs table that mean "finished"; a task may only narrow this list.
    pub terminal_statuses: BTreeSet<String>,
    /// The most attempts a request may ask for.
    pub max_attempts_limit: u32,
    /// Columns of the runs table a task may narrow by equality (`scope`).
    pub scope_columns: BTreeSet<String>,
}

impl Default for ValidationRules {
    fn default() -> Self {
        Self {
            min_age_hours: 1.0,
            terminal_statuses: ["succeeded", "failed", "cancelled"]
                .into_iter()
                .map(String::from)
                .collect(),
            max_attempts_limit: 10,
            scope_columns: BTreeSet::new(),
        }
    }
}

/// A parameter that is out of range or malformed: `field` is the JSON field at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: &'static str,
    pub message: String,
}

impl ValidationError {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// A number as a person would write it: plain when that is short, else in exponent form
/// (`5e-324`, not 330 digits).
fn short(x: f64) -> String {
    let plain = x.to_string();
    if plain.len() <= 20 {
        plain
    } else {
        format!("{x:e}")
    }
}

fn validate_age(hours: f64, rules: &ValidationRules) -> Result<(), ValidationError> {
    let got = short(hours);
    if !hours.is_finite() || hours <= 0.0 {
        return Err(ValidationError::new(
            "max_age_hours",
            format!("must be a number greater than 0, got {got}"),
        ));
    }
    if hours < rules.min_age_hours {
        return Err(ValidationError::new(
            "max_age_hours",
            format!(
                "must be at least {} (this deployment's minimum age floor), got {got}",
                short(rules.min_age_hours)
            ),
        ));
    }
    if hours > MAX_AGE_HOURS_LIMIT {
        return Err(ValidationError::new(
            "max_age_hours",
            format!("must be at most {MAX_AGE_HOURS_LIMIT}, got {got}"),
        ));
    }
    Ok(())
}

fn validate_runs(p: &CleanupRunsParams, rules: &ValidationRules) -> Result<(), ValidationError> {
    if let Some(statuses) = &p.statuses {
        if statuses.is_empty() {
            return Err(ValidationError::new(
                "statuses",
                "must not be empty; omit it to use every terminal status",
            ));
        }
        let mut seen = BTreeSet::new();
        for status in statuses {
            if !rules.terminal_statuses.contains(status) {
                let allowed: Vec<&str> =
                    rules.terminal_statuses.iter().map(String::as_str).collect();
                return Err(ValidationError::new(
                    "statuses",
                    format!(
                        "`{status}` is not a terminal status; allowed: {}",
                        allowed.join(", ")
                    ),
                ));
            }
            if !seen.insert(status) {
                return Err(ValidationError::new(
                    "statuses",
                    format!("`{status}` is listed twice"),
                ));
            }
        }
    }
    if let Some(size) = p.batch_size {
        if size == 0 || size > MAX_BATCH_SIZE {
            return Err(ValidationError::new(
                "batch_size",
                format!("must be between 1 and {MAX_BATCH_SIZE}, got {size}"),
            ));
        }
    }
    if p.max_rows == Some(0) {
        return Err(ValidationError::new("max_rows", "must be at least 1"));
    }
    if let Some(scope) = &p.scope {
        validate_scope(scope, &rules.scope_columns)?;
    }
    Ok(())
}

/// Longest scope value accepted.
pub const MAX_SCOPE_VALUE_LEN: usize = 256;

fn validate_scope(
    scope: &BTreeMap<String, String>,
    allowed: &BTreeSet<String>,
) -> Result<(), ValidationError> {
    if scope.is_empty() {
        return Err(ValidationError::new(
            "scope",
            "must name at least one column; omit it to clean the whole table",
        ));
    }
    for (column, value) in scope {
        if !allowed.contains(column) {
            let message = if allowed.is_empty() {
                format!("`{column}` is not a scope column: this deployment allows none (RUNS_SCOPE_COLUMNS)")
            } else {
                let names: Vec<&str> = allowed.iter().map(String::as_str).collect();
                format!(
                    "`{column}` is not a scope column; allowed: {} (RUNS_SCOPE_COLUMNS)",
                    names.join(", ")
                )
            };
            return Err(ValidationError::new("scope", message));
        }
        if value.len() > MAX_SCOPE_VALUE_LEN {
            return Err(ValidationError::new(
                "scope",
                format!("the value of `{column}` is longer than {MAX_SCOPE_VALUE_LEN} bytes"),
            ));
        }
    }
    Ok(())
}

/// A plain SQL identifier: letters, digits and `_`, not starting with a digit, at most
/// 63 bytes (what the worker quotes as a column name).
pub fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn validate_temp_files(p: &CleanupTempFilesParams) -> Result<(), ValidationError> {
    if let Some(root) = &p.root {
        validate_root_name(root).map_err(|m| ValidationError::new("root", m))?;
    }
    if let Some(patterns) = &p.patterns {
        if patterns.is_empty() {
            return Err(ValidationError::new(
                "patterns",
                "must not be empty; omit it to match every file",
            ));
        }
        if patterns.len() > MAX_PATTERNS {
            return Err(ValidationError::new(
                "patterns",
                format!("at most {MAX_PATTERNS} patterns, got {}", patterns.len()),
            ));
        }
        for pattern in patterns {
            validate_pattern(pattern).map_err(|m| ValidationError::new("patterns", m))?;
        }
    }
    if p.max_files == Some(0) {
        return Err(ValidationError::new("max_files", "must be at least 1"));
    }
    Ok(())
}

/// A root name: 1 to 64 characters of `[A-Za-z0-9_.-]`. Used by the worker's config too.
pub fn validate_root_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a root name (1 to 64 characters of letters, digits, `_`, `-`, `.`)"
        ))
    }
}

/// A glob is matched against the path relative to the root, so it must be relative and
/// may not climb out with `..`.
pub fn validate_pattern(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() || pattern.len() > MAX_PATTERN_LEN {
        return Err(format!(
            "a pattern must have 1 to {MAX_PATTERN_LEN} characters, got {}",
            pattern.len()
        ));
    }
    if pattern.starts_with('/') {
        return Err(format!(
            "`{pattern}` is absolute; patterns are relative to the root"
        ));
    }
    if pattern.split('/').any(|part| part == "..") {
        return Err(format!("`{pattern}` contains `..`"));
    }
    globset::Glob::new(pattern)
        .map(|_| ())
        .map_err(|e| format!("`{pattern}` is not a valid glob: {}", e.kind()))
}

#[cfg(test)]
#[path = "tasks_tests.rs"]
mod tests;
