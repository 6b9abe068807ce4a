//! The public JSON shapes. Only generic words: no provider concept reaches a caller.

use serde::Serialize;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::domain::RunStatus;
use crate::store::{JobRecord, RunRecord};

/// RFC 3339 in UTC with whole seconds, e.g. `2026-01-08T18:22:11Z`.
pub fn timestamp(t: OffsetDateTime) -> String {
    let t = t
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .unwrap_or(t);
    t.format(&Rfc3339).unwrap_or_default()
}

/// A job.
#[derive(Debug, Serialize)]
pub struct JobView {
    /// Stable public id.
    pub job_id: String,
    /// Logical grouping.
    pub project: String,
    /// Human name.
    pub display_name: String,
    /// Environment label, or null.
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

/// Links from a run to its resources.
#[derive(Debug, Serialize)]
pub struct RunLinks {
    /// The run itself.
    #[serde(rename = "self")]
    pub self_: String,
    /// Its event stream.
    pub events: String,
}

/// A run.
#[derive(Debug, Serialize)]
pub struct RunView {
    /// Public id, `run_` + ULID.
    pub run_id: String,
    /// The job it runs.
    pub job_id: String,
    /// Current status.
    pub status: RunStatus,
    /// When the gateway accepted it.
    pub created_at: String,
    /// When it started, or null.
    pub started_at: Option<String>,
    /// When it finished, or null.
    pub finished_at: Option<String>,
    /// The parameters it was triggered with.
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
            created_at: timestamp(r.created_at),
            started_at: r.started_at.map(timestamp),
            finished_at: r.finished_at.map(timestamp),
            parameters: r.parameters.clone(),
            terminal: r.is_finished(),
        }
    }
}
