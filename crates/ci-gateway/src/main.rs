//! The `ci-gateway` binary: parses the command line and hands over to the library.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use ci_gateway::app::{Application, build_providers, catalog, shutdown_signal};
use ci_gateway::audit::Verification;
use ci_gateway::auth::Authenticator;
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
    /// Prints a token with every scope.
    Dev {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the audit log's hash chain; names the first bad row and exits 1 if there is one.
    Verify {
        /// The TOML configuration file (its database is checked).
        #[arg(long, env = "CI_GATEWAY_CONFIG", conflicts_with = "database_url")]
        config: Option<PathBuf>,
        /// Or the database URL itself.
        #[arg(long)]
        database_url: Option<String>,
    },
}

fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal, not in a log file or a collector.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
            let auth = Authenticator::from_settings(&settings.auth, settings.server.tls.as_ref())?;
            let auth_summary = if auth.is_disabled() {
                "auth DISABLED (auth.mode = \"none\")".to_owned()
            } else {
                format!(
                    "auth: {} API token(s), jwt {}, {} certificate identit(ies)",
                    settings.auth.tokens.len(),
                    if settings.auth.jwt.is_some() {
                        "on"
                    } else {
                        "off"
                    },
                    settings.auth.mtls.len()
                )
            };
            println!(
                "{}: OK ({} provider(s), {} job(s); {auth_summary}; tls {})",
                file.display(),
                providers.len(),
                jobs.len(),
                if settings.server.tls.is_some() {
                    "on"
                } else {
                    "off"
                }
            );
            Ok(())
        }
        ServerCommand::Dev { listen } => ci_gateway::dev::run(listen).await,
        ServerCommand::Audit {
            command:
                AuditCommand::Verify {
                    config,
                    database_url,
                },
        } => {
            let url = match (config, database_url) {
                (_, Some(url)) => url,
                (Some(file), None) => Settings::load(&file)?.database.url,
                (None, None) => anyhow::bail!("give --config FILE or --database-url URL"),
            };
            // Verifying must not create or migrate a database: a wrong path is an error, not
            // an empty, intact log.
            if let Some(path) = url
                .strip_prefix("sqlite://")
                .or_else(|| url.strip_prefix("sqlite:"))
            {
                let file = path.split('?').next().unwrap_or(path);
                if !std::path::Path::new(file).exists() {
                    anyhow::bail!("no database at {file}");
                }
            }
            let store = ci_gateway::store::connect(&url, 2).await?;
            match ci_gateway::audit::verify(store.as_ref()).await? {
                Verification::Intact { rows } => {
                    println!("audit log intact: {rows} row(s)");
                    Ok(())
                }
                Verification::Broken { seq, problem } => {
                    anyhow::bail!("audit log broken at row {seq}: {problem}")
                }
            }
        }
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
