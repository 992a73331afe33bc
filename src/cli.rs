//! The command line: `serve`, `check-config`, `bench`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::config::Config;

#[derive(Debug, Parser)]
#[command(name = "inlet", version, about = "Inbound messaging webhook gateway")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (embedded defaults when no config is given).
    Serve {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a config and print every problem with its path.
    CheckConfig {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Load-test a gateway's ingest endpoint (loopback targets only).
    Bench(crate::bench::BenchArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match Config::load(config.as_deref()) {
            Ok(c) => {
                println!(
                    "config ok: {} source(s), store {}",
                    c.sources.len(),
                    c.store.url
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                for p in &e.problems {
                    eprintln!("error: {p}");
                }
                ExitCode::FAILURE
            }
        },
        // Builds its own client runtime (thread count is an option).
        Command::Bench(args) => crate::bench::main(args),
        Command::Serve { config } => {
            let _guard = crate::telemetry::init_logging();
            let config = match Config::load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "Inlet failed.");
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let app = App::build(config).await?;
    // Tests and scripts read this line to find the port.
    println!("inlet listening on http://{}", app.local_addr());
    tracing::info!(addr = %app.local_addr(), "Listening.");
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        trigger.cancel();
    });
    app.run_until_stopped(shutdown).await
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
