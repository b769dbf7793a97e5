use clap::Parser;
use tokio_util::sync::CancellationToken;
use worker::{Application, Config};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    shared::telemetry::init(&config.log);
    let app = match Application::build(config).await {
        Ok(app) => app,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("worker: {error:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        shared::shutdown::signal().await;
        trigger.cancel();
    });
    match app.run_until_stopped(shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
