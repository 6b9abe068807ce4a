//! `gateway-bench`: measures ci-gateway against the Concourse simulator, each figure next to a
//! baseline taken in the same run. Results and the command go to BENCHMARKS.md.
//!
//! - **fan-out**: W clients follow one run's events through the gateway, against W clients
//!   following the same build straight from the (simulated) ATC. Reports the time until every
//!   client saw the end, events delivered per second, and how many event streams the ATC served.
//! - **trigger**: sequential and concurrent `POST /v1/jobs/{id}/runs` through the gateway, against
//!   the same number of trigger calls straight to the ATC. Reports latency percentiles.
//!
//! Everything runs in one process on loopback; the database is an SQLite file in a temporary
//! directory unless `BENCH_DATABASE_URL` names another (e.g. PostgreSQL).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ci_gateway::Application;
use ci_gateway::config::{
    ApiTokenSettings, AuthSettings, ClusterSettings, ConcourseProviderSettings, DatabaseSettings,
    JobSettings, ProviderSettings, ServerSettings, Settings,
};
use concourse_sim::{Job, Pipeline, Script, Simulator, World};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;

/// The caller token the benchmark's clients send.
const CALLER_TOKEN: &str = "bench-caller-token";

/// Log lines the fan-out job prints.
const LINES: usize = 2_000;
/// Trigger calls per trigger scenario.
const TRIGGERS: usize = 300;

fn world() -> World {
    let mut chatty = Script::new().sleep(Duration::from_millis(300));
    // 40 chunks of 50 lines each, split mid-line like a real ATC.
    for chunk in 0..LINES / 50 {
        let text: String = (0..50)
            .map(|i| format!("line {:05} of the build log\n", chunk * 50 + i))
            .collect();
        let (head, tail) = text.split_at(text.len() / 2 + 3);
        chatty = chatty.log_out(head).log_out(tail);
    }
    World::new()
        .pipeline(
            Pipeline::new("bench")
                .job(Job::new("chatty", chatty.succeed()))
                .job(Job::new("quick", Script::new().log_out("ok\n").succeed())),
        )
        .token_ttl(Duration::from_secs(3600))
}

fn job(job_id: &str, job: &str) -> JobSettings {
    let mut binding = toml::Table::new();
    binding.insert("pipeline".into(), "bench".into());
    binding.insert("job".into(), job.into());
    JobSettings {
        job_id: job_id.into(),
        project: "bench".into(),
        display_name: job.into(),
        environment: None,
        provider: "ci".into(),
        binding,
    }
}

async fn start_gateway(sim: &Simulator, dir: &tempfile::TempDir) -> anyhow::Result<String> {
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, World::ADMIN_PASSWORD)?;
    let mut providers = BTreeMap::new();
    providers.insert(
        "ci".to_owned(),
        ProviderSettings::Concourse(ConcourseProviderSettings::with_password_file(
            sim.url(),
            "main".into(),
            World::ADMIN_USERNAME.into(),
            password_file,
        )),
    );
    let url = std::env::var("BENCH_DATABASE_URL")
        .unwrap_or_else(|_| format!("sqlite://{}", dir.path().join("bench.db").display()));
    let settings = Settings {
        listen: "127.0.0.1:0".parse()?,
        database: DatabaseSettings {
            url,
            max_connections: 10,
        },
        server: ServerSettings::default(),
        cluster: ClusterSettings::default(),
        auth: AuthSettings {
            tokens: vec![ApiTokenSettings {
                name: "bench".into(),
                sha256: Some(ci_gateway::auth::token_digest(CALLER_TOKEN)),
                token_env: None,
                scopes: ["jobs:read", "runs:read", "runs:trigger", "runs:cancel"]
                    .map(String::from)
                    .to_vec(),
                projects: None,
            }],
            ..AuthSettings::default()
        },
        providers,
        jobs: vec![job("job_chatty", "chatty"), job("job_quick", "quick")],
    };
    let app = Application::build(settings).await?;
    let addr = format!("http://{}", app.local_addr());
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    Ok(addr)
}

/// Reads an SSE stream until an event named `end`; returns how many events it carried.
async fn follow(request: reqwest::RequestBuilder) -> anyhow::Result<usize> {
    let response = request.send().await?.error_for_status()?;
    let mut events = response.bytes_stream().eventsource();
    let mut n = 0;
    while let Some(event) = events.next().await {
        n += 1;
        if event?.event == "end" {
            return Ok(n);
        }
    }
    bail!("stream closed before its end")
}

/// A bearer token straight from the simulator, as fly gets one.
async fn atc_token(client: &reqwest::Client, sim: &Simulator) -> anyhow::Result<String> {
    let form = format!(
        "grant_type=password&username={}&password={}&scope=openid+profile+email+federated%3Aid+groups",
        World::ADMIN_USERNAME,
        World::ADMIN_PASSWORD
    );
    let body: serde_json::Value = client
        .post(format!("{}/sky/issuer/token", sim.url()))
        .basic_auth("fly", Some("Zmx5"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    body["access_token"]
        .as_str()
        .map(str::to_owned)
        .context("no access_token")
}

struct FanOut {
    watchers: usize,
    path: &'static str,
    seconds: f64,
    events: usize,
    upstream_streams: usize,
}

/// W watchers through the gateway on one fresh run.
async fn fan_out_gateway(
    client: &reqwest::Client,
    gw: &str,
    sim: &Simulator,
    watchers: usize,
) -> anyhow::Result<FanOut> {
    let streams_before = sim.event_stream_requests();
    let start = Instant::now();
    let run: serde_json::Value = client
        .post(format!("{gw}/v1/jobs/job_chatty/runs"))
        .json(&serde_json::json!({}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let run_id = run["run"]["run_id"].as_str().context("run_id")?.to_owned();
    let followers = (0..watchers)
        .map(|_| follow(client.get(format!("{gw}/v1/runs/{run_id}/events"))))
        .collect::<Vec<_>>();
    let counts = futures_util::future::try_join_all(followers).await?;
    Ok(FanOut {
        watchers,
        path: "gateway",
        seconds: start.elapsed().as_secs_f64(),
        events: counts.iter().sum(),
        upstream_streams: sim.event_stream_requests() - streams_before,
    })
}

/// W watchers straight on the ATC's build event stream: the baseline.
async fn fan_out_direct(
    client: &reqwest::Client,
    sim: &Simulator,
    token: &str,
    watchers: usize,
) -> anyhow::Result<FanOut> {
    let streams_before = sim.event_stream_requests();
    let start = Instant::now();
    let build: serde_json::Value = client
        .post(format!(
            "{}/api/v1/teams/main/pipelines/bench/jobs/chatty/builds",
            sim.url()
        ))
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = build["id"].as_i64().context("build id")?;
    let followers = (0..watchers)
        .map(|_| {
            let request = client
                .get(format!("{}/api/v1/builds/{id}/events", sim.url()))
                .bearer_auth(token);
            follow(request)
        })
        .collect::<Vec<_>>();
    let counts = futures_util::future::try_join_all(followers).await?;
    Ok(FanOut {
        watchers,
        path: "direct to ATC",
        seconds: start.elapsed().as_secs_f64(),
        events: counts.iter().sum(),
        upstream_streams: sim.event_stream_requests() - streams_before,
    })
}

/// Latency percentiles of `TRIGGERS` calls made by `concurrency` workers.
async fn trigger_latencies<F, Fut>(concurrency: usize, call: F) -> anyhow::Result<Vec<Duration>>
where
    F: Fn() -> Fut + Clone,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let per_worker = TRIGGERS / concurrency;
    let workers = (0..concurrency).map(|_| {
        let call = call.clone();
        async move {
            let mut times = Vec::with_capacity(per_worker);
            for _ in 0..per_worker {
                let t = Instant::now();
                call().await?;
                times.push(t.elapsed());
            }
            anyhow::Ok(times)
        }
    });
    let mut all: Vec<Duration> = futures_util::future::try_join_all(workers)
        .await?
        .into_iter()
        .flatten()
        .collect();
    all.sort_unstable();
    Ok(all)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let sim = Simulator::start(world()).await?;
    let dir = tempfile::tempdir()?;
    let gw = start_gateway(&sim, &dir).await?;
    let token = atc_token(&reqwest::Client::new(), &sim).await?;
    // Every gateway request carries the caller token; the ATC calls set their own bearer.
    let auth: reqwest::header::HeaderValue = format!("Bearer {CALLER_TOKEN}").parse()?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .default_headers(
            [(reqwest::header::AUTHORIZATION, auth)]
                .into_iter()
                .collect(),
        )
        .build()?;

    println!("## Fan-out: one run of {LINES} log lines, W watchers\n");
    println!(
        "| path | W | seconds to last `end` | events delivered | events/s | ATC event streams |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for watchers in [1, 100, 500] {
        for result in [
            fan_out_direct(&client, &sim, &token, watchers).await?,
            fan_out_gateway(&client, &gw, &sim, watchers).await?,
        ] {
            println!(
                "| {} | {} | {:.2} | {} | {:.0} | {} |",
                result.path,
                result.watchers,
                result.seconds,
                result.events,
                result.events as f64 / result.seconds,
                result.upstream_streams
            );
        }
    }

    println!("\n## Trigger latency: {TRIGGERS} calls per row\n");
    println!("| path | concurrency | p50 ms | p95 ms | p99 ms | calls/s |");
    println!("|---|---:|---:|---:|---:|---:|");
    for concurrency in [1, 10] {
        let gw_call = || {
            let request = client
                .post(format!("{gw}/v1/jobs/job_quick/runs"))
                .json(&serde_json::json!({}));
            async move {
                request.send().await?.error_for_status()?;
                anyhow::Ok(())
            }
        };
        let atc_call = || {
            let request = client
                .post(format!(
                    "{}/api/v1/teams/main/pipelines/bench/jobs/quick/builds",
                    sim.url()
                ))
                .bearer_auth(&token);
            async move {
                request.send().await?.error_for_status()?;
                anyhow::Ok(())
            }
        };
        for (path, times) in [
            (
                "direct to ATC",
                trigger_latencies(concurrency, atc_call).await?,
            ),
            ("gateway", trigger_latencies(concurrency, gw_call).await?),
        ] {
            let total: f64 =
                times.iter().map(Duration::as_secs_f64).sum::<f64>() / concurrency as f64;
            println!(
                "| {path} | {concurrency} | {:.2} | {:.2} | {:.2} | {:.0} |",
                pct(&times, 0.5),
                pct(&times, 0.95),
                pct(&times, 0.99),
                times.len() as f64 / total
            );
        }
    }
    Ok(())
}
