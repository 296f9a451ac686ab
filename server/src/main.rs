//! The `kahu-server` binary: flags, logging, signals.

use std::process::ExitCode;

use clap::Parser;
use kahu_server::{Config, Server};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let config = Config::parse();
    let filter = EnvFilter::try_new(&config.log_level).unwrap_or_else(|error| {
        eprintln!(
            "kahu-server: bad --log-level {:?} ({error}); using info",
            config.log_level
        );
        EnvFilter::new("info")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("kahu-server: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config))
}

async fn run(config: Config) -> ExitCode {
    let server = match Server::start(config).await {
        Ok(server) => server,
        Err(error) => {
            eprintln!("kahu-server: {error}");
            return ExitCode::FAILURE;
        }
    };
    // A stable line on stdout for scripts and tests that start the server on port 0.
    println!("kahu-server listening on {}", server.local_addr());
    let failure = tokio::select! {
        stopped = stop_signal() => {
            if let Err(error) = stopped {
                eprintln!("kahu-server: cannot wait for signals: {error}");
            }
            None
        }
        reason = server.failed() => Some(reason),
    };
    tracing::info!("stopping: no new connections; answering requests in flight");
    server.shutdown().await;
    match failure {
        None => ExitCode::SUCCESS,
        Some(reason) => {
            eprintln!("kahu-server: {reason}");
            ExitCode::FAILURE
        }
    }
}

/// Waits for SIGINT (Ctrl-C) or SIGTERM.
async fn stop_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut terminate = signal(SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result,
            _ = terminate.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}
