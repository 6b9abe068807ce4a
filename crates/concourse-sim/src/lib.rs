//! A simulator of the Concourse CI ATC HTTP API (v8.2.5), for ci-gateway's integration tests,
//! `ci-gateway dev` and benchmarks.
//!
//! It serves the parts of the API the gateway uses, faithful to
//! `shared/spec/concourse-atc-api.md`: the dex password grant at `/sky/issuer/token` with opaque,
//! expiring tokens; bearer auth with team roles (401 `not authorized` / 403 `forbidden`);
//! pipelines (including instances selected with `vars.*`), jobs, manual triggers (200,
//! `pending`) and their refusals (404, 409 empty, 409 archived text); pause and unpause; builds
//! with `i64` ids; abort (always 204, asynchronous for started builds); and the build event
//! stream in the ATC's exact SSE framing, with its quirks (no headers before the first event,
//! no close after `end`, `Last-Event-ID`, gzip).
//!
//! Builds run a [`Script`] on a background task: log chunks, delays, error and raw events, then
//! a final [`Outcome`].
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use concourse_sim::{Job, Pipeline, Script, Simulator, World};
//! use std::time::Duration;
//!
//! let world = World::new().pipeline(Pipeline::new("payments").job(Job::new(
//!     "build-test",
//!     Script::new()
//!         .log_out("Compiling pay")
//!         .sleep(Duration::from_millis(100))
//!         .log_out("ments v0.1.0\n")
//!         .succeed(),
//! )));
//! let sim = Simulator::start(world).await?;
//! println!("ATC at {}", sim.url());
//! sim.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! - [`world`]: the configuration types ([`World`], [`User`], [`Team`], [`Pipeline`], [`Job`],
//!   [`Script`], ...) and their builders.
//! - `example`: [`World::example`], the world behind `ci-gateway dev` and the binary.
//! - `state`: runtime state behind one mutex, the scheduler tick and the build runner.
//! - `auth`: the token endpoint, opaque tokens, and resolving `Authorization` to a caller.
//! - `http`: the router (404/405 like Concourse's router), response helpers, path and
//!   instance-var parsing.
//! - `api`: `/api/v1` handlers and JSON shapes (info, user, pipelines, jobs, trigger, pause,
//!   builds, abort).
//! - `events`: the build event stream.
//! - `src/main.rs`: the `concourse-sim` binary serving [`World::example`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

mod api;
mod auth;
mod events;
mod example;
mod http;
mod state;
pub mod world;

pub use http::CONCOURSE_VERSION;
pub use world::{
    DEFAULT_ORIGIN, Job, Outcome, Pipeline, Role, Script, Source, Step, Team, User, World,
};

use state::Shared;

/// A running simulator. Dropping it (or calling [`Simulator::shutdown`]) stops it.
pub struct Simulator {
    /// The bound address.
    addr: SocketAddr,
    /// State shared with the server tasks.
    shared: Arc<Shared>,
    /// The HTTP server task.
    server: Option<JoinHandle<()>>,
    /// The scheduler task.
    scheduler: Option<JoinHandle<()>>,
}

/// A snapshot of one build, for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildInfo {
    /// Global build id.
    pub id: i64,
    /// Per-job build name (`"1"`, `"2"`, ...).
    pub name: String,
    /// Team name.
    pub team: String,
    /// Pipeline name.
    pub pipeline: String,
    /// Job name.
    pub job: String,
    /// Concourse status word: `pending`, `started`, `succeeded`, `failed`, `errored`, `aborted`.
    pub status: String,
    /// Whether an abort was requested (also set for aborts of finished builds).
    pub aborted: bool,
}

impl Simulator {
    /// Starts a simulator on `127.0.0.1:0`.
    ///
    /// # Errors
    /// If the listener cannot be bound.
    pub async fn start(world: World) -> anyhow::Result<Simulator> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), world).await
    }

    /// Starts a simulator on `addr`.
    ///
    /// # Errors
    /// If the listener cannot be bound.
    pub async fn start_on(addr: SocketAddr, world: World) -> anyhow::Result<Simulator> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("Failed to bind the Concourse simulator to {addr}"))?;
        let addr = listener
            .local_addr()
            .context("Failed to read the simulator's bound address")?;
        let shared = Arc::new(Shared::new(world, format!("http://{addr}")));
        let app = http::router(shared.clone());
        let stop = shared.shutdown.clone();
        let server = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "concourse simulator server failed");
            }
        });
        let scheduler = tokio::spawn(state::scheduler(shared.clone()));
        tracing::info!(%addr, "concourse simulator listening");
        Ok(Simulator {
            addr,
            shared,
            server: Some(server),
            scheduler: Some(scheduler),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving without giving up ownership (for tests that need an unreachable ATC while
    /// others still hold the simulator): the listener closes and open streams end.
    pub fn stop(&self) {
        self.shared.shutdown.cancel();
    }

    /// The base URL, e.g. `http://127.0.0.1:40123` (no trailing slash).
    pub fn url(&self) -> String {
        self.shared.external_url.clone()
    }

    /// Every build ever created, in creation order.
    pub fn builds(&self) -> Vec<BuildInfo> {
        let world = self.shared.lock();
        (0..world.builds.len())
            .filter_map(|index| build_info(&world, index))
            .collect()
    }

    /// The build with global id `id`.
    pub fn build(&self, id: i64) -> Option<BuildInfo> {
        let world = self.shared.lock();
        build_info(&world, world.build_index(id)?)
    }

    /// Waits until build `id` is completed (its terminal status event is written) and returns
    /// it; `None` for an unknown build or on shutdown.
    pub async fn wait_for_completion(&self, id: i64) -> Option<BuildInfo> {
        let mut changed = {
            let world = self.shared.lock();
            world
                .builds
                .get(world.build_index(id)?)?
                .changed
                .subscribe()
        };
        loop {
            let _ = changed.borrow_and_update();
            {
                let world = self.shared.lock();
                let index = world.build_index(id)?;
                if world.builds.get(index)?.completed {
                    return build_info(&world, index);
                }
            }
            tokio::select! {
                changed = changed.changed() => changed.ok()?,
                () = self.shared.shutdown.cancelled() => return None,
            }
        }
    }

    /// Number of trigger requests (`POST .../jobs/:job/builds`) received, whatever the outcome.
    pub fn trigger_requests(&self) -> usize {
        self.shared.trigger_requests.load(Ordering::Relaxed)
    }

    /// Number of build event stream requests received (any outcome).
    pub fn event_stream_requests(&self) -> usize {
        self.shared.event_stream_requests.load(Ordering::Relaxed)
    }

    /// Number of successful token grants.
    pub fn logins(&self) -> usize {
        self.shared.logins.load(Ordering::Relaxed)
    }

    /// Pauses or unpauses a job (in every instance of the named pipeline). Unknown names are
    /// ignored. Pending builds of an unpaused job start on the next scheduler tick.
    pub fn set_job_paused(&self, team: &str, pipeline: &str, job: &str, paused: bool) {
        let mut world = self.shared.lock();
        for t in world.teams.iter_mut().filter(|t| t.name == team) {
            for p in t.pipelines.iter_mut().filter(|p| p.name == pipeline) {
                for j in p.jobs.iter_mut().filter(|j| j.name == job) {
                    j.paused = paused;
                }
            }
        }
    }

    /// Pauses or unpauses a pipeline (every instance of that name). Unknown names are ignored.
    pub fn set_pipeline_paused(&self, team: &str, pipeline: &str, paused: bool) {
        let mut world = self.shared.lock();
        for t in world.teams.iter_mut().filter(|t| t.name == team) {
            for p in t.pipelines.iter_mut().filter(|p| p.name == pipeline) {
                p.paused = paused;
            }
        }
    }

    /// Stops the simulator: open event streams end, running builds stop where they are, and the
    /// server finishes (forcibly after 5 s).
    pub async fn shutdown(mut self) {
        self.shared.shutdown.cancel();
        if let Some(scheduler) = self.scheduler.take() {
            let _ = scheduler.await;
        }
        if let Some(mut server) = self.server.take()
            && tokio::time::timeout(Duration::from_secs(5), &mut server)
                .await
                .is_err()
        {
            server.abort();
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
        if let Some(scheduler) = self.scheduler.take() {
            scheduler.abort();
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// A snapshot of the build at `index`.
fn build_info(world: &state::WorldState, index: usize) -> Option<BuildInfo> {
    let build = world.builds.get(index)?;
    let team = world.teams.get(build.team)?;
    let pipeline = team.pipelines.get(build.pipeline)?;
    let job = pipeline.jobs.get(build.job)?;
    Some(BuildInfo {
        id: build.id,
        name: build.name.clone(),
        team: team.name.clone(),
        pipeline: pipeline.name.clone(),
        job: job.name.clone(),
        status: build.status.as_str().to_owned(),
        aborted: build.aborted,
    })
}
