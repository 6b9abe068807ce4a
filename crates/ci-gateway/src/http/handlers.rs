//! The v1 endpoints, except the event stream ([`super::sse`]) and the run listing
//! ([`super::listing`]).
//!
//! Each handler carries its `#[utoipa::path]`: the OpenAPI document is generated from these
//! annotations, and the router is built from the same list ([`super::openapi::api`]).

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::time::Instant;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::ApiError;
use super::extract::{JsonBody, PathParam};
use super::views::{ErrorBody, HealthStatus, JobList, JobView, RunEnvelope};
use crate::domain::{IdempotencyKey, JobId, RunId, TenantId};
use crate::runs::TriggerRequest;
use crate::store::RunRecord;

/// `GET /v1/jobs`.
#[utoipa::path(
    get,
    path = "/v1/jobs",
    tag = "jobs",
    summary = "List the jobs",
    description = "Every job of the catalog that callers may trigger, by id.",
    responses(
        (status = 200, description = "The catalog.", body = JobList),
        (status = 500, description = "`internal`: a bug; details are in the gateway's log.", body = ErrorBody),
        (status = 503, description = "`store_unavailable`: the database does not answer.", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all)]
pub async fn list_jobs(State(state): State<AppState>) -> Result<Json<JobList>, ApiError> {
    let tenant = TenantId::default_tenant();
    let jobs: Vec<JobView> = state
        .runs
        .store
        .list_jobs(&tenant)
        .await?
        .into_iter()
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

/// `POST /v1/jobs/{job_id}/runs`: 201 with a new run, 200 with the run of an earlier request
/// that had the same idempotency key.
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
        (status = 404, description = "`job_not_found`.", body = ErrorBody),
        (status = 409, description = "`job_not_triggerable`: the CI provider refuses to run this job now.", body = ErrorBody),
        (status = 413, description = "`payload_too_large`.", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: a body that is not declared as JSON.", body = ErrorBody),
        (status = 422, description = "`invalid_parameters` (parameters the job does not take) or `idempotency_key_reused` (the key was used with a different request).", body = ErrorBody),
        (status = 500, description = "`internal`.", body = ErrorBody),
        (status = 502, description = "`provider_error`: the CI provider answered something unexpected; the run is kept as `errored`.", body = ErrorBody),
        (status = 503, description = "`provider_unavailable` or `store_unavailable`; retry later.", body = ErrorBody),
        (status = 504, description = "`provider_timeout`: the CI provider did not answer in time; the run is kept as `errored`.", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(job_id = %job_id))]
pub async fn trigger_run(
    State(state): State<AppState>,
    PathParam(job_id): PathParam,
    headers: HeaderMap,
    JsonBody(body): JsonBody<TriggerBody>,
) -> Result<Response, ApiError> {
    let tenant = TenantId::default_tenant();
    let key = idempotency_key(body.idempotency_key, &headers)?;
    let job_id = JobId::parse(&job_id).map_err(|_| ApiError::JobNotFound)?;
    let job = state
        .runs
        .store
        .get_job(&tenant, job_id.as_ref())
        .await?
        .ok_or(ApiError::JobNotFound)?;
    let request = TriggerRequest {
        parameters: body.parameters.unwrap_or_default(),
        idempotency_key: key,
    };
    let triggered = state.runs.trigger(&tenant, &job, request).await?;
    let status = if triggered.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(RunEnvelope::from(&triggered.run))).into_response())
}

/// Loads a run named by a path parameter; anything that is not a known run id is 404.
pub async fn load_run(state: &AppState, run_id: &str) -> Result<RunRecord, ApiError> {
    let run_id = RunId::parse(run_id).map_err(|_| ApiError::RunNotFound)?;
    state
        .runs
        .store
        .get_run(&TenantId::default_tenant(), run_id)
        .await?
        .ok_or(ApiError::RunNotFound)
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
        (status = 404, description = "`run_not_found`.", body = ErrorBody),
        (status = 500, description = "`internal`.", body = ErrorBody),
        (status = 503, description = "`store_unavailable`.", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(run_id = %run_id))]
pub async fn get_run(
    State(state): State<AppState>,
    PathParam(run_id): PathParam,
    query: Result<Query<GetRunQuery>, QueryRejection>,
) -> Result<Json<RunEnvelope>, ApiError> {
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
        None => load_run(&state, &run_id).await?,
        Some(wait) => wait_until_terminal(&state, &run_id, wait).await?,
    };
    Ok(Json(RunEnvelope::from(&run)))
}

/// Reads the run until it is terminal or `wait` has passed, whichever comes first. Woken by
/// this process's event bus when the run's ingester stores something, and by a slow poll for
/// runs another replica follows; never spins.
async fn wait_until_terminal(
    state: &AppState,
    run_id: &str,
    wait: Duration,
) -> Result<RunRecord, ApiError> {
    let deadline = Instant::now() + wait;
    let id = RunId::parse(run_id).map_err(|_| ApiError::RunNotFound)?;
    // Subscribe before the first read, so a change stored in between still wakes us.
    let mut wake = Some(state.runs.bus.subscribe(id));
    loop {
        let run = load_run(state, run_id).await?;
        if run.status.is_terminal() || run.ended || Instant::now() >= deadline {
            return Ok(run);
        }
        let shutdown = state.runs.shutdown.clone();
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {}
            () = shutdown.cancelled() => return Ok(run),
            changed = async {
                match &mut wake {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            } => {
                // The channel closes when the run ends; the read below sees the end.
                if !changed {
                    wake = None;
                }
            }
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

/// `POST /v1/runs/{run_id}/cancel`: 202 once the provider accepted the request; the run becomes
/// `canceled` when the provider says so. 409 with the run when it already finished.
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
        (status = 404, description = "`run_not_found`.", body = ErrorBody),
        (status = 409, description = "`run_already_finished` (the body also carries the run), `run_not_submitted` (still being submitted; retry in a moment) or `job_not_triggerable`.", body = ErrorBody),
        (status = 500, description = "`internal`.", body = ErrorBody),
        (status = 502, description = "`provider_error`.", body = ErrorBody),
        (status = 503, description = "`provider_unavailable` or `store_unavailable`.", body = ErrorBody),
        (status = 504, description = "`provider_timeout`.", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(run_id = %run_id))]
pub async fn cancel_run(
    State(state): State<AppState>,
    PathParam(run_id): PathParam,
) -> Result<Response, ApiError> {
    let run = load_run(&state, &run_id).await?;
    let run = state.runs.cancel(run).await?;
    Ok((StatusCode::ACCEPTED, Json(RunEnvelope::from(&run))).into_response())
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
            error: super::views::ErrorDetail {
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
