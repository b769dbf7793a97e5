//! Tasks: enqueue (`runs`, `temp-files`), list, get, watch (`--wait`), cancel, retry,
//! run (a dry run, for real).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{json, Value};
use shared::tasks::{CleanupRunsParams, CleanupTempFilesParams};

use crate::cli::{Common, RunsArgs, TasksCommand, TempFilesArgs, WaitArgs};
use crate::client::{Answer, CliError};
use crate::output::{self, text};
use crate::Ctx;

/// How often `--wait` asks for the task.
const POLL: Duration = Duration::from_millis(500);

pub async fn runs(ctx: &Ctx, args: RunsArgs) -> Result<(), CliError> {
    let params = CleanupRunsParams {
        max_age_hours: hours(&args.common),
        dry_run: args.common.dry_run,
        statuses: (!args.statuses.is_empty()).then_some(args.statuses),
        batch_size: args.batch_size,
        max_rows: args.max_rows,
        max_attempts: None,
        scope: (!args.scope.is_empty()).then(|| args.scope.into_iter().collect()),
    };
    let body = serde_json::to_value(params).expect("parameters serialize");
    enqueue(ctx, "/maintenance/cleanup-runs", body, &args.common).await
}

pub async fn temp_files(ctx: &Ctx, args: TempFilesArgs) -> Result<(), CliError> {
    let params = CleanupTempFilesParams {
        max_age_hours: hours(&args.common),
        dry_run: args.common.dry_run,
        root: args.root,
        patterns: (!args.patterns.is_empty()).then_some(args.patterns),
        max_files: args.max_files,
        remove_empty_dirs: args.remove_empty_dirs,
        max_attempts: None,
    };
    let body = serde_json::to_value(params).expect("parameters serialize");
    enqueue(ctx, "/maintenance/cleanup-temp-files", body, &args.common).await
}

fn hours(common: &Common) -> f64 {
    common.older_than.as_secs_f64() / 3600.0
}

async fn enqueue(ctx: &Ctx, path: &str, body: Value, common: &Common) -> Result<(), CliError> {
    let key = common.idempotency_key.as_deref();
    let headers: Vec<(&str, &str)> = key.map(|k| ("Idempotency-Key", k)).into_iter().collect();
    let answer = ctx
        .client
        .send(reqwest::Method::POST, path, Some(body), &headers)
        .await?;
    accepted(ctx, answer, &common.wait, "accepted").await
}

/// A task the API accepted (an enqueue, a retry): its id, or with `--wait` its end.
async fn accepted(ctx: &Ctx, answer: Answer, wait: &WaitArgs, what: &str) -> Result<(), CliError> {
    let id = text(&answer.body, "task_id");
    if wait.wait {
        let task = follow(ctx, &id, wait.wait_timeout).await?;
        return finish(ctx, &task);
    }
    if ctx.json() {
        return ctx.print_json(&answer.body);
    }
    let replay = answer.status == reqwest::StatusCode::OK;
    let location = answer.location.unwrap_or_else(|| format!("/tasks/{id}"));
    if replay {
        println!(
            "Task {id} was {what} before with this Idempotency-Key; it is {}.",
            text(&answer.body, "status")
        );
    } else {
        println!("Task {id} {what} ({}).", text(&answer.body, "status"));
    }
    println!("Location: {location}");
    Ok(())
}

pub async fn run(ctx: &Ctx, command: TasksCommand) -> Result<(), CliError> {
    match command {
        TasksCommand::List {
            kind,
            status,
            actor,
            limit,
            all,
        } => list(ctx, kind, status, actor, limit, all).await,
        TasksCommand::Get { id } => {
            let task = get(ctx, &id).await?;
            if ctx.json() {
                ctx.print_json(&task)
            } else {
                println!("{}", describe(&task));
                Ok(())
            }
        }
        TasksCommand::Watch { id, wait_timeout } => {
            let task = follow(ctx, &id, wait_timeout).await?;
            finish(ctx, &task)
        }
        TasksCommand::Cancel { id } => {
            let answer = ctx
                .client
                .post(&format!("/tasks/{}/cancel", segment(&id)?), None)
                .await?;
            if ctx.json() {
                return ctx.print_json(&answer.body);
            }
            if answer.status == reqwest::StatusCode::ACCEPTED {
                println!(
                    "Task {id} is running; its worker stops it at its next batch boundary. \
                     Follow it with `cleanupctl tasks watch {id}`."
                );
            } else {
                println!("Task {id} is cancelled.");
            }
            Ok(())
        }
        TasksCommand::Retry {
            id,
            keep_cutoff,
            wait,
        } => {
            let body = keep_cutoff.then(|| json!({"keep_cutoff": true}));
            let answer = ctx
                .client
                .post(&format!("/tasks/{}/retry", segment(&id)?), body)
                .await?;
            accepted(ctx, answer, &wait, &format!("retries {id}")).await
        }
        TasksCommand::Run { id, wait } => {
            let answer = ctx
                .client
                .post(&format!("/tasks/{}/run", segment(&id)?), None)
                .await?;
            accepted(ctx, answer, &wait, &format!("runs dry run {id} for real")).await
        }
    }
}

/// A task id as a path segment: anything but a UUID's characters is refused here, so a
/// typo cannot reach another route.
fn segment(id: &str) -> Result<&str, CliError> {
    if !id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        Ok(id)
    } else {
        Err(CliError::Usage(format!("`{id}` is not a task id (a UUID)")))
    }
}

async fn get(ctx: &Ctx, id: &str) -> Result<Value, CliError> {
    Ok(ctx
        .client
        .get(&format!("/tasks/{}", segment(id)?))
        .await?
        .body)
}

async fn list(
    ctx: &Ctx,
    kind: Option<String>,
    status: Option<String>,
    actor: Option<String>,
    limit: u32,
    all: bool,
) -> Result<(), CliError> {
    let mut query: Vec<(String, String)> = vec![("limit".into(), limit.to_string())];
    for (key, value) in [("kind", kind), ("status", status), ("actor", actor)] {
        if let Some(value) = value {
            query.push((key.into(), value));
        }
    }
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut page_query = query.clone();
        if let Some(cursor) = &cursor {
            page_query.push(("cursor".into(), cursor.clone()));
        }
        let pairs: Vec<(&str, &str)> = page_query
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let page = ctx.client.get_query("/tasks", &pairs).await?.body;
        items.extend(page["items"].as_array().cloned().unwrap_or_default());
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        if !all || cursor.is_none() {
            break;
        }
    }
    if ctx.json() {
        return ctx.print_json(&json!({"items": items, "next_cursor": cursor}));
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|t| {
            vec![
                text(t, "task_id"),
                text(t, "kind"),
                text(t, "status"),
                format!("{}/{}", t["attempts"], t["max_attempts"]),
                t["created_at"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .map(output::time)
                    .unwrap_or_default(),
                text(t, "actor"),
            ]
        })
        .collect();
    println!(
        "{}",
        output::table(
            &["TASK", "KIND", "STATUS", "ATTEMPTS", "CREATED", "ACTOR"],
            &rows
        )
    );
    if let Some(cursor) = cursor {
        println!("(more: --all, or the next page from cursor {cursor})");
    }
    Ok(())
}

const FINISHED: [&str; 4] = ["succeeded", "failed", "dead", "cancelled"];

/// Poll the task until it finishes; a live line on a terminal (text output only).
async fn follow(ctx: &Ctx, id: &str, limit: Duration) -> Result<Value, CliError> {
    let started = Instant::now();
    let live = !ctx.json() && std::io::stderr().is_terminal();
    loop {
        let task = get(ctx, id).await?;
        let status = text(&task, "status");
        if live {
            eprint!(
                "\r\x1b[2K{id}: {status} · attempt {}/{} · {}s",
                task["attempts"],
                task["max_attempts"],
                started.elapsed().as_secs()
            );
            let _ = std::io::stderr().flush();
        }
        if FINISHED.contains(&status.as_str()) {
            if live {
                eprint!("\r\x1b[2K");
            }
            return Ok(task);
        }
        if started.elapsed() >= limit {
            if live {
                eprintln!();
            }
            return Err(CliError::WaitTimedOut(format!(
                "task {id} is still {status} after {}; it goes on (follow it with \
                 `cleanupctl tasks watch {id}`)",
                humantime::format_duration(limit)
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Print a finished task; an error (exit 1) unless it succeeded.
fn finish(ctx: &Ctx, task: &Value) -> Result<(), CliError> {
    if ctx.json() {
        ctx.print_json(task)?;
    } else {
        println!("{}", describe(task));
    }
    let status = text(task, "status");
    if status == "succeeded" {
        Ok(())
    } else {
        Err(CliError::TaskNotSucceeded(format!(
            "task {} {status}",
            text(task, "task_id")
        )))
    }
}

/// A task for people: what it is, where it stands, its result as a sentence.
pub fn describe(task: &Value) -> String {
    let id = text(task, "task_id");
    let kind = text(task, "kind");
    let status = text(task, "status");
    let mut lines = vec![format!(
        "Task {id} ({kind}) is {status}, attempt {} of {}.",
        task["attempts"], task["max_attempts"]
    )];
    if let Some(cutoff) = task["cutoff"].as_str().and_then(|s| s.parse().ok()) {
        lines.push(format!(
            "Deletes nothing younger than {}.",
            output::time(cutoff)
        ));
    }
    if let Some(at) = task["cancel_requested_at"]
        .as_str()
        .and_then(|s| s.parse().ok())
    {
        lines.push(format!(
            "Cancel asked by {} {}.",
            text(task, "cancelled_by"),
            output::ago(at, Utc::now())
        ));
    }
    if let Some(sentence) = output::result_sentence(&kind, &task["result"]) {
        let prefix = match status.as_str() {
            "succeeded" => "",
            _ => "Before it stopped: ",
        };
        lines.push(format!("{prefix}{sentence}"));
    }
    if let Some(message) = task["error"]["message"].as_str() {
        lines.push(format!(
            "Last error ({}): {message}",
            text(&task["error"], "class")
        ));
    }
    if let Some(next) = task["next_attempt_at"].as_str() {
        lines.push(format!("Next attempt at {next}."));
    }
    for (key, label) in [
        ("retry_of", "Retries"),
        ("retried_by", "Retried by"),
        ("dry_run_of", "Runs for real dry run"),
    ] {
        if let Some(other) = task[key].as_str() {
            lines.push(format!("{label} task {other}."));
        }
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_cannot_leave_their_path_segment() {
        assert_eq!(segment("0196f7a0-aa").unwrap(), "0196f7a0-aa");
        assert!(segment("../workers/prune").is_err());
        assert!(segment("").is_err());
    }
}
