//! The parts of the task parameters' schemas that this deployment decides: the age floor
//! (`MIN_AGE_HOURS`), the most attempts (`MAX_ATTEMPTS_LIMIT`), the statuses a task may
//! name (`RUNS_TERMINAL_STATUSES`) and the columns a scope may name (`RUNS_SCOPE_COLUMNS`).
//! The attributes on the types state the defaults; the document served states these.

use serde_json::{json, Value};
use shared::tasks::{ValidationRules, MAX_SCOPE_VALUE_LEN};

/// Text without NUL (PostgreSQL's text cannot hold one).
pub(super) const NO_NUL: &str = r"^[^\x00]*$";

pub(super) fn apply(doc: &mut Value, rules: &ValidationRules) {
    let schemas = &mut doc["components"]["schemas"];
    for name in ["CleanupRunsParams", "CleanupTempFilesParams"] {
        let properties = &mut schemas[name]["properties"];
        let age = &mut properties["max_age_hours"];
        age["minimum"] = json!(rules.min_age_hours);
        // The example must be a value this deployment accepts.
        if age["example"]
            .as_f64()
            .is_some_and(|e| e < rules.min_age_hours)
        {
            age["example"] = json!(rules.min_age_hours);
        }
        properties["max_attempts"]["maximum"] = json!(rules.max_attempts_limit);
    }
    let runs = &mut schemas["CleanupRunsParams"]["properties"];
    let statuses: Vec<&String> = rules.terminal_statuses.iter().collect();
    let field = &mut runs["statuses"];
    field["items"] = json!({"type": "string", "enum": statuses});
    field["uniqueItems"] = json!(true);
    field["maxItems"] = json!(statuses.len());
    let columns: Vec<&String> = rules.scope_columns.iter().collect();
    let description = runs["scope"]["description"].clone();
    runs["scope"] = match columns.first() {
        // Without scope columns a scope can only be left out (or null).
        None => json!({
            "type": "null",
            "description": format!(
                "{}\n\nThis deployment allows no scope column (RUNS_SCOPE_COLUMNS is empty).",
                description.as_str().unwrap_or_default()
            ),
        }),
        Some(first) => json!({
            "type": ["object", "null"],
            "description": description,
            "minProperties": 1,
            "propertyNames": {"enum": columns},
            "additionalProperties": {
                "type": "string",
                "maxLength": MAX_SCOPE_VALUE_LEN,
                "pattern": NO_NUL,
            },
            "example": {first.as_str(): "42"},
        }),
    };
}
