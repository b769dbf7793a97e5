use clap::Parser;
use producer_api::{Application, Config};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    shared::runtime::telemetry::init(&config.log);
    shared::runtime::shutdown::run_service(
        "producer-api",
        Application::build(config),
        Application::run_until_stopped,
    )
    .await
}
