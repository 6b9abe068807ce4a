//! `ci-gateway dev`: a real gateway with no configuration, like `vault server -dev`.
//!
//! It starts an in-process Concourse simulator with example pipelines on a loopback port, an
//! SQLite database in a temporary directory, and the gateway talking to the simulator over real
//! HTTP through the real Concourse adapter. Everything is gone when it stops.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;

use anyhow::Context;
use concourse_sim::{Simulator, World};

use crate::app::{Application, shutdown_signal};
use secrecy::{ExposeSecret, SecretString};

use crate::auth::{Scope, generate_token, token_digest};
use crate::config::{
    ApiTokenSettings, AuthSettings, ClusterSettings, ConcourseProviderSettings, DatabaseSettings,
    JobSettings, ProviderSettings, ServerSettings, Settings,
};

/// The name of the simulated provider in the allowlist.
const PROVIDER: &str = "dev-concourse";

/// Turns `build-test` into `Build Test`.
fn display_name(job: &str) -> String {
    job.split(['-', '_'])
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut chars = w.chars();
            chars
                .next()
                .map(|c| c.to_uppercase().chain(chars).collect())
                .unwrap_or_default()
        })
        .collect::<Vec<String>>()
        .join(" ")
}

/// The gateway's catalog for a simulated world: one job per simulated job of the first team,
/// with ids like `job_payments_build_test`.
pub fn dev_jobs(world: &World) -> Vec<JobSettings> {
    let Some(team) = world.teams.first() else {
        return Vec::new();
    };
    team.pipelines
        .iter()
        .flat_map(|p| {
            p.jobs.iter().map(move |j| {
                let mut binding = toml::Table::new();
                binding.insert("pipeline".into(), toml::Value::String(p.name.clone()));
                binding.insert("job".into(), toml::Value::String(j.name.clone()));
                if let Some(vars) = &p.instance_vars {
                    // JSON values from the simulator's world always fit in TOML (no nulls there).
                    if let Ok(vars) = toml::Value::try_from(vars) {
                        binding.insert("instance_vars".into(), vars);
                    }
                }
                JobSettings {
                    job_id: format!("job_{}_{}", p.name, j.name).replace('-', "_"),
                    project: p.name.clone(),
                    display_name: display_name(&j.name),
                    environment: Some("dev".to_owned()),
                    provider: PROVIDER.to_owned(),
                    binding,
                }
            })
        })
        .collect()
}

/// A dev gateway, running.
pub struct DevGateway {
    /// The gateway.
    pub app: Application,
    /// The simulator behind it.
    pub sim: Simulator,
    /// A token with every scope, accepted by this gateway only.
    pub token: SecretString,
    /// Holds the database and the password file; removed on drop.
    _dir: tempfile::TempDir,
}

/// Builds the dev gateway on `listen`.
///
/// # Errors
/// When the simulator or the gateway cannot start (for example, the port is taken).
pub async fn build(listen: SocketAddr) -> anyhow::Result<DevGateway> {
    let world = World::example();
    let jobs = dev_jobs(&world);
    let team = world
        .teams
        .first()
        .map(|t| t.name.clone())
        .context("example world has no team")?;
    let (username, password) = (
        World::EXAMPLE_USERNAME.to_owned(),
        World::EXAMPLE_PASSWORD.to_owned(),
    );
    let sim = Simulator::start(world)
        .await
        .context("cannot start the Concourse simulator")?;

    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let password_file = dir.path().join("concourse-password");
    let mut f = std::fs::File::create(&password_file)?;
    f.write_all(password.as_bytes())?;

    let mut providers = BTreeMap::new();
    providers.insert(
        PROVIDER.to_owned(),
        ProviderSettings::Concourse(ConcourseProviderSettings::with_password_file(
            sim.url(),
            team,
            username,
            password_file,
        )),
    );
    let token = generate_token();
    let auth = AuthSettings {
        tokens: vec![ApiTokenSettings {
            name: "dev".to_owned(),
            sha256: Some(token_digest(token.expose_secret())),
            token_env: None,
            scopes: Scope::ALL.iter().map(|s| s.as_str().to_owned()).collect(),
            projects: None,
        }],
        ..AuthSettings::default()
    };
    let settings = Settings {
        auth,
        listen,
        database: DatabaseSettings {
            url: format!("sqlite://{}", dir.path().join("dev.db").display()),
            max_connections: 5,
        },
        server: ServerSettings::default(),
        cluster: ClusterSettings::default(),
        providers,
        jobs,
    };
    let app = Application::build(settings).await?;
    Ok(DevGateway {
        app,
        sim,
        token,
        _dir: dir,
    })
}

/// Runs `ci-gateway dev` until Ctrl-C or SIGTERM.
///
/// # Errors
/// When it cannot start.
pub async fn run(listen: SocketAddr) -> anyhow::Result<()> {
    let dev = build(listen).await?;
    let url = format!("http://{}", dev.app.local_addr());
    println!("{}", banner(&url, dev.token.expose_secret()));
    dev.app.run_until_stopped(shutdown_signal()).await?;
    dev.sim.shutdown().await;
    Ok(())
}

/// The start-up text; the one place the dev token is ever shown (it is never logged).
fn banner(url: &str, token: &str) -> String {
    format!(
        "\nci-gateway dev is running at {url}\n\
         (a simulated Concourse and a throwaway SQLite database; nothing is kept)\n\n\
         A token with every scope, valid until this process stops:\n\
         \x20 export CI_GATEWAY_TOKEN={token}\n\n\
         Try:\n\
         \x20 curl -s -H \"authorization: Bearer $CI_GATEWAY_TOKEN\" {url}/v1/jobs\n\
         \x20 curl -s -H \"authorization: Bearer $CI_GATEWAY_TOKEN\" -X POST \\\n\
         \x20      {url}/v1/jobs/job_payments_build_test/runs \\\n\
         \x20      -H 'content-type: application/json' -d '{{\"idempotency_key\":\"try-1\"}}'\n\
         \x20 # then, with the run_id the POST returned in place of RUN_ID:\n\
         \x20 curl -s -H \"authorization: Bearer $CI_GATEWAY_TOKEN\" {url}/v1/runs/RUN_ID\n\
         \x20 curl -sN -H \"authorization: Bearer $CI_GATEWAY_TOKEN\" {url}/v1/runs/RUN_ID/events\n\
         \x20 curl -s -H \"authorization: Bearer $CI_GATEWAY_TOKEN\" {url}/v1/audit\n\n\
         Press Ctrl-C to stop.\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_become_readable_display_names() {
        assert_eq!(display_name("build-test"), "Build Test");
        assert_eq!(display_name("deploy"), "Deploy");
    }
}
