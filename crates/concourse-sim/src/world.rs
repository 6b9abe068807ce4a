//! The simulated world: users, clients, teams, pipelines, jobs and the scripts their builds run.
//!
//! Everything here is plain data with builder methods. A [`World`] is handed to
//! [`Simulator::start`](crate::Simulator::start), which copies it into its own state; later
//! changes (pauses, builds) happen inside the running simulator.

use std::time::Duration;

use serde_json::{Map, Value, json};

/// The plan id used as the log origin when a script never names one.
pub const DEFAULT_ORIGIN: &str = "64a1b2c3";

/// Everything the simulator serves, plus its timing knobs.
#[derive(Debug, Clone)]
pub struct World {
    /// How long an access token stays valid (`--auth-duration`, 24 h in Concourse).
    /// Sub-second values work; `expires_in` is reported in whole seconds, at least 1.
    pub token_ttl: Duration,
    /// Period of the scheduler that starts pending builds and finalizes aborted pending builds.
    pub scheduler_tick: Duration,
    /// How long a started build takes to notice an abort before it emits `interrupted`.
    pub abort_delay: Duration,
    /// The id of the first build created; later builds count up from it.
    pub first_build_id: i64,
    /// Local users (`--add-local-user`) and their team roles.
    pub users: Vec<User>,
    /// OAuth clients accepted besides the built-in `fly`/`Zmx5` (`--add-client id:secret`).
    pub extra_clients: Vec<(String, String)>,
    /// Teams with their pipelines.
    pub teams: Vec<Team>,
}

/// A local user that can log in with the password grant.
#[derive(Debug, Clone)]
pub struct User {
    /// Login name; also the `created_by` of the builds this user triggers.
    pub username: String,
    /// Password for the password grant.
    pub password: String,
    /// `(team, role)` pairs. Owner of `main` makes the user an admin.
    pub roles: Vec<(String, Role)>,
}

/// A team role. Each role includes the rights of the roles after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything, including team administration.
    Owner,
    /// Everything a pipeline operator can do, plus setting pipelines.
    Member,
    /// Trigger, abort, pause and unpause.
    PipelineOperator,
    /// Read-only access.
    Viewer,
}

impl Role {
    /// The role's name as Concourse writes it (`owner`, `member`, `pipeline-operator`, `viewer`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Member => "member",
            Role::PipelineOperator => "pipeline-operator",
            Role::Viewer => "viewer",
        }
    }

    /// A rank where a higher number means more rights.
    pub(crate) fn rank(self) -> u8 {
        match self {
            Role::Owner => 4,
            Role::Member => 3,
            Role::PipelineOperator => 2,
            Role::Viewer => 1,
        }
    }

    /// True if this role includes all rights of `needed`.
    pub fn includes(self, needed: Role) -> bool {
        self.rank() >= needed.rank()
    }
}

/// A team and its pipelines.
#[derive(Debug, Clone)]
pub struct Team {
    /// Team name as used in URLs.
    pub name: String,
    /// The team's pipelines (instances of one name are separate entries).
    pub pipelines: Vec<Pipeline>,
}

/// A pipeline, or one instance of an instanced pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// Pipeline name.
    pub name: String,
    /// Instance vars; `None` (or an empty map) for an ordinary pipeline.
    pub instance_vars: Option<Map<String, Value>>,
    /// Paused pipelines accept triggers but their builds stay `pending`.
    pub paused: bool,
    /// Archived pipelines refuse triggers with 409.
    pub archived: bool,
    /// Public pipelines can be read anonymously (not their build events).
    pub public: bool,
    /// The pipeline's jobs.
    pub jobs: Vec<Job>,
}

/// A job and the script its builds run.
#[derive(Debug, Clone)]
pub struct Job {
    /// Job name.
    pub name: String,
    /// Paused jobs accept triggers but their builds stay `pending`.
    pub paused: bool,
    /// Manual triggers are refused with an empty 409.
    pub disable_manual_trigger: bool,
    /// What every build of this job does once started.
    pub script: Script,
}

/// The scripted run of a build: events and delays, then a final status.
#[derive(Debug, Clone)]
pub struct Script {
    /// Steps, executed in order once the build starts.
    pub steps: Vec<Step>,
    /// The terminal status when every step ran without an abort.
    pub outcome: Outcome,
}

/// One step of a [`Script`].
#[derive(Debug, Clone)]
pub enum Step {
    /// A `log` event carrying `chunk` verbatim (chunks need not end at a line boundary).
    Log {
        /// Plan id of the step that logs, e.g. `64a1b2c3`.
        origin: String,
        /// Stream the chunk came from.
        source: Source,
        /// The text of the chunk.
        chunk: String,
    },
    /// Wait before the next step (an abort cuts the wait short).
    Sleep(Duration),
    /// An `error` event.
    Error {
        /// Plan id of the failing step.
        origin: String,
        /// Error message, e.g. `timeout exceeded`.
        message: String,
    },
    /// Any event, emitted as given. A `"time": null` in an object payload is replaced by the
    /// current Unix time when the event is emitted.
    Raw {
        /// The event type, e.g. `initialize-task` or something unknown.
        event: String,
        /// The event version, e.g. `4.0`.
        version: String,
        /// The event payload (the envelope's `data`).
        data: Value,
    },
}

/// Which output stream a log chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Source {
    /// `stdout` or `stderr`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Stdout => "stdout",
            Source::Stderr => "stderr",
        }
    }
}

/// The terminal status of a build that was not aborted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `succeeded`.
    Succeeded,
    /// `failed` (a task exited non-zero).
    Failed,
    /// `errored` (an infrastructure or configuration error).
    Errored,
}

impl Outcome {
    /// The Concourse status word.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Errored => "errored",
        }
    }
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

impl World {
    /// Username of the user in [`World::new`].
    pub const ADMIN_USERNAME: &'static str = "admin";
    /// Password of the user in [`World::new`].
    pub const ADMIN_PASSWORD: &'static str = "admin-password";
    /// Username of the user in [`World::example`].
    pub const EXAMPLE_USERNAME: &'static str = "gateway";
    /// Password of the user in [`World::example`].
    pub const EXAMPLE_PASSWORD: &'static str = "gateway-password";

    /// A world with sane defaults: token TTL 24 h, scheduler tick 50 ms, abort delay 50 ms,
    /// first build id 1, an empty team `main`, and user `admin`/`admin-password` owning `main`.
    pub fn new() -> Self {
        World {
            token_ttl: Duration::from_secs(24 * 60 * 60),
            scheduler_tick: Duration::from_millis(50),
            abort_delay: Duration::from_millis(50),
            first_build_id: 1,
            users: vec![
                User::new(Self::ADMIN_USERNAME, Self::ADMIN_PASSWORD).role("main", Role::Owner),
            ],
            extra_clients: Vec::new(),
            teams: vec![Team::new("main")],
        }
    }

    /// Sets the access token lifetime.
    pub fn token_ttl(mut self, ttl: Duration) -> Self {
        self.token_ttl = ttl;
        self
    }

    /// Sets the scheduler period.
    pub fn scheduler_tick(mut self, tick: Duration) -> Self {
        self.scheduler_tick = tick;
        self
    }

    /// Sets how long a started build takes to react to an abort.
    pub fn abort_delay(mut self, delay: Duration) -> Self {
        self.abort_delay = delay;
        self
    }

    /// Sets the id of the first build.
    pub fn first_build_id(mut self, id: i64) -> Self {
        self.first_build_id = id;
        self
    }

    /// Adds a user.
    pub fn user(mut self, user: User) -> Self {
        self.users.push(user);
        self
    }

    /// Accepts another OAuth client at the token endpoint.
    pub fn client(mut self, id: impl Into<String>, secret: impl Into<String>) -> Self {
        self.extra_clients.push((id.into(), secret.into()));
        self
    }

    /// Adds a team; if a team of that name exists, its pipelines are appended to it.
    pub fn team(mut self, team: Team) -> Self {
        match self.teams.iter_mut().find(|t| t.name == team.name) {
            Some(existing) => existing.pipelines.extend(team.pipelines),
            None => self.teams.push(team),
        }
        self
    }

    /// Adds a pipeline to team `main` (creating the team if needed).
    pub fn pipeline(self, pipeline: Pipeline) -> Self {
        self.team(Team::new("main").pipeline(pipeline))
    }

    /// The world used by `ci-gateway dev` and the `concourse-sim` binary.
    ///
    /// Team `main`; users `gateway`/`gateway-password` (member), `auditor`/`auditor-password`
    /// (viewer) and `admin`/`admin-password` (owner). Pipelines:
    /// - `payments`: `build-test` succeeds after about 3 s with a compiler and test log;
    ///   `deploy` fails after about 2 s; `release` has `disable_manual_trigger`.
    /// - `integration`: job `integration` prints a progress line every 1.5 s for 90 s.
    /// - `docs`: job `publish` is paused (builds stay pending until unpaused).
    /// - `preview` with instance vars `{"branch":"main"}`: job `smoke` succeeds in about 1 s.
    /// - `legacy-monolith`: archived.
    pub fn example() -> Self {
        crate::example::world()
    }
}

impl User {
    /// A user without roles.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        User {
            username: username.into(),
            password: password.into(),
            roles: Vec::new(),
        }
    }

    /// Gives the user `role` on `team`.
    pub fn role(mut self, team: impl Into<String>, role: Role) -> Self {
        self.roles.push((team.into(), role));
        self
    }
}

impl Team {
    /// A team without pipelines.
    pub fn new(name: impl Into<String>) -> Self {
        Team {
            name: name.into(),
            pipelines: Vec::new(),
        }
    }

    /// Adds a pipeline.
    pub fn pipeline(mut self, pipeline: Pipeline) -> Self {
        self.pipelines.push(pipeline);
        self
    }
}

impl Pipeline {
    /// An unpaused, unarchived, private pipeline without jobs or instance vars.
    pub fn new(name: impl Into<String>) -> Self {
        Pipeline {
            name: name.into(),
            instance_vars: None,
            paused: false,
            archived: false,
            public: false,
            jobs: Vec::new(),
        }
    }

    /// Adds a job.
    pub fn job(mut self, job: Job) -> Self {
        self.jobs.push(job);
        self
    }

    /// Adds an instance var (a top-level key), making this a pipeline instance.
    pub fn instance_var(mut self, key: impl Into<String>, value: Value) -> Self {
        self.instance_vars
            .get_or_insert_with(Map::new)
            .insert(key.into(), value);
        self
    }

    /// Sets `paused`.
    pub fn paused(mut self, paused: bool) -> Self {
        self.paused = paused;
        self
    }

    /// Sets `archived`.
    pub fn archived(mut self, archived: bool) -> Self {
        self.archived = archived;
        self
    }

    /// Sets `public`.
    pub fn public(mut self, public: bool) -> Self {
        self.public = public;
        self
    }
}

impl Job {
    /// An unpaused, manually triggerable job.
    pub fn new(name: impl Into<String>, script: Script) -> Self {
        Job {
            name: name.into(),
            paused: false,
            disable_manual_trigger: false,
            script,
        }
    }

    /// Sets `paused`.
    pub fn paused(mut self, paused: bool) -> Self {
        self.paused = paused;
        self
    }

    /// Sets `disable_manual_trigger`.
    pub fn disable_manual_trigger(mut self, disabled: bool) -> Self {
        self.disable_manual_trigger = disabled;
        self
    }
}

impl Default for Script {
    fn default() -> Self {
        Self::new()
    }
}

impl Script {
    /// An empty script that succeeds.
    ///
    /// The builder methods that take no origin (`log_out`, `log_err`, `error`, `finish_task`)
    /// use the *current origin*: the origin of the last step that has one, or
    /// [`DEFAULT_ORIGIN`]. `start_task`/`start_get` switch it.
    pub fn new() -> Self {
        Script {
            steps: Vec::new(),
            outcome: Outcome::Succeeded,
        }
    }

    /// The origin the next origin-less builder call will use.
    pub fn current_origin(&self) -> &str {
        self.steps
            .iter()
            .rev()
            .find_map(Step::origin)
            .unwrap_or(DEFAULT_ORIGIN)
    }

    /// Appends any step.
    pub fn step(mut self, step: Step) -> Self {
        self.steps.push(step);
        self
    }

    /// Logs `chunk` to stdout of the current origin.
    pub fn log_out(self, chunk: impl Into<String>) -> Self {
        let origin = self.current_origin().to_owned();
        self.log(origin, Source::Stdout, chunk)
    }

    /// Logs `chunk` to stderr of the current origin.
    pub fn log_err(self, chunk: impl Into<String>) -> Self {
        let origin = self.current_origin().to_owned();
        self.log(origin, Source::Stderr, chunk)
    }

    /// Logs `chunk` for an explicit origin and stream.
    pub fn log(self, origin: impl Into<String>, source: Source, chunk: impl Into<String>) -> Self {
        self.step(Step::Log {
            origin: origin.into(),
            source,
            chunk: chunk.into(),
        })
    }

    /// Waits.
    pub fn sleep(self, duration: Duration) -> Self {
        self.step(Step::Sleep(duration))
    }

    /// Emits an `error` event for the current origin.
    pub fn error(self, message: impl Into<String>) -> Self {
        let origin = self.current_origin().to_owned();
        self.step(Step::Error {
            origin,
            message: message.into(),
        })
    }

    /// Emits an arbitrary event (for testing tolerance of unknown types and versions).
    pub fn raw(self, event: impl Into<String>, version: impl Into<String>, data: Value) -> Self {
        self.step(Step::Raw {
            event: event.into(),
            version: version.into(),
            data,
        })
    }

    /// Emits `initialize-task` (4.0) and `start-task` (5.0) for `origin`, making it current.
    pub fn start_task(self, origin: impl Into<String>) -> Self {
        let origin = origin.into();
        let config = json!({
            "platform": "linux",
            "image": "",
            "run": {"path": "sh", "args": ["-exc", "./ci/run"], "dir": ""},
            "inputs": [{"name": "source", "path": ""}],
        });
        self.raw(
            "initialize-task",
            "4.0",
            json!({"time": null, "origin": {"id": origin}, "config": config}),
        )
        .raw(
            "start-task",
            "5.0",
            json!({"time": null, "origin": {"id": origin}, "config": config}),
        )
    }

    /// Emits `finish-task` (4.0) with `exit_status` for the current origin.
    pub fn finish_task(self, exit_status: i32) -> Self {
        let origin = self.current_origin().to_owned();
        self.raw(
            "finish-task",
            "4.0",
            json!({"time": null, "exit_status": exit_status, "origin": {"id": origin}}),
        )
    }

    /// Emits `initialize-get` (2.0) and `start-get` (1.0) for `origin`, making it current.
    pub fn start_get(self, origin: impl Into<String>) -> Self {
        let origin = origin.into();
        self.raw(
            "initialize-get",
            "2.0",
            json!({"origin": {"id": origin}, "time": null}),
        )
        .raw(
            "start-get",
            "1.0",
            json!({"origin": {"id": origin}, "time": null}),
        )
    }

    /// Emits `finish-get` (5.1) with exit status 0 and `version` for the current origin.
    pub fn finish_get(self, version: Value) -> Self {
        let origin = self.current_origin().to_owned();
        self.raw(
            "finish-get",
            "5.1",
            json!({"origin": {"id": origin}, "time": null, "exit_status": 0, "version": version}),
        )
    }

    /// Ends with `succeeded`.
    pub fn succeed(mut self) -> Self {
        self.outcome = Outcome::Succeeded;
        self
    }

    /// Ends with `failed`.
    pub fn fail(mut self) -> Self {
        self.outcome = Outcome::Failed;
        self
    }

    /// Ends with `errored`.
    pub fn errored(mut self) -> Self {
        self.outcome = Outcome::Errored;
        self
    }
}

impl Step {
    /// The plan id this step belongs to, if it names one.
    pub fn origin(&self) -> Option<&str> {
        match self {
            Step::Log { origin, .. } | Step::Error { origin, .. } => Some(origin),
            Step::Sleep(_) => None,
            Step::Raw { data, .. } => data.get("origin")?.get("id")?.as_str(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_tracks_the_current_origin() {
        let script = Script::new()
            .log_out("a")
            .start_task("aaaa1111")
            .log_err("b")
            .finish_task(1)
            .fail();
        assert_eq!(script.outcome, Outcome::Failed);
        assert_eq!(script.steps[0].origin(), Some(DEFAULT_ORIGIN));
        assert_eq!(script.steps[3].origin(), Some("aaaa1111"));
        assert_eq!(script.steps[4].origin(), Some("aaaa1111"));
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Owner.includes(Role::PipelineOperator));
        assert!(Role::Member.includes(Role::Member));
        assert!(!Role::Viewer.includes(Role::PipelineOperator));
        assert!(!Role::PipelineOperator.includes(Role::Member));
    }

    #[test]
    fn team_merges_pipelines_into_an_existing_team() {
        let world = World::new().pipeline(Pipeline::new("p"));
        assert_eq!(world.teams.len(), 1);
        assert_eq!(world.teams[0].pipelines.len(), 1);
    }
}
