//! Persistence: the job catalog, runs, and each run's event history.
//!
//! Handlers and the run engine see only the [`Store`] trait. Two implementations share one body of
//! SQL ([`sql`]): SQLite, the embedded default, and PostgreSQL, for several replicas on one
//! database. The backend is chosen once at start-up from the URL scheme ([`connect`]).

mod sql;

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::domain::{RunId, RunStatus, TenantId};

pub use sql::{PgStore, SqliteStore};

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or refused the statement.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored value cannot be read back (a bug or a hand-edited row).
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

/// Shorthand for store results.
pub type StoreResult<T> = Result<T, StoreError>;

/// A job of the catalog, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    /// The tenant that owns it.
    pub tenant_id: String,
    /// The stable public id.
    pub job_id: String,
    /// Logical grouping.
    pub project: String,
    /// Human name.
    pub display_name: String,
    /// Optional environment label.
    pub environment: Option<String>,
    /// The allowlist name of the provider that runs it.
    pub provider_id: String,
    /// The provider kind, e.g. `concourse`.
    pub provider_kind: String,
    /// The provider's binding, opaque to everything but the adapter.
    pub provider_ref: Value,
}

/// A run, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    /// Public id.
    pub run_id: RunId,
    /// The tenant that owns it.
    pub tenant_id: String,
    /// The job it runs.
    pub job_id: String,
    /// Current status.
    pub status: RunStatus,
    /// The allowlist name of the provider that runs it.
    pub provider_id: String,
    /// The provider kind.
    pub provider_kind: String,
    /// The provider's reference to the execution; `None` until the provider accepted it.
    pub provider_run_ref: Option<Value>,
    /// The caller's parameters.
    pub parameters: Map<String, Value>,
    /// The caller's idempotency key, if any.
    pub idempotency_key: Option<String>,
    /// A digest of what the caller asked for, to tell a retry from a different request.
    pub request_fingerprint: String,
    /// When the gateway accepted it.
    pub created_at: OffsetDateTime,
    /// When it started upstream.
    pub started_at: Option<OffsetDateTime>,
    /// When it finished.
    pub finished_at: Option<OffsetDateTime>,
    /// When a caller asked to cancel it.
    pub cancel_requested_at: Option<OffsetDateTime>,
    /// Where the provider's event stream resumes.
    pub stream_resume: Option<Value>,
    /// True once its final `end` event is stored: nothing about it changes any more.
    pub ended: bool,
}

/// A run about to be created.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// Public id, minted by the gateway.
    pub run_id: RunId,
    /// Owner.
    pub tenant_id: TenantId,
    /// The job.
    pub job_id: String,
    /// The provider's allowlist name.
    pub provider_id: String,
    /// The provider kind.
    pub provider_kind: String,
    /// The caller's parameters.
    pub parameters: Map<String, Value>,
    /// The caller's idempotency key.
    pub idempotency_key: Option<String>,
    /// Digest of the request.
    pub request_fingerprint: String,
    /// Acceptance time.
    pub created_at: OffsetDateTime,
}

/// What kind of event a run's stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// `{"status": "..."}`.
    Status,
    /// `{"stream": "stdout", "line": "..."}`.
    Log,
    /// The last event: the run is over. `{"status": "<final status>"}`.
    End,
}

impl EventKind {
    /// The SSE event name and database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Status => "status",
            EventKind::Log => "log",
            EventKind::End => "end",
        }
    }

    fn parse(s: &str) -> Option<EventKind> {
        [EventKind::Status, EventKind::Log, EventKind::End]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// An event to append.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Its kind.
    pub kind: EventKind,
    /// Its JSON payload.
    pub data: Value,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    /// Position in the run's stream, from 0; the SSE `id`.
    pub seq: i64,
    /// Its kind.
    pub kind: EventKind,
    /// Its JSON payload.
    pub data: Value,
    /// When it was stored.
    pub created_at: OffsetDateTime,
}

/// The changes to a run that go with appended events, applied in the same transaction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunChange {
    /// A new status.
    pub status: Option<RunStatus>,
    /// Set `started_at` if it is not set yet.
    pub started_at: Option<OffsetDateTime>,
    /// Set `finished_at` if it is not set yet.
    pub finished_at: Option<OffsetDateTime>,
    /// A new stream resume point.
    pub stream_resume: Option<Value>,
    /// Mark the run ended.
    pub ended: bool,
}

/// The outcome of [`Store::insert_run`].
#[derive(Debug, Clone, PartialEq)]
pub enum InsertOutcome {
    /// The run was created.
    Created(RunRecord),
    /// A run with the same idempotency key for the same job already exists.
    Duplicate(RunRecord),
}

/// The gateway's persistence.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Checks that the database answers.
    async fn ping(&self) -> StoreResult<()>;

    /// Makes the catalog of `tenant` exactly `jobs`: inserts and updates them, and deactivates
    /// the jobs not among them (their runs stay readable).
    async fn sync_jobs(&self, tenant: &TenantId, jobs: &[JobRecord]) -> StoreResult<()>;

    /// The active jobs of a tenant, by id.
    async fn list_jobs(&self, tenant: &TenantId) -> StoreResult<Vec<JobRecord>>;

    /// One active job.
    async fn get_job(&self, tenant: &TenantId, job_id: &str) -> StoreResult<Option<JobRecord>>;

    /// Creates a run together with its first event, or finds the run that already holds the
    /// same idempotency key for the same job.
    async fn insert_run(&self, run: &NewRun, first: &NewEvent) -> StoreResult<InsertOutcome>;

    /// The run holding an idempotency key for a job.
    async fn find_run_by_key(
        &self,
        tenant: &TenantId,
        job_id: &str,
        key: &str,
    ) -> StoreResult<Option<RunRecord>>;

    /// One run.
    async fn get_run(&self, tenant: &TenantId, run_id: RunId) -> StoreResult<Option<RunRecord>>;

    /// Records the provider's reference once the provider accepted the run.
    async fn set_provider_run_ref(&self, run_id: RunId, run_ref: &Value) -> StoreResult<()>;

    /// Removes a run and its events: only for a run the provider certainly never started, so
    /// that the caller's retry with the same idempotency key can try again.
    async fn delete_run(&self, run_id: RunId) -> StoreResult<()>;

    /// Appends events (numbered after the last one) and applies `change`, atomically.
    /// Returns the stored events.
    async fn append_events(
        &self,
        run_id: RunId,
        events: &[NewEvent],
        change: &RunChange,
    ) -> StoreResult<Vec<EventRecord>>;

    /// Up to `limit` events with `seq > after`, in order.
    async fn events_after(
        &self,
        run_id: RunId,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<EventRecord>>;

    /// The run's `end` event, once stored.
    async fn end_event(&self, run_id: RunId) -> StoreResult<Option<EventRecord>>;

    /// Every run that has not ended yet, oldest first.
    async fn open_runs(&self) -> StoreResult<Vec<RunRecord>>;

    /// Notes that a caller asked to cancel the run.
    async fn mark_cancel_requested(&self, run_id: RunId, at: OffsetDateTime) -> StoreResult<()>;
}

/// Connects to the database named by `url` (`sqlite:` or `postgres:`), applies the migrations,
/// and returns the store.
///
/// # Errors
/// A bad URL, an unreachable database, or a database whose schema is newer than this binary.
pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(url, max_connections).await?))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Ok(Arc::new(PgStore::connect(url, max_connections).await?))
    } else {
        anyhow::bail!("database URL must start with sqlite: or postgres:")
    }
}
