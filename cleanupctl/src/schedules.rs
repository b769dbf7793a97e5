//! Schedules: list, get, apply a YAML file (with a dry-run diff), trigger, pause, resume,
//! delete.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Value};
use shared::tasks::{TaskKind, TaskSpec};

use crate::cli::SchedulesCommand;
use crate::client::CliError;
use crate::output::{self, text};
use crate::Ctx;

pub async fn run(ctx: &Ctx, command: SchedulesCommand) -> Result<(), CliError> {
    match command {
        SchedulesCommand::List => {
            let list = ctx.client.get("/schedules").await?.body;
            if ctx.json() {
                return ctx.print_json(&list);
            }
            let rows: Vec<Vec<String>> = list["schedules"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|s| {
                    vec![
                        text(s, "name"),
                        text(s, "kind"),
                        text(s, "cron"),
                        text(s, "timezone"),
                        if s["enabled"] == true {
                            "yes"
                        } else {
                            "paused"
                        }
                        .to_owned(),
                        text(s, "next_fire_at"),
                        text(s, "last_task_status"),
                        text(s, "managed_by"),
                    ]
                })
                .collect();
            println!(
                "{}",
                output::table(
                    &[
                        "NAME",
                        "KIND",
                        "CRON",
                        "TIMEZONE",
                        "ENABLED",
                        "NEXT FIRE",
                        "LAST TASK",
                        "MANAGED BY"
                    ],
                    &rows
                )
            );
            Ok(())
        }
        SchedulesCommand::Get { name } => {
            let schedule = ctx.client.get(&path(&name)?).await?.body;
            if ctx.json() {
                return ctx.print_json(&schedule);
            }
            for key in [
                "name",
                "kind",
                "cron",
                "timezone",
                "enabled",
                "catch_up",
                "overlap",
                "next_fire_at",
                "last_fired_at",
                "last_task_id",
                "last_task_status",
                "skipped_windows",
                "managed_by",
                "actor",
            ] {
                println!("{key:<17} {}", text(&schedule, key));
            }
            println!("{:<17} {}", "params", schedule["params"]);
            Ok(())
        }
        SchedulesCommand::Apply { file, dry_run } => apply(ctx, &file, dry_run).await,
        SchedulesCommand::Trigger { name } => {
            let task = ctx
                .client
                .post(&format!("{}/trigger", path(&name)?), None)
                .await?
                .body;
            if ctx.json() {
                return ctx.print_json(&task);
            }
            println!("Schedule '{name}' fired task {}.", text(&task, "task_id"));
            Ok(())
        }
        SchedulesCommand::Pause { name } => enable(ctx, &name, false).await,
        SchedulesCommand::Resume { name } => enable(ctx, &name, true).await,
        SchedulesCommand::Delete { name } => {
            ctx.client
                .send(reqwest::Method::DELETE, &path(&name)?, None, &[])
                .await?;
            if ctx.json() {
                return ctx.print_json(&json!({"deleted": name}));
            }
            println!("Deleted schedule '{name}'; the tasks it fired stay.");
            Ok(())
        }
    }
}

/// A schedule's path; names are lowercase letters, digits, `.`, `_`, `-`.
fn path(name: &str) -> Result<String, CliError> {
    let ok = !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
        && name != "."
        && name != "..";
    if !ok {
        return Err(CliError::Usage(format!(
            "`{name}` is not a schedule name (lowercase letters, digits, `.`, `_`, `-`)"
        )));
    }
    Ok(format!("/schedules/{name}"))
}

async fn enable(ctx: &Ctx, name: &str, enabled: bool) -> Result<(), CliError> {
    let schedule = ctx
        .client
        .send(
            reqwest::Method::PATCH,
            &path(name)?,
            Some(json!({"enabled": enabled})),
            &[],
        )
        .await?
        .body;
    if ctx.json() {
        return ctx.print_json(&schedule);
    }
    if enabled {
        println!(
            "Resumed schedule '{name}'; it fires next at {}.",
            text(&schedule, "next_fire_at")
        );
    } else {
        println!("Paused schedule '{name}'; it fires nothing until resumed.");
    }
    Ok(())
}

/// The file: `schedules: [{name, kind, params, cron, timezone?, enabled?, catch_up?,
/// overlap?}]`, the format of producer-api's SCHEDULES_FILE.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleFile {
    schedules: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    kind: TaskKind,
    params: Value,
    cron: String,
    #[serde(default)]
    timezone: Option<String>,
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    catch_up: Option<String>,
    #[serde(default)]
    overlap: Option<String>,
}

impl Entry {
    /// The body of its PUT.
    fn body(&self) -> Value {
        let mut body =
            json!({"kind": self.kind.as_str(), "params": self.params, "cron": self.cron});
        for (key, value) in [
            ("timezone", self.timezone.clone().map(Value::from)),
            ("enabled", self.enabled.map(Value::from)),
            ("catch_up", self.catch_up.clone().map(Value::from)),
            ("overlap", self.overlap.clone().map(Value::from)),
        ] {
            if let Some(value) = value {
                body[key] = value;
            }
        }
        body
    }

    /// What a PUT would change on `current` (the API's view), field by field, with the
    /// API's defaults for what the file leaves out.
    fn changes(&self, current: &Value) -> Vec<String> {
        let wanted: BTreeMap<&str, Value> = BTreeMap::from([
            ("kind", json!(self.kind.as_str())),
            ("params", normal(self.kind, &self.params)),
            ("cron", json!(self.cron)),
            ("timezone", json!(self.timezone.as_deref().unwrap_or("UTC"))),
            ("enabled", json!(self.enabled.unwrap_or(true))),
            (
                "catch_up",
                json!(self.catch_up.as_deref().unwrap_or("once")),
            ),
            ("overlap", json!(self.overlap.as_deref().unwrap_or("skip"))),
        ]);
        wanted
            .into_iter()
            .filter_map(|(key, want)| {
                let have = if key == "params" {
                    normal(self.kind, &current[key])
                } else {
                    current[key].clone()
                };
                (have != want).then(|| format!("{key}: {have} → {want}"))
            })
            .collect()
    }
}

/// Parameters as the service reads them (defaults filled, numbers as numbers).
fn normal(kind: TaskKind, params: &Value) -> Value {
    match TaskSpec::from_parts(kind, params.clone()) {
        Ok(TaskSpec::CleanupRuns(p)) => serde_json::to_value(p).unwrap_or_default(),
        Ok(TaskSpec::CleanupTempFiles(p)) => serde_json::to_value(p).unwrap_or_default(),
        Err(_) => params.clone(),
    }
}

async fn apply(ctx: &Ctx, file: &std::path::Path, dry_run: bool) -> Result<(), CliError> {
    let text_of = std::fs::read_to_string(file)
        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", file.display())))?;
    let parsed: ScheduleFile = serde_yaml_ng::from_str(&text_of)
        .map_err(|e| CliError::Usage(format!("{}: {e}", file.display())))?;
    let mut seen = std::collections::BTreeSet::new();
    for entry in &parsed.schedules {
        path(&entry.name)?;
        if !seen.insert(entry.name.as_str()) {
            return Err(CliError::Usage(format!(
                "{}: schedule `{}` appears twice",
                file.display(),
                entry.name
            )));
        }
    }
    // The plan first, for every entry: nothing is written before all were read.
    let mut plan = Vec::new();
    for entry in &parsed.schedules {
        let current = match ctx.client.get(&path(&entry.name)?).await {
            Ok(answer) => Some(answer.body),
            Err(CliError::Refused { status: 404, .. }) => None,
            Err(other) => return Err(other),
        };
        let action = match &current {
            None => Action::Create,
            Some(current) => match entry.changes(current) {
                changes if changes.is_empty() => Action::Unchanged,
                changes => Action::Replace(changes),
            },
        };
        plan.push((entry, action));
    }
    let mut report = Vec::new();
    for (entry, action) in &plan {
        let name = &entry.name;
        let (verb, detail) = match action {
            Action::Create => ("create", Vec::new()),
            Action::Replace(changes) => ("replace", changes.clone()),
            Action::Unchanged => ("unchanged", Vec::new()),
        };
        if !dry_run && !matches!(action, Action::Unchanged) {
            ctx.client
                .send(reqwest::Method::PUT, &path(name)?, Some(entry.body()), &[])
                .await
                .map_err(|error| applied_so_far(error, &report))?;
        }
        report.push(json!({"name": name, "action": verb, "changes": detail}));
    }
    if ctx.json() {
        return ctx.print_json(&json!({"dry_run": dry_run, "schedules": report}));
    }
    for item in &report {
        let sign = match item["action"].as_str() {
            Some("create") => "+",
            Some("replace") => "~",
            _ => "=",
        };
        println!("{sign} {} ({})", text(item, "name"), text(item, "action"));
        for change in item["changes"].as_array().into_iter().flatten() {
            println!("    {}", change.as_str().unwrap_or_default());
        }
    }
    if dry_run {
        println!("Dry run: nothing was changed.");
    }
    Ok(())
}

enum Action {
    Create,
    Replace(Vec<String>),
    Unchanged,
}

/// A PUT refused midway: say which schedules were applied before it.
fn applied_so_far(error: CliError, report: &[Value]) -> CliError {
    let done: Vec<String> = report
        .iter()
        .filter(|r| r["action"] != "unchanged")
        .map(|r| text(r, "name"))
        .collect();
    if done.is_empty() {
        return error;
    }
    let note = format!(" (already applied: {})", done.join(", "));
    match error {
        CliError::Refused {
            status,
            detail,
            field,
            body,
        } => CliError::Refused {
            status,
            detail: detail + &note,
            field,
            body,
        },
        other => other,
    }
}
