//! The built `cleanupctl` binary against a real producer-api (and a worker where a task
//! must finish), PostgreSQL and RabbitMQ.

use std::time::Duration;

use serde_json::Value;
use test_support::*;

mod admin;
mod tasks;

const READ: &str = "viewer-secret-0123456789ab";

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// Run cleanupctl against `server` with `token`.
async fn ctl_at(server: &str, token: Option<&str>, args: &[&str]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_cleanupctl"));
    command
        .env_remove("CLEANUP_SERVER")
        .env_remove("CLEANUP_TOKEN")
        .arg("--server")
        .arg(server);
    if let Some(token) = token {
        command.arg("--token").arg(token);
    }
    let output = tokio::time::timeout(Duration::from_secs(60), command.args(args).output())
        .await
        .expect("cleanupctl finished within 60 s")
        .unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

async fn ctl(app: &TestApp, args: &[&str]) -> Run {
    ctl_at(&app.address, Some(TOKEN), args).await
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("cleanupctl-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
