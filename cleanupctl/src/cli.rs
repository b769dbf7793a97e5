//! The command line: every subcommand, its flags and an example each.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "cleanupctl",
    version,
    about = "Command-line client of the cleanup service: enqueue cleanups, follow tasks, \
             manage workers and schedules",
    after_help = "Examples:\n  \
        cleanupctl runs --older-than 30d --dry-run\n  \
        cleanupctl temp-files --older-than 1d --root scratch --wait\n  \
        cleanupctl tasks list --status failed\n\n\
        Exit codes: 0 done; 1 the task failed, died or was cancelled (--wait, tasks watch); \
        2 bad usage; 3 timed out while waiting (the task goes on); 4 the API refused the \
        request (4xx); 5 the API is unreachable or failed (5xx)."
)]
pub struct Cli {
    /// The producer-api to talk to.
    #[arg(
        long,
        env = "CLEANUP_SERVER",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub server: String,
    /// Bearer token (API_TOKENS secret).
    #[arg(long, env = "CLEANUP_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Read the token from this file (first line).
    #[arg(long, value_name = "PATH", global = true, conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// Text for people, JSON for scripts.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text, global = true)]
    pub output: Output,
    /// Longest wait for one answer of the API.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s", global = true)]
    pub timeout: Duration,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Delete old rows of the runs table.
    #[command(
        after_help = "Example:\n  cleanupctl runs --older-than 30d --status failed --dry-run"
    )]
    Runs(RunsArgs),
    /// Delete old files under a configured temp root.
    #[command(
        name = "temp-files",
        after_help = "Example:\n  cleanupctl temp-files --older-than 36h --root scratch --pattern '*.tmp' --wait"
    )]
    TempFiles(TempFilesArgs),
    /// List, inspect, follow, cancel, retry tasks, and run dry runs for real.
    #[command(
        subcommand,
        after_help = "Example:\n  cleanupctl tasks list --status running"
    )]
    Tasks(TasksCommand),
    /// List and prune workers.
    #[command(
        subcommand,
        after_help = "Example:\n  cleanupctl workers prune --dry-run"
    )]
    Workers(WorkersCommand),
    /// Manage schedules.
    #[command(
        subcommand,
        after_help = "Example:\n  cleanupctl schedules apply -f schedules.yaml --dry-run"
    )]
    Schedules(SchedulesCommand),
    /// Print a shell completion script.
    #[command(
        after_help = "Example:\n  cleanupctl completion bash > /etc/bash_completion.d/cleanupctl"
    )]
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// What every enqueue shares.
#[derive(Debug, Args)]
pub struct Common {
    /// Delete what is older than this: 90m, 36h, 30d.
    #[arg(long, value_name = "DURATION", value_parser = parse_age, allow_hyphen_values = true)]
    pub older_than: Duration,
    /// Report what would be deleted; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The same key and request return the same task (safe retries from scripts).
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Follow the task until it finishes.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up waiting after this long (exit 3; the task goes on).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30m")]
    pub wait_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct RunsArgs {
    #[command(flatten)]
    pub common: Common,
    /// Terminal statuses to delete (repeat; default: the worker's).
    #[arg(long = "status", value_name = "STATUS")]
    pub statuses: Vec<String>,
    /// Delete at most this many rows, oldest first.
    #[arg(long)]
    pub max_rows: Option<u64>,
    /// Largest batch (rows per transaction).
    #[arg(long)]
    pub batch_size: Option<u32>,
    /// Only rows with this column value (repeat): project_id=42.
    #[arg(long, value_name = "COLUMN=VALUE", value_parser = parse_scope)]
    pub scope: Vec<(String, String)>,
}

#[derive(Debug, Args)]
pub struct TempFilesArgs {
    #[command(flatten)]
    pub common: Common,
    /// The configured root to clean (default: every root).
    #[arg(long)]
    pub root: Option<String>,
    /// Only files whose name matches (repeat): '*.tmp'.
    #[arg(long = "pattern", value_name = "GLOB")]
    pub patterns: Vec<String>,
    /// Delete at most this many files.
    #[arg(long)]
    pub max_files: Option<u64>,
    /// Also remove directories left empty.
    #[arg(long)]
    pub remove_empty_dirs: bool,
}

#[derive(Debug, Subcommand)]
pub enum TasksCommand {
    /// Tasks, newest first.
    #[command(
        after_help = "Example:\n  cleanupctl tasks list --kind cleanup_runs --status failed --all"
    )]
    List {
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        status: Option<String>,
        /// The token name that created the tasks.
        #[arg(long)]
        actor: Option<String>,
        /// Tasks per page.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Follow every page.
        #[arg(long)]
        all: bool,
    },
    /// One task.
    #[command(after_help = "Example:\n  cleanupctl tasks get 0196f7a0-...")]
    Get { id: String },
    /// Follow a task until it finishes (exit 1 unless it succeeded).
    #[command(after_help = "Example:\n  cleanupctl tasks watch 0196f7a0-... --wait-timeout 10m")]
    Watch {
        id: String,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "30m")]
        wait_timeout: Duration,
    },
    /// Cancel a task: at once when queued, at its next batch boundary when running.
    #[command(after_help = "Example:\n  cleanupctl tasks cancel 0196f7a0-...")]
    Cancel { id: String },
    /// Run a failed, dead or cancelled task again, as a new task.
    #[command(after_help = "Example:\n  cleanupctl tasks retry 0196f7a0-... --keep-cutoff --wait")]
    Retry {
        id: String,
        /// Keep the original cutoff instead of one from now.
        #[arg(long)]
        keep_cutoff: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Run a succeeded dry run for real: same parameters, same cutoff.
    #[command(after_help = "Example:\n  cleanupctl tasks run 0196f7a0-... --wait")]
    Run {
        /// The dry run's id.
        id: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum WorkersCommand {
    /// Workers known from their heartbeats.
    #[command(after_help = "Example:\n  cleanupctl workers list --status up")]
    List {
        #[arg(long)]
        status: Option<String>,
    },
    /// Remove stopped and lost workers from the registry.
    #[command(after_help = "Example:\n  cleanupctl workers prune --dry-run")]
    Prune {
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SchedulesCommand {
    /// Every schedule.
    #[command(after_help = "Example:\n  cleanupctl schedules list -o json")]
    List,
    /// One schedule.
    #[command(after_help = "Example:\n  cleanupctl schedules get nightly-runs")]
    Get { name: String },
    /// Create or replace every schedule of a YAML file (`schedules: [...]`).
    #[command(after_help = "Example:\n  cleanupctl schedules apply -f schedules.yaml --dry-run")]
    Apply {
        #[arg(short = 'f', long, value_name = "FILE")]
        file: PathBuf,
        /// Show what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Fire a schedule now, outside its calendar.
    #[command(after_help = "Example:\n  cleanupctl schedules trigger nightly-runs")]
    Trigger { name: String },
    /// Stop a schedule from firing.
    #[command(after_help = "Example:\n  cleanupctl schedules pause nightly-runs")]
    Pause { name: String },
    /// Let a paused schedule fire again, from its next window.
    #[command(after_help = "Example:\n  cleanupctl schedules resume nightly-runs")]
    Resume { name: String },
    /// Delete a schedule (the tasks it fired stay).
    #[command(after_help = "Example:\n  cleanupctl schedules delete nightly-runs")]
    Delete { name: String },
}

/// A human duration, more than zero.
fn parse_age(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.starts_with('-') {
        return Err(format!(
            "`{text}` is negative; give an age such as 90m, 36h or 30d"
        ));
    }
    let age = humantime::parse_duration(text).map_err(|e| {
        format!("`{text}` is not a duration ({e}); give one such as 90m, 36h or 30d")
    })?;
    if age.is_zero() {
        return Err("the age must be more than zero".to_owned());
    }
    Ok(age)
}

fn parse_scope(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((column, value)) if !column.is_empty() => Ok((column.to_owned(), value.to_owned())),
        _ => Err(format!("`{text}` is not COLUMN=VALUE (e.g. project_id=42)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn ages_are_human_and_positive() {
        assert_eq!(parse_age("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_age("30d"), Ok(Duration::from_secs(30 * 86400)));
        assert!(parse_age("0s").unwrap_err().contains("more than zero"));
        assert!(parse_age("-5d").unwrap_err().contains("negative"));
        assert!(parse_age("soon").unwrap_err().contains("not a duration"));
        assert_eq!(parse_scope("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_scope("=1").is_err());
    }
}
