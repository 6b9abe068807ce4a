//! The v1 endpoints, except the event stream ([`super::sse`]).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::AppState;
use super::error::ApiError;
use super::extract::{JsonBody, PathParam};
use super::views::{JobView, RunView};
use crate::domain::{IdempotencyKey, JobId, RunId, TenantId};
use crate::runs::TriggerRequest;
use crate::store::RunRecord;

/// `GET /v1/jobs`.
#[tracing::instrument(skip_all)]
pub async fn list_jobs(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let tenant = TenantId::default_tenant();
    let jobs: Vec<JobView> = state
        .runs
        .store
        .list_jobs(&tenant)
        .await?
        .into_iter()
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
    Ok((
        status,
        Json(json!({ "run": RunView::from(&triggered.run) })),
    )
        .into_response())
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

/// `GET /v1/runs/{run_id}`.
#[tracing::instrument(skip_all, fields(run_id = %run_id))]
pub async fn get_run(
    State(state): State<AppState>,
    PathParam(run_id): PathParam,
) -> Result<Json<Value>, ApiError> {
    let run = load_run(&state, &run_id).await?;
    Ok(Json(json!({ "run": RunView::from(&run) })))
}

/// `POST /v1/runs/{run_id}/cancel`: 202 once the provider accepted the request; the run becomes
/// `canceled` when the provider says so. 409 with the run when it already finished.
#[tracing::instrument(skip_all, fields(run_id = %run_id))]
pub async fn cancel_run(
    State(state): State<AppState>,
    PathParam(run_id): PathParam,
) -> Result<Response, ApiError> {
    let run = load_run(&state, &run_id).await?;
    let run = state.runs.cancel(run).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "run": RunView::from(&run) })),
    )
        .into_response())
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
