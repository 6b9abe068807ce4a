//! The `ci-gateway` binary: parses the command line and hands over to the library.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use ci_gateway::app::{Application, build_providers, catalog, shutdown_signal};
use ci_gateway::config::Settings;

/// One stable CI API in front of Concourse.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The gateway itself.
    #[command(flatten)]
    Server(ServerCommand),
    /// List the jobs of a running gateway.
    Jobs(ci_gateway::cli::JobsArgs),
    /// Trigger, follow, read, list and cancel runs on a running gateway.
    Runs(ci_gateway::cli::RunsArgs),
}

#[derive(Subcommand)]
enum ServerCommand {
    /// Run the gateway from a configuration file.
    Serve {
        /// The TOML configuration file.
        #[arg(long, env = "CI_GATEWAY_CONFIG")]
        config: PathBuf,
    },
    /// Check a configuration file (syntax, catalog, secrets) without starting or calling out.
    CheckConfig {
        /// The TOML configuration file.
        file: PathBuf,
    },
    /// Run a real gateway against a simulated Concourse with example jobs; no configuration.
    Dev {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
}

fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("CI_GATEWAY_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

async fn run(command: ServerCommand) -> anyhow::Result<()> {
    match command {
        ServerCommand::Serve { config } => {
            let settings = Settings::load(&config)?;
            let app = Application::build(settings).await?;
            app.run_until_stopped(shutdown_signal()).await
        }
        ServerCommand::CheckConfig { file } => {
            let settings = Settings::load(&file)?;
            let providers = build_providers(&settings, false).await?;
            let jobs = catalog(&settings, &providers)?;
            println!(
                "{}: OK ({} provider(s), {} job(s))",
                file.display(),
                providers.len(),
                jobs.len()
            );
            Ok(())
        }
        ServerCommand::Dev { listen } => ci_gateway::dev::run(listen).await,
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let server = match Cli::parse().command {
        // The client commands print for people and scripts: no log lines.
        Command::Jobs(args) => return ci_gateway::cli::jobs(args).await,
        Command::Runs(args) => return ci_gateway::cli::runs(args).await,
        Command::Server(command) => command,
    };
    init_tracing();
    match run(server).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ci-gateway: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
