//! The v1 endpoints, except the event stream ([`super::sse`]) and the run listing
//! ([`super::listing`]).
//!
//! Each handler carries its `#[utoipa::path]`: the OpenAPI document is generated from these
//! annotations, and the router is built from the same list ([`super::openapi::api`]). Every
//! `/v1` route but the document itself needs a caller (see [`crate::auth`]).

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use tokio::time::Instant;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::caller::{MaybeCaller, RequestMeta};
use super::error::ApiError;
use super::extract::{JsonBody, PathParam};
use super::views::{ErrorBody, ErrorDetail, HealthStatus, JobList, JobView, RunEnvelope};
use crate::audit::{AuditAction, AuditFilter, Decision, NewAudit, format_time, redact};
use crate::auth::{AuthMethod, Caller, Denial, Scope};
use crate::domain::{IdempotencyKey, JobId, RunId, TenantId};
use crate::runs::TriggerRequest;
use crate::store::RunRecord;

/// `GET /v1/jobs` (scope `jobs:read`): the jobs of the projects the caller may see.
#[utoipa::path(
    get,
    path = "/v1/jobs",
    tag = "jobs",
    summary = "List the jobs",
    description = "Every job of the catalog the caller may see (scope `jobs:read`), by id.",
    responses(
        (status = 200, description = "The catalog.", body = JobList),
        (status = 401, description = "`unauthorized`: missing or bad credentials.", body = ErrorBody),
        (status = 403, description = "`forbidden`: the caller lacks the scope (or the project).", body = ErrorBody),
        (status = 500, description = "`internal`: a bug; details are in the gateway's log.", body = ErrorBody),
        (status = 503, description = "`store_unavailable`: the database does not answer.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(caller))]
pub async fn list_jobs(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<JobList>, ApiError> {
    caller.record_in_span();
    caller.require(Scope::JobsRead)?;
    let jobs: Vec<JobView> = state
        .runs
        .store
        .list_jobs(&caller.tenant)
        .await?
        .into_iter()
        .filter(|j| caller.may_access(&j.project))
        .map(JobView::from)
        .collect();
    Ok(Json(JobList { jobs }))
}

/// The body of `POST /v1/jobs/{job_id}/runs`; it may be omitted (same as `{}`).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerBody {
    /// The job's parameters. No job takes parameters yet: any given is refused with 422.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    parameters: Option<Map<String, Value>>,
    /// An idempotency key (the `Idempotency-Key` header works too; both must agree): 1 to
    /// 255 printable ASCII characters.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 255)]
    idempotency_key: Option<String>,
}

/// Reads the idempotency key from the body or the header; both must agree when both are given.
fn idempotency_key(
    body: Option<String>,
    headers: &HeaderMap,
) -> Result<Option<IdempotencyKey>, ApiError> {
    if headers.get_all("idempotency-key").iter().count() > 1 {
        return Err(ApiError::InvalidRequest(
            "give one Idempotency-Key header".to_owned(),
        ));
    }
    let header = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| {
                    ApiError::InvalidRequest("Idempotency-Key must be printable ASCII".to_owned())
                })?
                .to_owned(),
        ),
    };
    let key = match (body, header) {
        (Some(b), Some(h)) if b != h => {
            return Err(ApiError::InvalidRequest(
                "idempotency_key and the Idempotency-Key header differ".to_owned(),
            ));
        }
        (Some(k), _) | (None, Some(k)) => k,
        (None, None) => return Ok(None),
    };
    IdempotencyKey::parse(&key)
        .map(Some)
        .map_err(|e| ApiError::InvalidRequest(format!("invalid idempotency key: {e}")))
}

/// An id from the path as the audit log keeps it: ids are short, so anything longer is cut
/// (an unauthenticated caller must not be able to write large rows).
fn clip(id: &str) -> String {
    id.chars().take(128).collect()
}

/// The audit row of an attempt, before the decision: who, what, from where.
fn audit_base(caller: &Result<Caller, Denial>, meta: RequestMeta, action: AuditAction) -> NewAudit {
    let (subject, method, tenant) = match caller {
        Ok(c) => (c.subject.clone(), c.method, c.tenant.clone()),
        Err(_) => (
            "anonymous".to_owned(),
            AuthMethod::None,
            TenantId::default_tenant(),
        ),
    };
    NewAudit {
        at: OffsetDateTime::now_utc(),
        tenant_id: tenant,
        caller: subject,
        auth_method: method.as_str().to_owned(),
        action,
        job_id: None,
        run_id: None,
        parameters: Map::new(),
        idempotency_key: None,
        decision: Decision::Allowed,
        reason: None,
        request_id: meta.request_id,
        source_addr: meta.source_addr,
        outcome: None,
    }
}

/// Records a refused attempt and returns the refusal. If the row cannot be written the refusal
/// stands anyway (nothing happened upstream); the failure is logged.
async fn deny(state: &AppState, mut audit: NewAudit, error: ApiError) -> ApiError {
    audit.decision = Decision::Denied;
    audit.reason = Some(error.code().to_owned());
    if let Err(e) = state.runs.store.append_audit(&audit).await {
        tracing::error!(error = %e, "cannot record a refused attempt in the audit log");
    }
    error
}

/// `POST /v1/jobs/{job_id}/runs` (scope `runs:trigger`, and the job's project): 201 with a new
/// run, 200 with the run of an earlier request that had the same idempotency key. Every
/// attempt, allowed or refused, leaves one audit row.
#[utoipa::path(
    post,
    path = "/v1/jobs/{job_id}/runs",
    tag = "runs",
    summary = "Trigger a run of a job",
    description = "Starts a run. With an idempotency key (header or body), a retry of the same \
        request returns the run the first one made (200) instead of starting another.",
    params(
        ("job_id" = String, Path, pattern = r"^[A-Za-z0-9_.-]{1,128}$",
            example = "job_payments_build_test", description = "The job's id."),
        ("Idempotency-Key" = Option<String>, Header,
            description = "Makes retries safe: 1 to 255 printable ASCII characters. Same as the \
                body's `idempotency_key`; when both are given they must be equal."),
    ),
    request_body(content = Option<TriggerBody>, content_type = "application/json",
        description = "Optional; an empty body is the same as `{}`."),
    responses(
        (status = 201, description = "A new run.", body = RunEnvelope),
        (status = 200, description = "The run an earlier request with the same idempotency key made.", body = RunEnvelope),
        (status = 400, description = "`invalid_json` (malformed body) or `invalid_request` (unknown field, wrong type, bad idempotency key, header and body keys differ).", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or bad credentials.", body = ErrorBody),
        (status = 403, description = "`forbidden`: the caller lacks the scope (or the project).", body = ErrorBody),
        (status = 404, description = "`job_not_found`.", body = ErrorBody),
        (status = 409, description = "`job_not_triggerable`: the CI provider refuses to run this job now.", body = ErrorBody),
        (status = 413, description = "`payload_too_large`.", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: a body that is not declared as JSON.", body = ErrorBody),
        (status = 422, description = "`invalid_parameters` (parameters the job does not take) or `idempotency_key_reused` (the key was used with a different request).", body = ErrorBody),
        (status = 500, description = "`internal`.", body = ErrorBody),
        (status = 502, description = "`provider_error`: the CI provider answered something unexpected; the run is kept as `errored`.", body = ErrorBody),
        (status = 503, description = "`provider_unavailable` or `store_unavailable`; retry later.", body = ErrorBody),
        (status = 504, description = "`provider_timeout`: the CI provider did not answer in time; the run is kept as `errored`.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(job_id = %job_id, caller))]
pub async fn trigger_run(
    State(state): State<AppState>,
    MaybeCaller(caller): MaybeCaller,
    meta: RequestMeta,
    PathParam(job_id): PathParam,
    headers: HeaderMap,
    JsonBody(body): JsonBody<TriggerBody>,
) -> Result<Response, ApiError> {
    let mut audit = audit_base(&caller, meta, AuditAction::Trigger);
    audit.job_id = Some(clip(&job_id));
    let parameters = body.parameters.unwrap_or_default();
    audit.parameters = redact(&parameters);
    let caller = match caller {
        Ok(c) => c,
        Err(d) => return Err(deny(&state, audit, d.into()).await),
    };
    caller.record_in_span();
    if let Err(d) = caller.require(Scope::RunsTrigger) {
        return Err(deny(&state, audit, d.into()).await);
    }
    let key = match idempotency_key(body.idempotency_key, &headers) {
        Ok(k) => k,
        Err(e) => return Err(deny(&state, audit, e).await),
    };
    audit.idempotency_key = key.as_ref().map(|k| k.as_ref().to_owned());
    let Ok(job_id) = JobId::parse(&job_id) else {
        return Err(deny(&state, audit, ApiError::JobNotFound).await);
    };
    let job = match state
        .runs
        .store
        .get_job(&caller.tenant, job_id.as_ref())
        .await
    {
        Ok(Some(job)) => job,
        Ok(None) => return Err(deny(&state, audit, ApiError::JobNotFound).await),
        Err(e) => return Err(e.into()),
    };
    if !caller.may_access(&job.project) {
        // Recorded as the refusal it is, answered as if the job did not exist: a caller limited
        // to some projects learns nothing about the others' jobs.
        deny(&state, audit, Denial::ProjectNotAllowed.into()).await;
        return Err(ApiError::JobNotFound);
    }
    let request = TriggerRequest {
        parameters,
        idempotency_key: key,
    };
    let triggered = state
        .runs
        .trigger(&caller.tenant, &job, request, audit)
        .await?;
    let status = if triggered.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(RunEnvelope::from(&triggered.run))).into_response())
}

/// Loads a run named by a path parameter; anything that is not a known run of a project the
/// caller may see is 404.
pub async fn load_run(
    state: &AppState,
    caller: &Caller,
    run_id: &str,
) -> Result<RunRecord, ApiError> {
    let run_id = RunId::parse(run_id).map_err(|_| ApiError::RunNotFound)?;
    let run = state
        .runs
        .store
        .get_run(&caller.tenant, run_id)
        .await?
        .ok_or(ApiError::RunNotFound)?;
    if caller.grant.projects.is_some() {
        let job = state
            .runs
            .store
            .get_job(&caller.tenant, &run.job_id)
            .await?;
        if !job.is_some_and(|j| caller.may_access(&j.project)) {
            return Err(ApiError::RunNotFound);
        }
    }
    Ok(run)
}

/// What `GET /v1/runs/{run_id}` may wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WaitFor {
    /// Until the run is terminal (`terminal: true`).
    Terminal,
}

/// The query of `GET /v1/runs/{run_id}`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct GetRunQuery {
    /// Long-poll: answer as soon as the run is terminal, or at `timeout` with the run as it is
    /// then (200 either way; check `terminal`).
    #[param(inline)]
    wait_for: Option<WaitFor>,
    /// How long to wait with `wait_for`: `500ms`, `30s`, `2m`, or plain seconds (`45`).
    /// Default 30s; longer than 120s waits 120s.
    #[param(pattern = r"^[0-9]{1,12}(ms|s|m)?$", example = "60s")]
    timeout: Option<String>,
}

/// The longest a long-poll waits.
pub const MAX_WAIT: Duration = Duration::from_secs(120);

/// How long a long-poll waits without `timeout`.
const DEFAULT_WAIT: Duration = Duration::from_secs(30);

/// How often a long-poll looks for a change made by another replica (this process's changes
/// wake it at once through the bus).
const POLL: Duration = Duration::from_secs(1);

/// Parses a wait like `500ms`, `30s`, `2m` or `45` (seconds), capped at [`MAX_WAIT`].
///
/// # Errors
/// Anything else, with a message for the caller.
pub fn parse_timeout(s: &str) -> Result<Duration, ApiError> {
    let bad = || {
        ApiError::InvalidRequest(format!(
            "timeout must be a number with an optional unit ms, s or m (like 500ms, 30s, 2m), \
             not {s:?}"
        ))
    };
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = s.split_at(digits);
    if number.is_empty() {
        return Err(bad());
    }
    // More digits than any sane wait: it is over the cap whatever the unit.
    let Ok(n) = number.parse::<u64>() else {
        return if unit.is_empty() || ["ms", "s", "m"].contains(&unit) {
            Ok(MAX_WAIT)
        } else {
            Err(bad())
        };
    };
    let wait = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(bad()),
    };
    Ok(wait.min(MAX_WAIT))
}

/// `GET /v1/runs/{run_id}`, optionally long-polling until the run is terminal.
#[utoipa::path(
    get,
    path = "/v1/runs/{run_id}",
    tag = "runs",
    summary = "Read a run, optionally waiting until it is terminal",
    description = "Without `wait_for`, answers at once. With `wait_for=terminal`, answers as soon \
        as the run is terminal, or when `timeout` passes with the run as it is then; both are \
        200, so check `terminal`.",
    params(
        ("run_id" = String, Path, pattern = r"^run_[0-9A-HJKMNP-TV-Z]{26}$",
            description = "The run's id, `run_` + ULID."),
        GetRunQuery,
    ),
    responses(
        (status = 200, description = "The run.", body = RunEnvelope),
        (status = 400, description = "`invalid_request`: a bad `wait_for` or `timeout`, or an unknown query parameter.", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or bad credentials.", body = ErrorBody),
        (status = 403, description = "`forbidden`: the caller lacks the scope (or the project).", body = ErrorBody),
        (status = 404, description = "`run_not_found`.", body = ErrorBody),
        (status = 500, description = "`internal`.", body = ErrorBody),
        (status = 503, description = "`store_unavailable`.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(run_id = %run_id, caller))]
pub async fn get_run(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(run_id): PathParam,
    query: Result<Query<GetRunQuery>, QueryRejection>,
) -> Result<Json<RunEnvelope>, ApiError> {
    caller.record_in_span();
    caller.require(Scope::RunsRead)?;
    let Query(query) = query.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    let wait = match (query.wait_for, query.timeout.as_deref()) {
        (None, None) => None,
        (None, Some(_)) => {
            return Err(ApiError::InvalidRequest(
                "timeout needs wait_for=terminal".to_owned(),
            ));
        }
        (Some(WaitFor::Terminal), None) => Some(DEFAULT_WAIT),
        (Some(WaitFor::Terminal), Some(t)) => Some(parse_timeout(t)?),
    };
    let run = match wait {
        None => load_run(&state, &caller, &run_id).await?,
        Some(wait) => wait_until_terminal(&state, &caller, &run_id, wait).await?,
    };
    Ok(Json(RunEnvelope::from(&run)))
}

/// Reads the run until it is terminal or `wait` has passed, whichever comes first. Woken by
/// this process's event bus when the run's ingester stores something, and by a slow poll for
/// runs another replica follows; never spins.
async fn wait_until_terminal(
    state: &AppState,
    caller: &Caller,
    run_id: &str,
    wait: Duration,
) -> Result<RunRecord, ApiError> {
    let deadline = Instant::now() + wait;
    let id = RunId::parse(run_id).map_err(|_| ApiError::RunNotFound)?;
    // Subscribe before the first read, so a change stored in between still wakes us.
    let mut wake = Some(state.runs.bus.subscribe(id));
    loop {
        let run = load_run(state, caller, run_id).await?;
        if run.is_finished() || Instant::now() >= deadline {
            return Ok(run);
        }
        let shutdown = state.runs.shutdown.clone();
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {}
            () = shutdown.cancelled() => return Ok(run),
            received = async {
                match &mut wake {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                // The channel closes when the run ends; the read above sees the end next time.
                if matches!(received, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                    wake = None;
                }
            }
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

/// `POST /v1/runs/{run_id}/cancel` (scope `runs:cancel`, and the run's project): 202 once the
/// provider accepted the request; the run becomes `canceled` when the provider says so. 409
/// with the run when it already finished. Every attempt leaves one audit row, written before
/// the provider is asked (no row, no cancel).
#[utoipa::path(
    post,
    path = "/v1/runs/{run_id}/cancel",
    tag = "runs",
    summary = "Ask to cancel a run",
    description = "Accepted (202) once the CI provider took the request; the run becomes \
        `canceled` (reason `canceled_by_caller`) when the provider stops it. Until then its \
        reason is `cancel_requested`. Takes no body.",
    params(("run_id" = String, Path, pattern = r"^run_[0-9A-HJKMNP-TV-Z]{26}$",
            description = "The run's id, `run_` + ULID.")),
    responses(
        (status = 202, description = "The provider accepted the cancel request; the run as it is now.", body = RunEnvelope),
        (status = 401, description = "`unauthorized`: missing or bad credentials.", body = ErrorBody),
        (status = 403, description = "`forbidden`: the caller lacks the scope (or the project).", body = ErrorBody),
        (status = 404, description = "`run_not_found`.", body = ErrorBody),
        (status = 409, description = "`run_already_finished` (the body also carries the run), `run_not_submitted` (still being submitted; retry in a moment) or `job_not_triggerable`.", body = ErrorBody),
        (status = 500, description = "`internal`.", body = ErrorBody),
        (status = 502, description = "`provider_error`.", body = ErrorBody),
        (status = 503, description = "`provider_unavailable` or `store_unavailable`.", body = ErrorBody),
        (status = 504, description = "`provider_timeout`.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(run_id = %run_id, caller))]
pub async fn cancel_run(
    State(state): State<AppState>,
    MaybeCaller(caller): MaybeCaller,
    meta: RequestMeta,
    PathParam(run_id): PathParam,
) -> Result<Response, ApiError> {
    let mut audit = audit_base(&caller, meta, AuditAction::Cancel);
    audit.run_id = Some(clip(&run_id));
    let caller = match caller {
        Ok(c) => c,
        Err(d) => return Err(deny(&state, audit, d.into()).await),
    };
    caller.record_in_span();
    if let Err(d) = caller.require(Scope::RunsCancel) {
        return Err(deny(&state, audit, d.into()).await);
    }
    let run = match load_run(&state, &caller, &run_id).await {
        Ok(run) => run,
        Err(e @ ApiError::RunNotFound) => return Err(deny(&state, audit, e).await),
        Err(e) => return Err(e),
    };
    audit.job_id = Some(run.job_id.clone());
    let seq = state.runs.store.append_audit(&audit).await?;
    let result = state.runs.cancel(run).await;
    let outcome = match &result {
        Ok(_) => "cancel_requested",
        Err(e) => e.code(),
    };
    if let Err(e) = state.runs.store.set_audit_outcome(seq, outcome).await {
        tracing::error!(error = %e, "cannot record the cancel outcome in the audit log");
    }
    let run = result?;
    Ok((StatusCode::ACCEPTED, Json(RunEnvelope::from(&run))).into_response())
}

/// The query of `GET /v1/audit`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only this caller.
    caller: Option<String>,
    /// Only this job.
    job_id: Option<String>,
    /// Only `trigger` or `cancel`.
    action: Option<String>,
    /// RFC 3339: rows at or after.
    since: Option<String>,
    /// RFC 3339: rows before.
    until: Option<String>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Page size, 1 to 500 (default 100).
    limit: Option<i64>,
}

fn parse_time(what: &str, value: Option<&str>) -> Result<Option<String>, ApiError> {
    value
        .map(|v| {
            OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
                .map(format_time)
                .map_err(|_| ApiError::InvalidRequest(format!("{what} must be an RFC 3339 time")))
        })
        .transpose()
}

/// `GET /v1/audit` (scope `audit:read`): the audit log, oldest first, with filters and a
/// cursor (`next_cursor`, null on the last page).
#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "audit",
    summary = "Read the audit log",
    description = "Every trigger and cancel attempt, allowed or denied, oldest first: \
        `{\"entries\": [...], \"next_cursor\": \"...\" | null}`. Each entry has `seq`, `at`, \
        `caller` (`subject`, `auth_method`), `action`, `job_id`, `run_id`, `parameters` (secret \
        values redacted), `idempotency_key`, `decision`, `reason`, `outcome`, `request_id`, \
        `source_addr` and `hash` (chained over the previous entry's).",
    params(AuditQuery),
    responses(
        (status = 200, description = "One page of the audit log.", body = Object),
        (status = 400, description = "`invalid_request`: a bad filter, limit or cursor.", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or bad credentials.", body = ErrorBody),
        (status = 403, description = "`forbidden`: the caller lacks the scope (or the project).", body = ErrorBody),
        (status = 500, description = "`internal`.", body = ErrorBody),
        (status = 503, description = "`store_unavailable`.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(caller))]
pub async fn list_audit(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.record_in_span();
    caller.require(Scope::AuditRead)?;
    // The log spans every project: a caller limited to some may not read it.
    if caller.grant.projects.is_some() {
        return Err(Denial::ProjectNotAllowed.into());
    }
    let Query(q) = query.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::InvalidRequest(
            "limit must be between 1 and 500".to_owned(),
        ));
    }
    let after_seq = match q.cursor.as_deref() {
        None => 0,
        Some(c) => c
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| ApiError::InvalidRequest("invalid cursor".to_owned()))?,
    };
    let filter = AuditFilter {
        caller: q.caller,
        job_id: q.job_id,
        action: match q.action {
            Some(a) if a != "trigger" && a != "cancel" => {
                return Err(ApiError::InvalidRequest(
                    "action must be trigger or cancel".to_owned(),
                ));
            }
            other => other,
        },
        since: parse_time("since", q.since.as_deref())?,
        until: parse_time("until", q.until.as_deref())?,
        after_seq,
        limit,
    };
    let rows = state.runs.store.list_audit(&caller.tenant, &filter).await?;
    let next = if rows.len() == usize::try_from(limit).unwrap_or(usize::MAX) {
        rows.last().map(|r| r.seq.to_string())
    } else {
        None
    };
    let entries: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "seq": r.seq,
                "at": r.at,
                "caller": { "subject": r.caller, "auth_method": r.auth_method },
                "action": r.action,
                "job_id": r.job_id,
                "run_id": r.run_id,
                "parameters": serde_json::from_str::<Value>(&r.parameters).unwrap_or(Value::Null),
                "idempotency_key": r.idempotency_key,
                "decision": r.decision,
                "reason": r.reason,
                "outcome": r.outcome,
                "request_id": r.request_id,
                "source_addr": r.source_addr,
                "hash": r.hash,
            })
        })
        .collect();
    Ok(Json(json!({ "entries": entries, "next_cursor": next })))
}

/// `GET /healthz`: the process is up.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    summary = "Liveness",
    responses((status = 200, description = "The process is up: `{\"status\": \"ok\"}`.", body = HealthStatus))
)]
pub async fn healthz() -> Json<HealthStatus> {
    Json(HealthStatus {
        status: "ok".to_owned(),
    })
}

/// `GET /readyz`: the database answers and every provider accepts our credentials.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    summary = "Readiness",
    responses(
        (status = 200, description = "The database answers and every CI provider accepts the gateway's credentials: `{\"status\": \"ready\"}`.", body = HealthStatus),
        (status = 503, description = "`not_ready`: the database or a CI provider is unavailable.", body = ErrorBody),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let not_ready = |what: &str| {
        let body = ErrorBody {
            error: ErrorDetail {
                code: "not_ready".to_owned(),
                message: format!("{what} is unavailable"),
            },
            run: None,
        };
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    };
    if let Err(e) = state.runs.store.ping().await {
        tracing::warn!(error = %e, "readiness: database");
        return not_ready("the database");
    }
    for (name, provider) in state.runs.providers() {
        match tokio::time::timeout(Duration::from_secs(10), provider.check()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(provider = %name, error = %e, "readiness: provider");
                return not_ready("a CI provider");
            }
            Err(_) => {
                tracing::warn!(provider = %name, "readiness: provider check timed out");
                return not_ready("a CI provider");
            }
        }
    }
    Json(HealthStatus {
        status: "ready".to_owned(),
    })
    .into_response()
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics",
    responses((status = 200, description = "Metrics in the Prometheus text exposition format.", content_type = "text/plain", body = String))
)]
pub async fn metrics(State(state): State<AppState>) -> String {
    state.metrics.render()
}

/// Unknown routes.
pub async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// Known routes with another method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
