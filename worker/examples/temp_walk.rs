//! Run the `cleanup_temp_files` executor once on a directory, without RabbitMQ, and print
//! its result: used by `deploy/bench/temp_files.sh` to compare with `find -delete`.
//!
//! `cargo run --release --example temp_walk -- <dir> <max_age_hours> [threads] [--dry-run] [--no-locks] [--max-files=N]`

use std::collections::BTreeMap;

use chrono::Utc;
use shared::envelope::TaskEnvelope;
use shared::tasks::{CleanupTempFilesParams, TaskSpec};
use tokio_util::sync::CancellationToken;
use worker::config::TempRoot;
use worker::executor::temp_files::TempFilesExecutor;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(hours)) = (args.get(1), args.get(2)) else {
        anyhow::bail!(
            "usage: temp_walk <dir> <max_age_hours> [threads] [--dry-run] [--no-locks] [--max-files=N]"
        );
    };
    let threads = args.get(3).and_then(|t| t.parse().ok()).unwrap_or(4);
    let dry_run = args.iter().any(|a| a == "--dry-run");
    let check_locks = !args.iter().any(|a| a == "--no-locks");
    let max_files = match args.iter().find_map(|a| a.strip_prefix("--max-files=")) {
        Some(n) => Some(n.parse()?),
        None => None,
    };
    let root = TempRoot::parse(&format!("bench={dir}"))?;
    let executor = TempFilesExecutor::new(
        BTreeMap::from([(root.name.clone(), root)]),
        threads,
        check_locks,
    )?;
    let params = CleanupTempFilesParams {
        max_age_hours: hours.parse()?,
        dry_run,
        root: Some("bench".into()),
        patterns: None,
        max_files,
        remove_empty_dirs: false,
        max_attempts: None,
    };
    let envelope = TaskEnvelope::new(
        uuid::Uuid::now_v7(),
        TaskSpec::CleanupTempFiles(params.clone()),
        1,
        Utc::now(),
    );
    let result = executor
        .execute(
            &envelope,
            &params,
            &CancellationToken::new(),
            &worker::executor::Checkpoint::default(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    match result {
        worker::executor::Execution::Done(result) => println!("{}", result.to_json()),
        worker::executor::Execution::Interrupted { progress } => {
            anyhow::bail!("interrupted: {progress}")
        }
    }
    Ok(())
}
