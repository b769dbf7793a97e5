//! Process lifecycle: both binaries build their application, run it until SIGTERM
//! (Kubernetes) or SIGINT (Ctrl-C), and exit with a code that says how it went.

use std::future::Future;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

/// Build with `build`, then run with `run` until a signal cancels the token. Exit codes:
/// 0 after a clean stop, 1 when running failed, 2 when the application could not start
/// (bad configuration, unreachable ledger).
pub async fn run_service<A, B, R, RF>(name: &str, build: B, run: R) -> ExitCode
where
    B: Future<Output = anyhow::Result<A>>,
    R: FnOnce(A, CancellationToken) -> RF,
    RF: Future<Output = anyhow::Result<()>>,
{
    let app = match build.await {
        Ok(app) => app,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("{name}: {error:#}");
            return ExitCode::from(2);
        }
    };
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        signal().await;
        trigger.cancel();
    });
    match run(app, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT, logging which arrived.
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received; shutting down"),
        _ = terminate => tracing::info!("SIGTERM received; shutting down"),
    }
}
