use clap::Parser;
use worker::{Application, Config};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    shared::telemetry::init(&config.log);
    shared::shutdown::run_service(
        "worker",
        Application::build(config),
        Application::run_until_stopped,
    )
    .await
}
