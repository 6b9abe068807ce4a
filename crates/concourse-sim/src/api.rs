//! `/api/v1` handlers other than the event stream, and the JSON shapes they return.
//!
//! Check order follows the ATC's wrappers: malformed input (400), then lookups (404), then the
//! archived check (409) on write routes, then authentication (401) and roles (403), then the
//! handler's own lookups and refusals.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::auth::Caller;
use crate::http::{ApiError, CONCOURSE_VERSION, PipelineRef, empty, json, segments};
use crate::state::{BuildState, PipelineState, Shared, WorldState};
use crate::world::Role;

/// `Build` (`atc/build.go`): zero times and empty strings are omitted.
#[derive(Serialize)]
pub(crate) struct BuildJson<'a> {
    id: i64,
    team_name: &'a str,
    name: &'a str,
    status: &'static str,
    api_url: String,
    #[serde(skip_serializing_if = "str::is_empty")]
    job_name: &'a str,
    #[serde(skip_serializing_if = "is_zero")]
    pipeline_id: i64,
    #[serde(skip_serializing_if = "str::is_empty")]
    pipeline_name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pipeline_instance_vars: Option<&'a Map<String, Value>>,
    #[serde(skip_serializing_if = "is_zero")]
    start_time: i64,
    #[serde(skip_serializing_if = "is_zero")]
    end_time: i64,
    #[serde(skip_serializing_if = "str::is_empty")]
    created_by: &'a str,
}

/// `BuildSummary` (`atc/summary.go`), used inside `JobSummary`.
#[derive(Serialize)]
struct BuildSummaryJson<'a> {
    id: i64,
    name: &'a str,
    status: &'static str,
    #[serde(skip_serializing_if = "is_zero")]
    start_time: i64,
    #[serde(skip_serializing_if = "is_zero")]
    end_time: i64,
    team_name: &'a str,
    pipeline_id: i64,
    pipeline_name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pipeline_instance_vars: Option<&'a Map<String, Value>>,
    job_name: &'a str,
}

/// `Job` (`atc/job.go`) from `GET .../jobs/:job`.
#[derive(Serialize)]
struct JobJson<'a> {
    id: i64,
    name: &'a str,
    team_name: &'a str,
    pipeline_id: i64,
    pipeline_name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pipeline_instance_vars: Option<&'a Map<String, Value>>,
    #[serde(skip_serializing_if = "is_false")]
    paused: bool,
    #[serde(skip_serializing_if = "is_false")]
    disable_manual_trigger: bool,
    next_build: Option<BuildJson<'a>>,
    finished_build: Option<BuildJson<'a>>,
}

/// `JobSummary` (`atc/summary.go`) from `GET .../jobs`: no `disable_manual_trigger`.
#[derive(Serialize)]
struct JobSummaryJson<'a> {
    id: i64,
    name: &'a str,
    team_name: &'a str,
    pipeline_id: i64,
    pipeline_name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pipeline_instance_vars: Option<&'a Map<String, Value>>,
    #[serde(skip_serializing_if = "is_false")]
    paused: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_build: Option<BuildSummaryJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finished_build: Option<BuildSummaryJson<'a>>,
}

/// `Pipeline` (`atc/pipeline.go`).
#[derive(Serialize)]
struct PipelineJson<'a> {
    id: i64,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    instance_vars: Option<&'a Map<String, Value>>,
    paused: bool,
    public: bool,
    archived: bool,
    team_name: &'a str,
}

/// `Info` (`atc/info.go`).
#[derive(Serialize)]
struct InfoJson<'a> {
    version: &'static str,
    worker_version: &'static str,
    feature_flags: Map<String, Value>,
    external_url: &'a str,
    cluster_name: &'static str,
}

/// `UserInfo` (`atc/user.go`).
#[derive(Serialize)]
struct UserJson<'a> {
    sub: String,
    name: &'a str,
    user_id: &'a str,
    user_name: &'a str,
    email: String,
    is_admin: bool,
    is_system: bool,
    teams: Map<String, Value>,
    connector: &'static str,
    display_user_id: &'a str,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Presents a build.
pub(crate) fn build_json<'a>(world: &'a WorldState, build: &'a BuildState) -> BuildJson<'a> {
    let team = world.teams.get(build.team);
    let pipeline = world.build_pipeline(build);
    let job = pipeline.and_then(|p| p.jobs.get(build.job));
    BuildJson {
        id: build.id,
        team_name: team.map_or("", |t| t.name.as_str()),
        name: &build.name,
        status: build.status.as_str(),
        api_url: format!("/api/v1/builds/{}", build.id),
        job_name: job.map_or("", |j| j.name.as_str()),
        pipeline_id: pipeline.map_or(0, |p| p.id),
        pipeline_name: pipeline.map_or("", |p| p.name.as_str()),
        pipeline_instance_vars: pipeline.and_then(|p| p.instance_vars.as_ref()),
        start_time: build.start_time,
        end_time: build.end_time,
        created_by: &build.created_by,
    }
}

fn build_summary_json<'a>(world: &'a WorldState, build: &'a BuildState) -> BuildSummaryJson<'a> {
    let full = build_json(world, build);
    BuildSummaryJson {
        id: full.id,
        name: full.name,
        status: full.status,
        start_time: full.start_time,
        end_time: full.end_time,
        team_name: full.team_name,
        pipeline_id: full.pipeline_id,
        pipeline_name: full.pipeline_name,
        pipeline_instance_vars: full.pipeline_instance_vars,
        job_name: full.job_name,
    }
}

fn pipeline_json<'a>(team: &'a str, p: &'a PipelineState) -> PipelineJson<'a> {
    PipelineJson {
        id: p.id,
        name: &p.name,
        instance_vars: p.instance_vars.as_ref(),
        paused: p.paused,
        public: p.public,
        archived: p.archived,
        team_name: team,
    }
}

/// The oldest running build and the newest finished build of a job.
fn next_and_finished(
    world: &WorldState,
    team: usize,
    pipeline: usize,
    job: usize,
) -> (Option<&BuildState>, Option<&BuildState>) {
    let Some(job) = world.job(team, pipeline, job) else {
        return (None, None);
    };
    let mut builds = job.builds.iter().filter_map(|i| world.builds.get(*i));
    let next = builds.clone().find(|b| b.status.is_running());
    let finished = builds.rfind(|b| !b.status.is_running());
    (next, finished)
}

/// A resolved `/api/v1/teams/:team/pipelines/:pipeline...` request.
struct Target {
    /// The parsed path and vars.
    pref: PipelineRef,
    /// Who is calling.
    caller: Caller,
    /// Team index.
    team: usize,
    /// Pipeline index within the team.
    pipeline: usize,
}

impl Target {
    /// Parses and looks up the pipeline: 400 for bad vars, 404 for an unknown team or pipeline.
    fn resolve(
        shared: &Shared,
        world: &WorldState,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<Target, ApiError> {
        let pref = PipelineRef::parse(uri).map_err(|_| ApiError::BadRequest)?;
        let team = world.team(&pref.team).ok_or(ApiError::NotFound)?;
        let pipeline = world
            .pipeline(team, &pref.pipeline, pref.vars.as_ref())
            .ok_or(ApiError::NotFound)?;
        let caller = Caller::from_headers(shared, headers);
        Ok(Target {
            pref,
            caller,
            team,
            pipeline,
        })
    }

    /// A read route: then 401 for an invalid token, and public-or-viewer.
    fn read(
        shared: &Shared,
        world: &WorldState,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<Target, ApiError> {
        let target = Self::resolve(shared, world, uri, headers)?;
        if target.caller == Caller::Invalid {
            return Err(ApiError::Unauthorized);
        }
        let public = world
            .pipeline_state(target.team, target.pipeline)
            .is_some_and(|p| p.public);
        if !public {
            target
                .caller
                .require(shared, &target.pref.team, Role::Viewer)?;
        }
        Ok(target)
    }

    /// A write route: then 409 if archived (still before auth), then pipeline-operator.
    fn write(
        shared: &Shared,
        world: &WorldState,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<Target, ApiError> {
        let target = Self::resolve(shared, world, uri, headers)?;
        if world
            .pipeline_state(target.team, target.pipeline)
            .is_some_and(|p| p.archived)
        {
            return Err(ApiError::Archived);
        }
        target
            .caller
            .require(shared, &target.pref.team, Role::PipelineOperator)?;
        Ok(target)
    }

    /// Index of the job named in the path, or 404.
    fn job(&self, world: &WorldState) -> Result<usize, ApiError> {
        let name = self.pref.job.as_deref().unwrap_or("");
        world
            .pipeline_state(self.team, self.pipeline)
            .and_then(|p| p.jobs.iter().position(|j| j.name == name))
            .ok_or(ApiError::NotFound)
    }
}

/// `GET /api/v1/info`.
pub(crate) async fn info(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if Caller::from_headers(&shared, &headers) == Caller::Invalid {
        return Err(ApiError::Unauthorized);
    }
    Ok(json(
        StatusCode::OK,
        &InfoJson {
            version: CONCOURSE_VERSION,
            worker_version: "3.0",
            feature_flags: Map::new(),
            external_url: &shared.external_url,
            cluster_name: "concourse-sim",
        },
    ))
}

/// `GET /api/v1/user`.
pub(crate) async fn user(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = Caller::from_headers(&shared, &headers);
    let Caller::User { username, .. } = &caller else {
        return Err(ApiError::Unauthorized);
    };
    let team_names: Vec<String> = shared.lock().teams.iter().map(|t| t.name.clone()).collect();
    let mut teams = Map::new();
    for team in team_names {
        if let Some(role) = caller.role(&shared, &team) {
            teams.insert(team, Value::from(vec![role.as_str()]));
        }
    }
    let is_admin = caller.role(&shared, "main") == Some(Role::Owner);
    Ok(json(
        StatusCode::OK,
        &UserJson {
            sub: format!("local:{username}"),
            name: username,
            user_id: username,
            user_name: username,
            email: format!("{username}@example.com"),
            is_admin,
            is_system: false,
            teams,
            connector: "local",
            display_user_id: username,
        },
    ))
}

/// `GET /api/v1/teams/:team/pipelines`: all pipelines for a team member, only public ones for
/// anyone else (anonymous or without a role: no 401/403 unless the token is invalid).
pub(crate) async fn list_pipelines(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = Caller::from_headers(&shared, &headers);
    if caller == Caller::Invalid {
        return Err(ApiError::Unauthorized);
    }
    let team_name = segments(&uri)
        .and_then(|s| s.get(4).cloned())
        .ok_or(ApiError::BadRequest)?;
    let authorized = caller.role(&shared, &team_name).is_some();
    let world = shared.lock();
    let team = world
        .team(&team_name)
        .and_then(|i| world.teams.get(i))
        .ok_or(ApiError::NotFound)?;
    let list: Vec<PipelineJson<'_>> = team
        .pipelines
        .iter()
        .filter(|p| authorized || p.public)
        .map(|p| pipeline_json(&team.name, p))
        .collect();
    Ok(json(StatusCode::OK, &list))
}

/// `GET .../pipelines/:pipeline`.
pub(crate) async fn get_pipeline(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let world = shared.lock();
    let target = Target::read(&shared, &world, &uri, &headers)?;
    let team = world.teams.get(target.team).ok_or(ApiError::NotFound)?;
    let p = team
        .pipelines
        .get(target.pipeline)
        .ok_or(ApiError::NotFound)?;
    Ok(json(StatusCode::OK, &pipeline_json(&team.name, p)))
}

/// `GET .../pipelines/:pipeline/jobs` (`[]JobSummary`).
pub(crate) async fn list_jobs(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let world = shared.lock();
    let target = Target::read(&shared, &world, &uri, &headers)?;
    let team = world.teams.get(target.team).ok_or(ApiError::NotFound)?;
    let p = team
        .pipelines
        .get(target.pipeline)
        .ok_or(ApiError::NotFound)?;
    let list: Vec<JobSummaryJson<'_>> = p
        .jobs
        .iter()
        .enumerate()
        .map(|(index, j)| {
            let (next, finished) = next_and_finished(&world, target.team, target.pipeline, index);
            JobSummaryJson {
                id: j.id,
                name: &j.name,
                team_name: &team.name,
                pipeline_id: p.id,
                pipeline_name: &p.name,
                pipeline_instance_vars: p.instance_vars.as_ref(),
                paused: j.paused,
                next_build: next.map(|b| build_summary_json(&world, b)),
                finished_build: finished.map(|b| build_summary_json(&world, b)),
            }
        })
        .collect();
    Ok(json(StatusCode::OK, &list))
}

/// `GET .../jobs/:job` (`Job`).
pub(crate) async fn get_job(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let world = shared.lock();
    let target = Target::read(&shared, &world, &uri, &headers)?;
    let job = target.job(&world)?;
    let team = world.teams.get(target.team).ok_or(ApiError::NotFound)?;
    let p = team
        .pipelines
        .get(target.pipeline)
        .ok_or(ApiError::NotFound)?;
    let j = p.jobs.get(job).ok_or(ApiError::NotFound)?;
    let (next, finished) = next_and_finished(&world, target.team, target.pipeline, job);
    Ok(json(
        StatusCode::OK,
        &JobJson {
            id: j.id,
            name: &j.name,
            team_name: &team.name,
            pipeline_id: p.id,
            pipeline_name: &p.name,
            pipeline_instance_vars: p.instance_vars.as_ref(),
            paused: j.paused,
            disable_manual_trigger: j.disable_manual_trigger,
            next_build: next.map(|b| build_json(&world, b)),
            finished_build: finished.map(|b| build_json(&world, b)),
        },
    ))
}

/// `GET .../jobs/:job/builds`: the job's builds, newest first (`?limit=`, default 100; no
/// pagination links).
pub(crate) async fn list_job_builds(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let world = shared.lock();
    let target = Target::read(&shared, &world, &uri, &headers)?;
    let job = target.job(&world)?;
    let limit = uri
        .query()
        .and_then(crate::http::parse_form)
        .and_then(|q| q.get("limit").and_then(|l| l.parse::<usize>().ok()))
        .filter(|l| *l > 0)
        .unwrap_or(100);
    let indexes = world
        .job(target.team, target.pipeline, job)
        .map(|j| j.builds.as_slice())
        .unwrap_or_default();
    let list: Vec<BuildJson<'_>> = indexes
        .iter()
        .rev()
        .take(limit)
        .filter_map(|i| world.builds.get(*i))
        .map(|b| build_json(&world, b))
        .collect();
    Ok(json(StatusCode::OK, &list))
}

/// `POST .../jobs/:job/builds`: creates a pending build (200).
pub(crate) async fn trigger(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    shared.trigger_requests.fetch_add(1, Ordering::Relaxed);
    let mut world = shared.lock();
    let target = Target::write(&shared, &world, &uri, &headers)?;
    let job = target.job(&world)?;
    if world
        .job(target.team, target.pipeline, job)
        .is_some_and(|j| j.disable_manual_trigger)
    {
        return Err(ApiError::ManualTriggerDisabled);
    }
    let index = world
        .create_build(target.team, target.pipeline, job, target.caller.username())
        .ok_or(ApiError::Internal)?;
    let build = world.builds.get(index).ok_or(ApiError::Internal)?;
    tracing::debug!(build_id = build.id, job = ?target.pref.job, "build triggered");
    Ok(json(StatusCode::OK, &build_json(&world, build)))
}

/// Shared body of the pause/unpause routes; `job` selects a job route.
fn set_paused(
    shared: &Shared,
    uri: &Uri,
    headers: &HeaderMap,
    job: bool,
    paused: bool,
) -> Result<Response, ApiError> {
    let mut world = shared.lock();
    let target = Target::write(shared, &world, uri, headers)?;
    let job = if job { Some(target.job(&world)?) } else { None };
    let p = world
        .teams
        .get_mut(target.team)
        .and_then(|t| t.pipelines.get_mut(target.pipeline))
        .ok_or(ApiError::NotFound)?;
    match job.and_then(|j| p.jobs.get_mut(j)) {
        Some(j) => j.paused = paused,
        None => p.paused = paused,
    }
    Ok(empty(StatusCode::OK))
}

/// `PUT .../pipelines/:pipeline/pause`.
pub(crate) async fn pause_pipeline(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    set_paused(&shared, &uri, &headers, false, true)
}

/// `PUT .../pipelines/:pipeline/unpause`.
pub(crate) async fn unpause_pipeline(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    set_paused(&shared, &uri, &headers, false, false)
}

/// `PUT .../jobs/:job/pause`.
pub(crate) async fn pause_job(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    set_paused(&shared, &uri, &headers, true, true)
}

/// `PUT .../jobs/:job/unpause`.
pub(crate) async fn unpause_job(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    set_paused(&shared, &uri, &headers, true, false)
}

/// Finds the build of a `/api/v1/builds/:id...` request: 400 for a non-integer id, 404 for an
/// unknown one. Returns the build index, its team name and whether its pipeline is public.
pub(crate) fn find_build(world: &WorldState, uri: &Uri) -> Result<(usize, String, bool), ApiError> {
    let id = segments(uri)
        .and_then(|s| s.get(4).and_then(|id| id.parse::<i64>().ok()))
        .ok_or(ApiError::BadRequest)?;
    let index = world.build_index(id).ok_or(ApiError::NotFound)?;
    let build = world.builds.get(index).ok_or(ApiError::NotFound)?;
    let team = world
        .teams
        .get(build.team)
        .map(|t| t.name.clone())
        .unwrap_or_default();
    let public = world.build_pipeline(build).is_some_and(|p| p.public);
    Ok((index, team, public))
}

/// `GET /api/v1/builds/:id`: viewer, or anyone if the pipeline is public.
pub(crate) async fn get_build(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let world = shared.lock();
    let (index, team, public) = find_build(&world, &uri)?;
    let caller = Caller::from_headers(&shared, &headers);
    if caller == Caller::Invalid {
        return Err(ApiError::Unauthorized);
    }
    if !public {
        caller.require(&shared, &team, Role::Viewer)?;
    }
    let build = world.builds.get(index).ok_or(ApiError::NotFound)?;
    Ok(json(StatusCode::OK, &build_json(&world, build)))
}

/// `PUT /api/v1/builds/:id/abort`: 204 whenever the build exists and the caller may operate
/// it, also for finished builds (which only get the flag).
pub(crate) async fn abort_build(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let mut world = shared.lock();
    let (index, team, _) = find_build(&world, &uri)?;
    Caller::from_headers(&shared, &headers).require(&shared, &team, Role::PipelineOperator)?;
    world.abort(index);
    tracing::debug!(build_index = index, "build abort requested");
    Ok(empty(StatusCode::NO_CONTENT))
}
