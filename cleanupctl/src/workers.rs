//! Workers: list, prune.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::cli::WorkersCommand;
use crate::client::CliError;
use crate::output::{self, text};
use crate::Ctx;

pub async fn run(ctx: &Ctx, command: WorkersCommand) -> Result<(), CliError> {
    match command {
        WorkersCommand::List { status } => {
            let query: Vec<(&str, &str)> = status.iter().map(|s| ("status", s.as_str())).collect();
            let list = ctx.client.get_query("/workers", &query).await?.body;
            if ctx.json() {
                return ctx.print_json(&list);
            }
            let now = Utc::now();
            let rows: Vec<Vec<String>> = items(&list)
                .iter()
                .map(|w| {
                    vec![
                        text(w, "worker_id"),
                        text(w, "status"),
                        text(w, "host"),
                        text(w, "version"),
                        w["kinds"]
                            .as_array()
                            .map(|k| {
                                k.iter()
                                    .filter_map(Value::as_str)
                                    .collect::<Vec<_>>()
                                    .join(",")
                            })
                            .unwrap_or_default(),
                        last_seen(w)
                            .map(|at| output::ago(at, now))
                            .unwrap_or_default(),
                        w["in_flight"].to_string(),
                        w["processed"].to_string(),
                    ]
                })
                .collect();
            println!(
                "{}",
                output::table(
                    &[
                        "WORKER",
                        "STATUS",
                        "HOST",
                        "VERSION",
                        "KINDS",
                        "LAST SEEN",
                        "IN FLIGHT",
                        "PROCESSED"
                    ],
                    &rows
                )
            );
            Ok(())
        }
        WorkersCommand::Prune { dry_run } => {
            // The registry before, to say what each pruned worker was.
            let before = ctx.client.get("/workers").await?.body;
            let answer = ctx
                .client
                .post("/workers/prune", Some(json!({"dry_run": dry_run})))
                .await?
                .body;
            if ctx.json() {
                return ctx.print_json(&answer);
            }
            let now = Utc::now();
            let verb = if dry_run { "Would prune" } else { "Pruned" };
            let pruned: Vec<&str> = answer["pruned"]
                .as_array()
                .map(|p| p.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            for id in &pruned {
                let known = items(&before).into_iter().find(|w| w["worker_id"] == *id);
                match known {
                    Some(w) => println!(
                        "{verb} worker '{id}' ({} {})",
                        text(&w, "status"),
                        last_seen(&w)
                            .map(|at| output::ago(at, now))
                            .unwrap_or_default()
                    ),
                    None => println!("{verb} worker '{id}'"),
                }
            }
            let skipped = answer["skipped"].as_i64().unwrap_or(0);
            println!(
                "{} worker(s) {}, {skipped} skipped (up)",
                pruned.len(),
                if dry_run { "would be pruned" } else { "pruned" }
            );
            Ok(())
        }
    }
}

fn items(list: &Value) -> Vec<Value> {
    list["items"].as_array().cloned().unwrap_or_default()
}

fn last_seen(worker: &Value) -> Option<DateTime<Utc>> {
    worker["last_seen_at"].as_str()?.parse().ok()
}
