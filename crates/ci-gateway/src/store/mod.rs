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

use crate::audit::{AuditFilter, AuditRecord, NewAudit};
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
    /// This replica no longer holds the run's ingest lease: another replica follows it now.
    #[error("the run's ingest lease is held by another replica")]
    LeaseLost,
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

impl RunRecord {
    /// True once nothing about the run changes any more: a final status, or an `unknown` one
    /// the gateway gave up on (its stream has ended).
    pub fn is_finished(&self) -> bool {
        self.ended || self.status.is_terminal()
    }
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
    /// The replica that accepts it, and so follows its provider stream first.
    pub ingest_owner: String,
    /// Until when that replica's claim holds without renewal.
    pub lease_until: OffsetDateTime,
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
    /// A run held the key, but it was gone before it could be read (its trigger was refused and
    /// it was removed): try again.
    Vanished,
}

/// Which runs [`Store::list_runs`] returns; every field narrows the list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunFilter {
    /// Only this job's runs.
    pub job_id: Option<String>,
    /// Only runs of these jobs (a caller limited to some projects); `None` for any job.
    pub job_ids: Option<Vec<String>>,
    /// Only runs in this status.
    pub status: Option<RunStatus>,
    /// Only runs created at or after this instant.
    pub created_after: Option<OffsetDateTime>,
    /// Only runs created strictly before this instant.
    pub created_before: Option<OffsetDateTime>,
    /// Keyset position: only runs that sort after this one, newest first, i.e. created
    /// earlier, or at the same instant with a smaller run id.
    pub after: Option<(OffsetDateTime, RunId)>,
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

    /// Creates a run together with its first event and its audit row, in one transaction, or
    /// finds the run that already holds the same idempotency key for the same job (then nothing
    /// is written, the audit row neither).
    ///
    /// # Errors
    /// When any of the three cannot be written: then none is (the audit log fails closed).
    async fn insert_run(
        &self,
        run: &NewRun,
        first: &NewEvent,
        audit: &NewAudit,
    ) -> StoreResult<InsertOutcome>;

    /// Appends one audit row to the chain; returns its `seq`.
    async fn append_audit(&self, entry: &NewAudit) -> StoreResult<i64>;

    /// Records the upstream outcome of the audit row `seq`, once (a later call changes nothing).
    async fn set_audit_outcome(&self, seq: i64, outcome: &str) -> StoreResult<()>;

    /// Records the upstream outcome of the trigger audit row of `run_id`, once.
    async fn set_trigger_outcome(&self, run_id: RunId, outcome: &str) -> StoreResult<()>;

    /// The tenant's audit rows matching `filter`, in chain order.
    async fn list_audit(
        &self,
        tenant: &TenantId,
        filter: &AuditFilter,
    ) -> StoreResult<Vec<AuditRecord>>;

    /// Up to `limit` rows of the whole chain (every tenant) with `seq > after`, in order.
    async fn audit_chain(&self, after: i64, limit: i64) -> StoreResult<Vec<AuditRecord>>;

    /// The chain head: how many rows were appended and the last one's hash.
    async fn audit_head(&self) -> StoreResult<(i64, String)>;

    /// The run holding an idempotency key for a job.
    async fn find_run_by_key(
        &self,
        tenant: &TenantId,
        job_id: &str,
        key: &str,
    ) -> StoreResult<Option<RunRecord>>;

    /// One run.
    async fn get_run(&self, tenant: &TenantId, run_id: RunId) -> StoreResult<Option<RunRecord>>;

    /// Up to `limit` runs of a tenant matching `filter`, newest first: by creation time
    /// descending, then run id descending, a total order that keyset paging can resume
    /// (SQLite compares creation times to the millisecond, PostgreSQL to the microsecond).
    async fn list_runs(
        &self,
        tenant: &TenantId,
        filter: &RunFilter,
        limit: i64,
    ) -> StoreResult<Vec<RunRecord>>;

    /// Records the provider's reference once the provider accepted the run.
    async fn set_provider_run_ref(&self, run_id: RunId, run_ref: &Value) -> StoreResult<()>;

    /// Removes a run and its events: only for a run the provider certainly never started, so
    /// that the caller's retry with the same idempotency key can try again.
    async fn delete_run(&self, run_id: RunId) -> StoreResult<()>;

    /// Appends events (numbered after the last one) and applies `change`, atomically, if
    /// `owner` still holds the run's ingest lease. Returns the stored events.
    ///
    /// # Errors
    /// [`StoreError::LeaseLost`] when another replica holds the lease; nothing is written.
    async fn append_events(
        &self,
        run_id: RunId,
        owner: &str,
        events: &[NewEvent],
        change: &RunChange,
    ) -> StoreResult<Vec<EventRecord>>;

    /// Takes the run's ingest lease for `owner` until `until`, if it is free, expired at `now`,
    /// or already `owner`'s. Returns whether `owner` holds it.
    async fn claim_run(
        &self,
        run_id: RunId,
        owner: &str,
        until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> StoreResult<bool>;

    /// Extends every ingest lease `owner` holds on runs that have not ended.
    async fn renew_run_leases(&self, owner: &str, until: OffsetDateTime) -> StoreResult<u64>;

    /// Gives up every ingest lease `owner` holds (on a clean shutdown), so another replica, or
    /// this one restarted, takes the runs over at once.
    async fn release_run_leases(&self, owner: &str) -> StoreResult<u64>;

    /// Runs that have not ended, were accepted by their provider, and that no live replica
    /// follows: never claimed, or their lease expired at `now`.
    async fn orphaned_runs(&self, now: OffsetDateTime) -> StoreResult<Vec<RunRecord>>;

    /// Takes or renews the named lease for `holder` until `until`, if it is free, expired at
    /// `now`, or already `holder`'s. Returns whether `holder` holds it.
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> StoreResult<bool>;

    /// Gives up the named lease if `holder` holds it.
    async fn release_lease(&self, name: &str, holder: &str) -> StoreResult<()>;

    /// Deletes the log and status events of runs that ended before `cutoff`, keeping each
    /// run's row and its `end` event. Returns how many events went.
    async fn prune_events(&self, cutoff: OffsetDateTime) -> StoreResult<u64>;

    /// Up to `limit` events with `seq > after`, in order.
    async fn events_after(
        &self,
        run_id: RunId,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<EventRecord>>;

    /// The run's `end` event, once stored.
    async fn end_event(&self, run_id: RunId) -> StoreResult<Option<EventRecord>>;

    /// Runs that have not ended, were never accepted by their provider, and were created before
    /// `before`: submissions that a dying replica left unfinished.
    async fn unsubmitted_runs(&self, before: OffsetDateTime) -> StoreResult<Vec<RunRecord>>;

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
