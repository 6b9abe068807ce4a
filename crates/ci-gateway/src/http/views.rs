//! The public JSON shapes. Only generic words: no provider concept reaches a caller.
//!
//! Each shape derives [`utoipa::ToSchema`], so the OpenAPI document describes exactly what the
//! handlers serialize.

use serde::Serialize;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::ToSchema;

use crate::domain::{LogStream, RunStatus};
use crate::store::{JobRecord, RunRecord};

/// RFC 3339 in UTC with whole seconds, e.g. `2026-01-08T18:22:11Z`.
pub fn timestamp(t: OffsetDateTime) -> String {
    let t = t
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .unwrap_or(t);
    t.format(&Rfc3339).unwrap_or_default()
}

/// A job of the catalog.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    /// Stable public id.
    #[schema(example = "job_payments_build_test")]
    pub job_id: String,
    /// Logical grouping.
    pub project: String,
    /// Human name.
    pub display_name: String,
    /// Environment label, or null.
    #[schema(required = true)]
    pub environment: Option<String>,
}

impl From<JobRecord> for JobView {
    fn from(j: JobRecord) -> JobView {
        JobView {
            job_id: j.job_id,
            project: j.project,
            display_name: j.display_name,
            environment: j.environment,
        }
    }
}

/// The body of `GET /v1/jobs`.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    /// Every job the caller may trigger, by id.
    pub jobs: Vec<JobView>,
}

/// Links from a run to its resources.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunLinks {
    /// The run itself.
    #[serde(rename = "self")]
    pub self_: String,
    /// Its event stream.
    pub events: String,
}

/// Why a run is in its status: a stable, provider-agnostic code.
///
/// - `awaiting_start`: queued, waiting for the provider to start it.
/// - `cancel_requested`: a caller asked to cancel it; the provider has not stopped it yet.
/// - `canceled_by_caller`: canceled after a caller's cancel request.
/// - `canceled_externally`: canceled without a cancel request through this API.
/// - `job_failed`: the job ran and one of its steps failed.
/// - `provider_error`: the CI provider could not run it to completion (infrastructure or
///   configuration error), or its answer to the submission was lost.
/// - `status_unknown`: the gateway cannot tell the run's state: the provider reports one the
///   gateway does not know, or never confirmed the submission.
///
/// Null while running normally and after success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunReason {
    /// Queued, waiting for the provider to start it.
    AwaitingStart,
    /// A caller asked to cancel it; not stopped yet.
    CancelRequested,
    /// Canceled after a caller's cancel request.
    CanceledByCaller,
    /// Canceled without a cancel request through this API.
    CanceledExternally,
    /// A step of the job failed.
    JobFailed,
    /// The provider could not run it to completion.
    ProviderError,
    /// The gateway cannot tell the run's state.
    StatusUnknown,
}

impl RunReason {
    /// The reason for a stored run, if its status needs one.
    pub fn of(run: &RunRecord) -> Option<RunReason> {
        let cancel_requested = run.cancel_requested_at.is_some();
        match run.status {
            RunStatus::Queued | RunStatus::Running if cancel_requested => {
                Some(RunReason::CancelRequested)
            }
            RunStatus::Queued => Some(RunReason::AwaitingStart),
            RunStatus::Running | RunStatus::Succeeded => None,
            RunStatus::Failed => Some(RunReason::JobFailed),
            RunStatus::Canceled if cancel_requested => Some(RunReason::CanceledByCaller),
            RunStatus::Canceled => Some(RunReason::CanceledExternally),
            RunStatus::Errored => Some(RunReason::ProviderError),
            RunStatus::Unknown => Some(RunReason::StatusUnknown),
        }
    }
}

/// A run: one execution of a job.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunView {
    /// Public id, `run_` + ULID.
    #[schema(example = "run_01KBJ4V8Q5W3N2X7Y6Z9A0B1C2")]
    pub run_id: String,
    /// The job it runs.
    pub job_id: String,
    /// Current status.
    pub status: RunStatus,
    /// Why it is in this status: a stable code (see the `RunReason` schema); null while
    /// running and after success.
    #[schema(required = true)]
    pub reason: Option<RunReason>,
    /// When the gateway accepted it (RFC 3339, UTC, whole seconds).
    #[schema(format = DateTime)]
    pub created_at: String,
    /// When it started, or null.
    #[schema(format = DateTime, required = true)]
    pub started_at: Option<String>,
    /// When it finished, or null.
    #[schema(format = DateTime, required = true)]
    pub finished_at: Option<String>,
    /// The parameters it was triggered with.
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
    /// True once the status can no longer change.
    pub terminal: bool,
    /// Where to read and follow it.
    pub links: RunLinks,
}

impl From<&RunRecord> for RunView {
    fn from(r: &RunRecord) -> RunView {
        let id = r.run_id.to_string();
        RunView {
            links: RunLinks {
                self_: format!("/v1/runs/{id}"),
                events: format!("/v1/runs/{id}/events"),
            },
            run_id: id,
            job_id: r.job_id.clone(),
            status: r.status,
            reason: RunReason::of(r),
            created_at: timestamp(r.created_at),
            started_at: r.started_at.map(timestamp),
            finished_at: r.finished_at.map(timestamp),
            parameters: r.parameters.clone(),
            terminal: r.is_finished(),
        }
    }
}

/// A body carrying one run.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunEnvelope {
    /// The run.
    pub run: RunView,
}

impl From<&RunRecord> for RunEnvelope {
    fn from(r: &RunRecord) -> RunEnvelope {
        RunEnvelope { run: r.into() }
    }
}

/// One page of `GET /v1/runs`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunList {
    /// The runs, newest first.
    pub runs: Vec<RunView>,
    /// Pass as `cursor` to get the next page; null on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// The code and message of an error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `run_not_found`, `invalid_request`.
    #[schema(example = "invalid_request")]
    pub code: String,
    /// A sentence for humans; may change.
    pub message: String,
}

/// Every error response: `{"error": {"code", "message"}}`. A 409 `run_already_finished` also
/// carries the run.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
    /// The run, with `run_already_finished` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<RunView>,
}

/// The body of `/healthz` and `/readyz` when all is well.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthStatus {
    /// `ok` (`/healthz`) or `ready` (`/readyz`).
    #[schema(example = "ok")]
    pub status: String,
}

/// The data of a `status` event: the run's new status.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusEventData {
    /// The new status.
    pub status: RunStatus,
}

/// The data of a `log` event: one line of output, without its newline.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogEventData {
    /// The stream it was written to.
    pub stream: LogStream,
    /// The line.
    pub line: String,
}

/// The data of the `end` event, the last one: the run is over.
#[derive(Debug, Serialize, ToSchema)]
pub struct EndEventData {
    /// The final status.
    pub status: RunStatus,
}
