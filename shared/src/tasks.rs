//! Task kinds and their parameters: the one definition of what a client may ask for.
//!
//! Parameters are parsed with `deny_unknown_fields` and then validated against
//! [`ValidationRules`], so the API refuses a bad request before anything is stored and a
//! worker can run the same check again on what it receives.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Largest batch a `cleanup_runs` task may ask for: bounds lock time per statement.
pub const MAX_BATCH_SIZE: u32 = 10_000;
/// Largest `max_rows` or `max_files`: counts are kept as PostgreSQL `bigint`.
pub const MAX_CAP: u64 = i64::MAX as u64;
/// Largest batch of a `cleanup_runs` task that names none: the largest there is, so that
/// the worker's target duration per batch (`RUNS_BATCH_TARGET`) decides. A smaller one kept
/// batches far shorter than the target (about 10 ms for 1,000 rows), and a run paid their
/// fixed costs 10 times over.
pub const DEFAULT_BATCH_SIZE: u32 = MAX_BATCH_SIZE;
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
    /// At least the deployment's `MIN_AGE_HOURS` (the document served by a running API
    /// states its own floor), at most 876000 (100 years).
    #[schema(example = 720.0, minimum = 1.0, maximum = 876000.0)]
    pub max_age_hours: f64,
    /// Report what would be deleted without deleting anything.
    #[serde(default)]
    pub dry_run: bool,
    /// Restrict deletion to these terminal statuses (default: all terminal statuses), each
    /// listed once: a subset of the deployment's `RUNS_TERMINAL_STATUSES` (the document
    /// served by a running API lists them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_items = 1)]
    pub statuses: Option<Vec<String>>,
    /// Most rows deleted per statement (1..=10000, default 10000); sizes adapt below it
    /// toward the worker's target duration per batch.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "whole::option"
    )]
    #[schema(minimum = 1, maximum = 10000)]
    pub batch_size: Option<u32>,
    /// Stop after this many rows; bounds the blast radius of one task.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "whole::option"
    )]
    #[schema(minimum = 1, maximum = 9223372036854775807_usize)]
    pub max_rows: Option<u64>,
    /// Attempts for this task (default: the deployment's `MAX_ATTEMPTS`), up to its
    /// `MAX_ATTEMPTS_LIMIT` (the document served by a running API states it).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "whole::option"
    )]
    #[schema(minimum = 1, maximum = 10)]
    pub max_attempts: Option<u32>,
    /// Only rows whose columns equal these values (per tenant or project retention):
    /// at least one column, each from the deployment's `RUNS_SCOPE_COLUMNS` (the document
    /// served by a running API lists them), values of at most 256 characters compared as
    /// the column's type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = json!({"project_id": "42"}))]
    pub scope: Option<BTreeMap<String, String>>,
}

/// Parameters of a `cleanup_temp_files` task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CleanupTempFilesParams {
    /// Only files last modified more than this many hours before enqueue time are deleted.
    /// At least the deployment's `MIN_AGE_HOURS` (the document served by a running API
    /// states its own floor), at most 876000 (100 years).
    #[schema(example = 24.0, minimum = 1.0, maximum = 876000.0)]
    pub max_age_hours: f64,
    /// Report what would be deleted without deleting anything.
    #[serde(default)]
    pub dry_run: bool,
    /// Name of one configured temp root (see the worker's `TEMP_ROOTS`); all roots when absent.
    /// A task names a root, never a path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        example = "scratch",
        min_length = 1,
        max_length = 64,
        pattern = r"^[A-Za-z0-9_.-]{1,64}$"
    )]
    pub root: Option<String>,
    /// Only files whose path relative to the root matches one of these globs (1 to 32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = json!(["*.tmp", "cache/**"]), min_items = 1, max_items = 32,
        value_type = Option<Vec<GlobPattern>>)]
    pub patterns: Option<Vec<String>>,
    /// Stop after this many files; bounds the blast radius of one task.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "whole::option"
    )]
    #[schema(minimum = 1, maximum = 9223372036854775807_usize)]
    pub max_files: Option<u64>,
    /// Also remove directories that the cleanup left empty (never the root itself).
    #[serde(default)]
    pub remove_empty_dirs: bool,
    /// Attempts for this task (default: the deployment's `MAX_ATTEMPTS`), up to its
    /// `MAX_ATTEMPTS_LIMIT` (the document served by a running API states it).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "whole::option"
    )]
    #[schema(minimum = 1, maximum = 10)]
    pub max_attempts: Option<u32>,
}

/// A glob of `patterns` (documentation only: the parameters hold plain strings), matched
/// against a file's path relative to its root: `*` (also across `/`), `**`, `?`, classes
/// such as `[abc]` or `[a-z]`, alternates `{a,b}`, `\` escaping the next character; never
/// absolute, never a `..` component. The pattern states globs the service accepts; it also
/// accepts some it does not state (ranges other than `0-9`, `a-z`, `A-Z`, nested alternates).
pub struct GlobPattern(pub String);

impl utoipa::PartialSchema for GlobPattern {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "A glob matched against a file's path relative to its root (see the README).",
            ))
            .min_length(Some(1))
            .max_length(Some(MAX_PATTERN_LEN))
            .pattern(Some(GLOB_PATTERN_REGEX))
            .into()
    }
}

impl ToSchema for GlobPattern {}

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

    /// The same task, as a dry run or as a real run.
    pub fn with_dry_run(mut self, dry_run: bool) -> Self {
        match &mut self {
            TaskSpec::CleanupRuns(p) => p.dry_run = dry_run,
            TaskSpec::CleanupTempFiles(p) => p.dry_run = dry_run,
        }
        self
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

mod validation;
mod whole;

pub use validation::{
    is_identifier, validate_pattern, validate_root_name, ValidationError, ValidationRules,
    GLOB_PATTERN_REGEX, MAX_SCOPE_VALUE_LEN,
};
use validation::{validate_age, validate_runs, validate_temp_files};

#[cfg(test)]
#[path = "tasks_tests.rs"]
mod tests;
