//! The v1 endpoints, except the event stream ([`super::sse`]).

use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use super::AppState;
use super::caller::{MaybeCaller, RequestMeta};
use super::error::ApiError;
use super::extract::{JsonBody, PathParam};
use super::views::{JobView, RunView};
use crate::audit::{AuditAction, AuditFilter, Decision, NewAudit, format_time, redact};
use crate::auth::{AuthMethod, Caller, Denial, Scope};
use crate::domain::{IdempotencyKey, JobId, RunId, TenantId};
use crate::runs::TriggerRequest;
use crate::store::RunRecord;

/// `GET /v1/jobs` (scope `jobs:read`): the jobs of the projects the caller may see.
#[tracing::instrument(skip_all, fields(caller))]
pub async fn list_jobs(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(json!({ "jobs": jobs })))
}

/// The body of `POST /v1/jobs/{job_id}/runs`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerBody {
    /// The job's parameters.
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    /// An idempotency key (the `Idempotency-Key` header works too).
    #[serde(default)]
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
    audit.job_id = Some(job_id.clone());
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
        return Err(deny(&state, audit, Denial::ProjectNotAllowed.into()).await);
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
    Ok((
        status,
        Json(json!({ "run": RunView::from(&triggered.run) })),
    )
        .into_response())
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

/// `GET /v1/runs/{run_id}` (scope `runs:read`).
#[tracing::instrument(skip_all, fields(run_id = %run_id, caller))]
pub async fn get_run(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(run_id): PathParam,
) -> Result<Json<Value>, ApiError> {
    caller.record_in_span();
    caller.require(Scope::RunsRead)?;
    let run = load_run(&state, &caller, &run_id).await?;
    Ok(Json(json!({ "run": RunView::from(&run) })))
}

/// `POST /v1/runs/{run_id}/cancel` (scope `runs:cancel`, and the run's project): 202 once the
/// provider accepted the request; the run becomes `canceled` when the provider says so. 409
/// with the run when it already finished. Every attempt leaves one audit row, written before
/// the provider is asked (no row, no cancel).
#[tracing::instrument(skip_all, fields(run_id = %run_id, caller))]
pub async fn cancel_run(
    State(state): State<AppState>,
    MaybeCaller(caller): MaybeCaller,
    meta: RequestMeta,
    PathParam(run_id): PathParam,
) -> Result<Response, ApiError> {
    let mut audit = audit_base(&caller, meta, AuditAction::Cancel);
    audit.run_id = Some(run_id.clone());
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
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "run": RunView::from(&run) })),
    )
        .into_response())
}

/// The query of `GET /v1/audit`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
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
#[tracing::instrument(skip_all, fields(caller))]
pub async fn list_audit(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.record_in_span();
    caller.require(Scope::AuditRead)?;
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
        action: q.action,
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
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: the database answers and every provider accepts our credentials.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let not_ready = |what: &str| {
        let body = json!({ "error": { "code": "not_ready", "message": format!("{what} is unavailable") } });
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
    Json(json!({ "status": "ready" })).into_response()
}

/// `GET /metrics`: Prometheus text format.
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
