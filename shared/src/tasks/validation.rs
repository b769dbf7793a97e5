//! Checking task parameters against the deployment's rules: the error names the field.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    CleanupRunsParams, CleanupTempFilesParams, MAX_AGE_HOURS_LIMIT, MAX_BATCH_SIZE, MAX_CAP,
    MAX_PATTERNS, MAX_PATTERN_LEN,
};

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
    pub(super) fn new(field: &'static str, message: impl Into<String>) -> Self {
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

pub(super) fn validate_age(hours: f64, rules: &ValidationRules) -> Result<(), ValidationError> {
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

pub(super) fn validate_runs(
    p: &CleanupRunsParams,
    rules: &ValidationRules,
) -> Result<(), ValidationError> {
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
    check_cap("max_rows", p.max_rows)?;
    if let Some(scope) = &p.scope {
        validate_scope(scope, &rules.scope_columns)?;
    }
    Ok(())
}

/// Longest scope value accepted, in characters.
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
        // PostgreSQL text holds no NUL: no column can equal such a value.
        if value.contains('\0') {
            return Err(ValidationError::new(
                "scope",
                format!("the value of `{column}` contains a NUL character"),
            ));
        }
        // Characters, as JSON Schema's `maxLength` counts them (the document says so).
        if value.chars().count() > MAX_SCOPE_VALUE_LEN {
            return Err(ValidationError::new(
                "scope",
                format!("the value of `{column}` is longer than {MAX_SCOPE_VALUE_LEN} characters"),
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

pub(super) fn validate_temp_files(p: &CleanupTempFilesParams) -> Result<(), ValidationError> {
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
    check_cap("max_files", p.max_files)?;
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

/// The globs of `patterns` as a regular expression (ECMA 262, for the OpenAPI document):
/// not absolute, no `..` component, no NUL, and the glob syntax [`validate_pattern`] accepts:
/// literal characters, `\` escaping the next one, classes (`[abc]`, `[!abc]`, and the
/// ranges `0-9`, `a-z`, `A-Z`), and alternates `{a,b}` of those, not nested. Everything it
/// matches is a valid pattern; [`validate_pattern`] also accepts other ranges and nested
/// alternates, which this leaves out.
pub const GLOB_PATTERN_REGEX: &str = concat!(
    r"^(?!/)(?!(?:[\s\S]*/)?\.\.(?:/|(?![\s\S])))",
    r"(?:[^\x00\[{}\\]|\\[^\x00]|",
    r"\[[!^]?(?:0-9|a-z|A-Z|[^\x00\]\-!^])(?:0-9|a-z|A-Z|[^\x00\]\-])*\]|",
    r"\{(?:[^\x00\[{}\\,]|\\[^\x00]|",
    r"\[[!^]?(?:0-9|a-z|A-Z|[^\x00\]\-!^])(?:0-9|a-z|A-Z|[^\x00\]\-])*\])*",
    r"(?:,(?:[^\x00\[{}\\,]|\\[^\x00]|",
    r"\[[!^]?(?:0-9|a-z|A-Z|[^\x00\]\-!^])(?:0-9|a-z|A-Z|[^\x00\]\-])*\])*)*\})+$"
);

/// A glob is matched against the path relative to the root, so it must be relative and
/// may not climb out with `..`.
pub fn validate_pattern(pattern: &str) -> Result<(), String> {
    let chars = pattern.chars().count();
    if chars == 0 || chars > MAX_PATTERN_LEN {
        return Err(format!(
            "a pattern must have 1 to {MAX_PATTERN_LEN} characters, got {chars}"
        ));
    }
    // No path holds a NUL, and the ledger (PostgreSQL) cannot store one.
    if pattern.contains('\0') {
        return Err("a pattern must not contain a NUL character".to_owned());
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

/// A cap on what one task deletes: at least 1, at most [`MAX_CAP`].
fn check_cap(field: &'static str, cap: Option<u64>) -> Result<(), ValidationError> {
    match cap {
        Some(0) => Err(ValidationError::new(field, "must be at least 1")),
        Some(n) if n > MAX_CAP => Err(ValidationError::new(
            field,
            format!("must be at most {MAX_CAP}, got {n}"),
        )),
        _ => Ok(()),
    }
}
