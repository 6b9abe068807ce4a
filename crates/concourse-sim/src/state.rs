//! The simulator's mutable state, the scheduler, and the build runner.
//!
//! All state lives behind one `std::sync::Mutex` ([`Shared::world`]): every critical section
//! is a few lookups or pushes and never awaits, so an async mutex would only add overhead.
//! Tokens have their own mutex so logins never wait for build bookkeeping.
//!
//! Build events are stored per build (like the ATC's `build_events` table) and readers are
//! woken through a per-build `watch` channel. Readers always re-read the stored events, so a
//! slow reader can never lag or miss one.

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::auth::Grant;
use crate::world::{DEFAULT_ORIGIN, Outcome, Role, Script, Step, User, World};

/// State shared by the HTTP handlers, the scheduler and the build runners.
pub(crate) struct Shared {
    /// Access token lifetime.
    pub(crate) token_ttl: Duration,
    /// Scheduler period.
    pub(crate) scheduler_tick: Duration,
    /// Delay before a started build reacts to an abort.
    pub(crate) abort_delay: Duration,
    /// Local users.
    pub(crate) users: Vec<User>,
    /// Accepted OAuth clients, `fly` first.
    pub(crate) clients: Vec<(String, String)>,
    /// Base URL, reported as `external_url` by `/api/v1/info`.
    pub(crate) external_url: String,
    /// Teams, pipelines, jobs and builds.
    pub(crate) world: Mutex<WorldState>,
    /// Issued access tokens by their opaque value.
    pub(crate) tokens: Mutex<HashMap<String, Grant>>,
    /// Trigger requests received (any outcome).
    pub(crate) trigger_requests: AtomicUsize,
    /// Successful token grants.
    pub(crate) logins: AtomicUsize,
    /// Build event stream requests received (any outcome).
    pub(crate) event_stream_requests: AtomicUsize,
    /// Cancelled when the simulator shuts down; ends streams, runners and the scheduler.
    pub(crate) shutdown: CancellationToken,
}

/// Teams, pipelines, jobs and builds.
pub(crate) struct WorldState {
    /// Teams in configuration order.
    pub(crate) teams: Vec<TeamState>,
    /// Every build, indexed by `id - first_build_id`.
    pub(crate) builds: Vec<BuildState>,
    /// Id of `builds[0]`.
    pub(crate) first_build_id: i64,
    /// Indexes of builds that are still pending, in creation order.
    pending: Vec<usize>,
}

/// A team at runtime.
pub(crate) struct TeamState {
    /// Team name.
    pub(crate) name: String,
    /// The team's pipelines.
    pub(crate) pipelines: Vec<PipelineState>,
}

/// A pipeline (instance) at runtime.
pub(crate) struct PipelineState {
    /// Database-style id, unique across teams.
    pub(crate) id: i64,
    /// Pipeline name.
    pub(crate) name: String,
    /// Instance vars; never an empty map.
    pub(crate) instance_vars: Option<Map<String, Value>>,
    /// Whether new builds are held back.
    pub(crate) paused: bool,
    /// Whether writes are refused with 409.
    pub(crate) archived: bool,
    /// Whether anonymous reads are allowed.
    pub(crate) public: bool,
    /// The pipeline's jobs.
    pub(crate) jobs: Vec<JobState>,
}

/// A job at runtime.
pub(crate) struct JobState {
    /// Database-style id, unique across pipelines.
    pub(crate) id: i64,
    /// Job name.
    pub(crate) name: String,
    /// Whether new builds are held back.
    pub(crate) paused: bool,
    /// Whether manual triggers are refused.
    pub(crate) disable_manual_trigger: bool,
    /// What builds of this job run.
    pub(crate) script: Arc<Script>,
    /// Number of builds created so far (the next build is named `count + 1`).
    pub(crate) build_count: u64,
    /// Indexes (into [`WorldState::builds`]) of this job's builds, oldest first.
    pub(crate) builds: Vec<usize>,
}

/// Status of a build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Pending,
    Started,
    Succeeded,
    Failed,
    Errored,
    Aborted,
}

impl Status {
    /// The Concourse status word.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Started => "started",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Errored => "errored",
            Status::Aborted => "aborted",
        }
    }

    /// True while the build is pending or started.
    pub(crate) fn is_running(self) -> bool {
        matches!(self, Status::Pending | Status::Started)
    }
}

impl From<Outcome> for Status {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Succeeded => Status::Succeeded,
            Outcome::Failed => Status::Failed,
            Outcome::Errored => Status::Errored,
        }
    }
}

/// A build at runtime.
pub(crate) struct BuildState {
    /// Global build id.
    pub(crate) id: i64,
    /// Per-job build number as a string.
    pub(crate) name: String,
    /// Index of the team.
    pub(crate) team: usize,
    /// Index of the pipeline within the team.
    pub(crate) pipeline: usize,
    /// Index of the job within the pipeline.
    pub(crate) job: usize,
    /// Current status.
    pub(crate) status: Status,
    /// The abort flag (also set on finished builds).
    pub(crate) aborted: bool,
    /// Set together with the terminal status event; the event stream then ends.
    pub(crate) completed: bool,
    /// Unix seconds, 0 until started.
    pub(crate) start_time: i64,
    /// Unix seconds, 0 until finished.
    pub(crate) end_time: i64,
    /// Who triggered the build.
    pub(crate) created_by: String,
    /// Stored event envelopes (JSON), index = event id.
    pub(crate) events: Vec<String>,
    /// Bumped after every change to `events` or `completed`.
    pub(crate) changed: watch::Sender<()>,
    /// Tells the runner of a started build to abort.
    abort: watch::Sender<bool>,
}

/// The data of a `log` event (field order as in Go).
#[derive(Serialize)]
struct LogData<'a> {
    time: i64,
    origin: Origin<'a>,
    payload: &'a str,
}

/// The data of an `error` event (field order as in Go).
#[derive(Serialize)]
struct ErrorData<'a> {
    message: &'a str,
    origin: Origin<'a>,
    time: i64,
}

/// The data of a `status` event.
#[derive(Serialize)]
struct StatusData {
    status: &'static str,
    time: i64,
}

/// An event origin.
#[derive(Serialize)]
struct Origin<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'static str>,
}

/// Current Unix time in seconds.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Serializes like Go's `encoding/json`: `<`, `>` and `&` are escaped as `\u003c` etc.
///
/// Those characters can only occur inside JSON strings, so replacing them in the output is safe.
pub(crate) fn go_json<T: Serialize + ?Sized>(value: &T) -> Result<String, serde_json::Error> {
    let text = serde_json::to_string(value)?;
    if !text.contains(['<', '>', '&', '\u{2028}', '\u{2029}']) {
        return Ok(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Quotes a string as a JSON string literal.
fn json_str(s: &str) -> String {
    go_json(s).unwrap_or_else(|_| String::from("\"\""))
}

impl Shared {
    /// Builds the runtime state from a world description.
    pub(crate) fn new(world: World, external_url: String) -> Self {
        let mut pipeline_id = 0;
        let mut job_id = 0;
        let teams = world
            .teams
            .into_iter()
            .map(|team| TeamState {
                name: team.name,
                pipelines: team
                    .pipelines
                    .into_iter()
                    .map(|p| {
                        pipeline_id += 1;
                        PipelineState {
                            id: pipeline_id,
                            name: p.name,
                            instance_vars: p.instance_vars.filter(|v| !v.is_empty()),
                            paused: p.paused,
                            archived: p.archived,
                            public: p.public,
                            jobs: p
                                .jobs
                                .into_iter()
                                .map(|j| {
                                    job_id += 1;
                                    JobState {
                                        id: job_id,
                                        name: j.name,
                                        paused: j.paused,
                                        disable_manual_trigger: j.disable_manual_trigger,
                                        script: Arc::new(j.script),
                                        build_count: 0,
                                        builds: Vec::new(),
                                    }
                                })
                                .collect(),
                        }
                    })
                    .collect(),
            })
            .collect();
        let mut clients = vec![("fly".to_owned(), "Zmx5".to_owned())];
        clients.extend(world.extra_clients);
        Shared {
            token_ttl: world.token_ttl,
            scheduler_tick: world.scheduler_tick.max(Duration::from_millis(1)),
            abort_delay: world.abort_delay,
            users: world.users,
            clients,
            external_url,
            world: Mutex::new(WorldState {
                teams,
                builds: Vec::new(),
                first_build_id: world.first_build_id,
                pending: Vec::new(),
            }),
            tokens: Mutex::new(HashMap::new()),
            trigger_requests: AtomicUsize::new(0),
            logins: AtomicUsize::new(0),
            event_stream_requests: AtomicUsize::new(0),
            shutdown: CancellationToken::new(),
        }
    }

    /// Locks the world. A panic while holding the lock cannot leave it half-updated in a way
    /// that matters for a simulator, so poisoning is ignored.
    pub(crate) fn lock(&self) -> MutexGuard<'_, WorldState> {
        self.world.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Locks the token store (poisoning ignored, as for [`Shared::lock`]).
    pub(crate) fn lock_tokens(&self) -> MutexGuard<'_, HashMap<String, Grant>> {
        self.tokens.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The highest role `username` has on `team`.
    pub(crate) fn user_role(&self, username: &str, team: &str) -> Option<Role> {
        self.users
            .iter()
            .filter(|u| u.username == username)
            .flat_map(|u| u.roles.iter())
            .filter(|(t, _)| t == team)
            .map(|(_, r)| *r)
            .max_by_key(|r| r.rank())
    }
}

impl WorldState {
    /// Index of the team called `name`.
    pub(crate) fn team(&self, name: &str) -> Option<usize> {
        self.teams.iter().position(|t| t.name == name)
    }

    /// Index of the pipeline `(name, vars)` in team `team`.
    pub(crate) fn pipeline(
        &self,
        team: usize,
        name: &str,
        vars: Option<&Map<String, Value>>,
    ) -> Option<usize> {
        let vars = vars.filter(|v| !v.is_empty());
        self.teams
            .get(team)?
            .pipelines
            .iter()
            .position(|p| p.name == name && p.instance_vars.as_ref() == vars)
    }

    /// The pipeline at `(team, pipeline)`.
    pub(crate) fn pipeline_state(&self, team: usize, pipeline: usize) -> Option<&PipelineState> {
        self.teams.get(team)?.pipelines.get(pipeline)
    }

    /// The job at `(team, pipeline, job)`.
    pub(crate) fn job(&self, team: usize, pipeline: usize, job: usize) -> Option<&JobState> {
        self.pipeline_state(team, pipeline)?.jobs.get(job)
    }

    /// Index of the build with global id `id`.
    pub(crate) fn build_index(&self, id: i64) -> Option<usize> {
        let offset = id.checked_sub(self.first_build_id)?;
        let index = usize::try_from(offset).ok()?;
        (index < self.builds.len()).then_some(index)
    }

    /// The pipeline a build belongs to.
    pub(crate) fn build_pipeline(&self, build: &BuildState) -> Option<&PipelineState> {
        self.teams.get(build.team)?.pipelines.get(build.pipeline)
    }

    /// Creates a pending build of a job and returns its index.
    pub(crate) fn create_build(
        &mut self,
        team: usize,
        pipeline: usize,
        job: usize,
        created_by: &str,
    ) -> Option<usize> {
        let index = self.builds.len();
        let id = self
            .first_build_id
            .checked_add(i64::try_from(index).ok()?)?;
        let job_state = self
            .teams
            .get_mut(team)?
            .pipelines
            .get_mut(pipeline)?
            .jobs
            .get_mut(job)?;
        job_state.build_count += 1;
        job_state.builds.push(index);
        let name = job_state.build_count.to_string();
        self.builds.push(BuildState {
            id,
            name,
            team,
            pipeline,
            job,
            status: Status::Pending,
            aborted: false,
            completed: false,
            start_time: 0,
            end_time: 0,
            created_by: created_by.to_owned(),
            events: Vec::new(),
            changed: watch::channel(()).0,
            abort: watch::channel(false).0,
        });
        self.pending.push(index);
        Some(index)
    }

    /// Sets the abort flag of a build; a started build's runner is told to stop.
    pub(crate) fn abort(&mut self, index: usize) {
        if let Some(build) = self.builds.get_mut(index) {
            build.aborted = true;
            if build.status == Status::Started {
                build.abort.send_replace(true);
            }
        }
    }

    /// Appends an event to a build and wakes its readers.
    fn emit(&mut self, index: usize, event: &str, version: &str, data: &str) {
        let Some(build) = self.builds.get_mut(index) else {
            return;
        };
        let id = build.events.len();
        build.events.push(format!(
            "{{\"data\":{data},\"event\":{},\"version\":{},\"event_id\":\"{id}\"}}",
            json_str(event),
            json_str(version),
        ));
        build.changed.send_replace(());
    }

    /// Emits a `status` event.
    fn emit_status(&mut self, index: usize, status: Status) {
        let data = StatusData {
            status: status.as_str(),
            time: unix_now(),
        };
        let data = go_json(&data).unwrap_or_else(|_| String::from("{}"));
        self.emit(index, "status", "1.0", &data);
    }

    /// Emits an `error` event.
    fn emit_error(&mut self, index: usize, origin: &str, message: &str) {
        let data = ErrorData {
            message,
            origin: Origin {
                id: origin,
                source: None,
            },
            time: unix_now(),
        };
        let data = go_json(&data).unwrap_or_else(|_| String::from("{}"));
        self.emit(index, "error", "4.1", &data);
    }

    /// Emits the event of a script step (sleeps emit nothing).
    fn emit_step(&mut self, index: usize, step: &Step) {
        match step {
            Step::Log {
                origin,
                source,
                chunk,
            } => {
                let data = LogData {
                    time: unix_now(),
                    origin: Origin {
                        id: origin,
                        source: Some(source.as_str()),
                    },
                    payload: chunk,
                };
                let data = go_json(&data).unwrap_or_else(|_| String::from("{}"));
                self.emit(index, "log", "5.1", &data);
            }
            Step::Error { origin, message } => self.emit_error(index, origin, message),
            Step::Raw {
                event,
                version,
                data,
            } => {
                let mut data = data.clone();
                if let Some(time) = data.as_object_mut().and_then(|o| o.get_mut("time"))
                    && time.is_null()
                {
                    *time = Value::from(unix_now());
                }
                let data = go_json(&data).unwrap_or_else(|_| String::from("null"));
                self.emit(index, event, version, &data);
            }
            Step::Sleep(_) => {}
        }
    }

    /// Moves a build to `started` and returns what its runner needs.
    fn start(&mut self, index: usize) -> Option<(Arc<Script>, watch::Receiver<bool>)> {
        let (team, pipeline, job) = {
            let build = self.builds.get(index)?;
            (build.team, build.pipeline, build.job)
        };
        let script = self
            .teams
            .get(team)?
            .pipelines
            .get(pipeline)?
            .jobs
            .get(job)?
            .script
            .clone();
        let build = self.builds.get_mut(index)?;
        build.status = Status::Started;
        build.start_time = unix_now();
        let abort = build.abort.subscribe();
        self.emit_status(index, Status::Started);
        Some((script, abort))
    }

    /// Writes the terminal status, marks the build completed and wakes readers.
    fn finish(&mut self, index: usize, status: Status) {
        let Some(build) = self.builds.get_mut(index) else {
            return;
        };
        if build.completed {
            return;
        }
        build.status = status;
        build.end_time = unix_now();
        build.completed = true;
        // The status event and `completed` become visible together: readers re-read both
        // under the lock after the wake-up that `emit` sends.
        self.emit_status(index, status);
    }

    /// One scheduler pass: finalizes aborted pending builds and starts the others unless their
    /// job or pipeline is paused. Returns the builds to run.
    fn schedule(&mut self) -> Vec<(usize, Arc<Script>, watch::Receiver<bool>)> {
        let pending = std::mem::take(&mut self.pending);
        let mut to_run = Vec::new();
        for index in pending {
            let Some(build) = self.builds.get(index) else {
                continue;
            };
            if build.aborted {
                self.finish(index, Status::Aborted);
                continue;
            }
            let paused = self
                .teams
                .get(build.team)
                .and_then(|t| t.pipelines.get(build.pipeline))
                .is_none_or(|p| p.paused || p.jobs.get(build.job).is_none_or(|j| j.paused));
            if paused {
                self.pending.push(index);
            } else if let Some((script, abort)) = self.start(index) {
                to_run.push((index, script, abort));
            }
        }
        to_run
    }
}

/// Starts pending builds every tick until shutdown.
pub(crate) async fn scheduler(shared: Arc<Shared>) {
    let mut interval = tokio::time::interval(shared.scheduler_tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let to_run = shared.lock().schedule();
        for (index, script, abort) in to_run {
            tokio::spawn(run_build(shared.clone(), index, script, abort));
        }
    }
}

/// Resolves once the abort flag is set (never if the sender is gone).
async fn aborted(abort: &mut watch::Receiver<bool>) {
    if abort.wait_for(|a| *a).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Runs a started build's script, then writes its terminal status.
async fn run_build(
    shared: Arc<Shared>,
    index: usize,
    script: Arc<Script>,
    mut abort: watch::Receiver<bool>,
) {
    let mut origin = DEFAULT_ORIGIN.to_owned();
    let mut was_aborted = false;
    for step in &script.steps {
        if *abort.borrow() {
            was_aborted = true;
            break;
        }
        if let Step::Sleep(duration) = step {
            tokio::select! {
                () = tokio::time::sleep(*duration) => {}
                () = aborted(&mut abort) => {
                    was_aborted = true;
                    break;
                }
                () = shared.shutdown.cancelled() => return,
            }
        } else {
            if let Some(o) = step.origin() {
                o.clone_into(&mut origin);
            }
            shared.lock().emit_step(index, step);
        }
    }
    if was_aborted || *abort.borrow() {
        tokio::select! {
            () = tokio::time::sleep(shared.abort_delay) => {}
            () = shared.shutdown.cancelled() => return,
        }
        let mut world = shared.lock();
        world.emit_error(index, &origin, "interrupted");
        world.finish(index, Status::Aborted);
    } else {
        shared.lock().finish(index, script.outcome.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_json_escapes_html_characters() {
        assert_eq!(
            go_json("a<b>&c").ok().as_deref(),
            Some("\"a\\u003cb\\u003e\\u0026c\"")
        );
        assert_eq!(go_json("plain").ok().as_deref(), Some("\"plain\""));
    }
}
