//! `concourse-sim`: serves [`World::example`] until Ctrl-C.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use concourse_sim::{Simulator, World};
use tracing_subscriber::EnvFilter;

/// A simulator of the Concourse ATC HTTP API, serving an example world.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8079", env = "CONCOURSE_SIM_LISTEN")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let sim = Simulator::start_on(args.listen, World::example()).await?;
    println!("Concourse simulator at {}", sim.url());
    println!(
        "  user {} / password {} (member of team main)",
        World::EXAMPLE_USERNAME,
        World::EXAMPLE_PASSWORD
    );
    println!("  user auditor / password auditor-password (viewer of team main)");
    println!(
        "  user {} / password {} (owner of team main)",
        World::ADMIN_USERNAME,
        World::ADMIN_PASSWORD
    );
    println!("  OAuth client fly / Zmx5; Ctrl-C to stop");
    tokio::signal::ctrl_c()
        .await
        .context("Failed to wait for Ctrl-C")?;
    sim.shutdown().await;
    Ok(())
}
