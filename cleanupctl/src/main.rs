//! `cleanupctl`: the command-line client of the cleanup service's HTTP API.

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use serde_json::Value;

mod cli;
mod client;
mod output;
mod schedules;
mod tasks;
mod workers;

use cli::{Cli, Command, Output};
use client::{CliError, Client};

/// What every command needs: the client and how to print.
pub struct Ctx {
    client: Client,
    output: Output,
}

impl Ctx {
    fn json(&self) -> bool {
        self.output == Output::Json
    }

    fn print_json(&self, value: &Value) -> Result<(), CliError> {
        println!(
            "{}",
            serde_json::to_string_pretty(value).expect("JSON prints")
        );
        Ok(())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let output = cli.output;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // A refused request's problem document is the answer for scripts.
            if let (Output::Json, Some(body)) = (output, error.body()) {
                println!(
                    "{}",
                    serde_json::to_string_pretty(body).expect("JSON prints")
                );
            }
            eprintln!("cleanupctl: {error}");
            ExitCode::from(error.exit_code() as u8)
        }
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    if let Command::Completion { shell } = cli.command {
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "cleanupctl",
            &mut std::io::stdout(),
        );
        return Ok(());
    }
    let token = match (&cli.token, &cli.token_file) {
        (Some(token), _) => Some(token.trim().to_owned()),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                CliError::Usage(format!("cannot read --token-file {}: {e}", path.display()))
            })?;
            let token = text.lines().next().unwrap_or_default().trim().to_owned();
            if token.is_empty() {
                return Err(CliError::Usage(format!(
                    "--token-file {} is empty",
                    path.display()
                )));
            }
            Some(token)
        }
        (None, None) => None,
    };
    let ctx = Ctx {
        client: Client::new(&cli.server, token, cli.timeout)?,
        output: cli.output,
    };
    match cli.command {
        Command::Runs(args) => tasks::runs(&ctx, args).await,
        Command::TempFiles(args) => tasks::temp_files(&ctx, args).await,
        Command::Tasks(command) => tasks::run(&ctx, command).await,
        Command::Workers(command) => workers::run(&ctx, command).await,
        Command::Schedules(command) => schedules::run(&ctx, command).await,
        Command::Completion { .. } => unreachable!("handled above"),
    }
}
