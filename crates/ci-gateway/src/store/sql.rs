//! The SQL behind [`Store`], written once for SQLite and PostgreSQL.
//!
//! Both backends accept the same statements: `$n` placeholders (sqlx-sqlite reads them too),
//! `ON CONFLICT`, `RETURNING`, and JSON bound through [`Json`] (TEXT on SQLite, JSONB on
//! PostgreSQL). The one body is stamped out per backend by `impl_store!`, so a fix lands in both.
//! Only connecting and the migration trees differ.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use serde_json::{Map, Value};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::types::Json;
use sqlx::{ConnectOptions, Connection};
use time::OffsetDateTime;

use super::{
    EventKind, EventRecord, InsertOutcome, JobRecord, NewEvent, NewRun, RunChange, RunFilter,
    RunRecord, Store, StoreError, StoreResult,
};
use crate::audit::{AuditFilter, AuditRecord, HashInput, NewAudit, format_time, row_hash};
use crate::domain::{RunId, RunStatus, TenantId};

/// The store on an embedded SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

/// The store on PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

/// Turns a migration failure into a message an operator can act on.
fn migrate_error(e: sqlx::migrate::MigrateError) -> anyhow::Error {
    match e {
        sqlx::migrate::MigrateError::VersionMissing(v) => anyhow::anyhow!(
            "the database schema is newer than this binary (it has migration {v}, which this \
             binary does not know); run a newer ci-gateway"
        ),
        other => anyhow::Error::new(other).context("cannot apply database migrations"),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the SQLite file and migrates it.
    ///
    /// # Errors
    /// When the URL is malformed, the file cannot be opened, or the migrations fail.
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<SqliteStore> {
        let options = SqliteConnectOptions::from_str(url)
            .context("invalid SQLite database URL")?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // With WAL, NORMAL loses no committed data on a process crash (only, at worst, the
            // last transactions on a power cut) and spares an fsync per commit.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let file = options.get_filename();
        let lock_path = (file != std::path::Path::new(":memory:") && !url.contains("mode=memory"))
            .then(|| {
                let mut path = file.as_os_str().to_owned();
                path.push(".migrate-lock");
                std::path::PathBuf::from(path)
            });
        // SQLite has no advisory lock: replicas sharing the file take turns through a lock
        // file beside it while they open it (switching a new file to WAL needs the file to
        // itself) and migrate it, so two starting at once neither collide nor both create the
        // schema.
        let _opening = lock_beside(&lock_path).await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            .connect_with(options)
            .await
            .context("cannot open the SQLite database")?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(migrate_error)?;
        Ok(SqliteStore { pool })
    }
}

/// Takes an exclusive lock on `path` (created if missing), held until the file is dropped.
/// `None` for an in-memory database.
async fn lock_beside(path: &Option<std::path::PathBuf>) -> anyhow::Result<Option<std::fs::File>> {
    let Some(path) = path.clone() else {
        return Ok(None);
    };
    let file = tokio::task::spawn_blocking(move || -> anyhow::Result<std::fs::File> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        file.lock()
            .with_context(|| format!("cannot lock {}", path.display()))?;
        Ok(file)
    })
    .await
    .context("the migration lock task failed")??;
    Ok(Some(file))
}

impl PgStore {
    /// Connects to PostgreSQL and migrates it. Replicas starting together are safe: the migrator
    /// holds an advisory lock while it works.
    ///
    /// # Errors
    /// When the URL is malformed, the server cannot be reached, or the migrations fail.
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<PgStore> {
        // The URL may carry a password: never put it in an error.
        let options = PgConnectOptions::from_str(url).context("invalid PostgreSQL database URL")?;
        // One direct attempt first: the pool would keep retrying a refused connection until its
        // acquire timeout, and start-up should say at once that the server is not there.
        let probe = tokio::time::timeout(Duration::from_secs(10), options.connect()).await;
        match probe {
            Ok(Ok(conn)) => conn.close().await.context("cannot connect to PostgreSQL")?,
            Ok(Err(e)) => return Err(anyhow::Error::new(e).context("cannot connect to PostgreSQL")),
            Err(_) => anyhow::bail!("cannot connect to PostgreSQL: no answer within 10 s"),
        }
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .context("cannot connect to PostgreSQL")?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(migrate_error)?;
        Ok(PgStore { pool })
    }
}

#[derive(sqlx::FromRow)]
struct JobRow {
    tenant_id: String,
    job_id: String,
    project: String,
    display_name: String,
    environment: Option<String>,
    provider_id: String,
    provider_kind: String,
    provider_ref: Json<Value>,
}

impl From<JobRow> for JobRecord {
    fn from(r: JobRow) -> JobRecord {
        JobRecord {
            tenant_id: r.tenant_id,
            job_id: r.job_id,
            project: r.project,
            display_name: r.display_name,
            environment: r.environment,
            provider_id: r.provider_id,
            provider_kind: r.provider_kind,
            provider_ref: r.provider_ref.0,
        }
    }
}

#[derive(sqlx::FromRow)]
struct RunRow {
    run_id: String,
    tenant_id: String,
    job_id: String,
    status: String,
    provider_id: String,
    provider_kind: String,
    provider_run_ref: Option<Json<Value>>,
    parameters: Json<Map<String, Value>>,
    idempotency_key: Option<String>,
    request_fingerprint: String,
    created_at: OffsetDateTime,
    started_at: Option<OffsetDateTime>,
    finished_at: Option<OffsetDateTime>,
    cancel_requested_at: Option<OffsetDateTime>,
    stream_resume: Option<Json<Value>>,
    ended: bool,
}

impl TryFrom<RunRow> for RunRecord {
    type Error = StoreError;

    fn try_from(r: RunRow) -> Result<RunRecord, StoreError> {
        Ok(RunRecord {
            run_id: RunId::parse(&r.run_id)
                .map_err(|e| StoreError::Corrupt(format!("run id {:?}: {e}", r.run_id)))?,
            tenant_id: r.tenant_id,
            job_id: r.job_id,
            status: RunStatus::parse(&r.status).unwrap_or(RunStatus::Unknown),
            provider_id: r.provider_id,
            provider_kind: r.provider_kind,
            provider_run_ref: r.provider_run_ref.map(|j| j.0),
            parameters: r.parameters.0,
            idempotency_key: r.idempotency_key,
            request_fingerprint: r.request_fingerprint,
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            cancel_requested_at: r.cancel_requested_at,
            stream_resume: r.stream_resume.map(|j| j.0),
            ended: r.ended,
        })
    }
}

#[derive(sqlx::FromRow)]
struct EventRow {
    seq: i64,
    kind: String,
    data: Json<Value>,
    created_at: OffsetDateTime,
}

impl TryFrom<EventRow> for EventRecord {
    type Error = StoreError;

    fn try_from(r: EventRow) -> Result<EventRecord, StoreError> {
        Ok(EventRecord {
            seq: r.seq,
            kind: EventKind::parse(&r.kind)
                .ok_or_else(|| StoreError::Corrupt(format!("event kind {:?}", r.kind)))?,
            data: r.data.0,
            created_at: r.created_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct AuditRow {
    seq: i64,
    at: String,
    tenant_id: String,
    caller: String,
    auth_method: String,
    action: String,
    job_id: Option<String>,
    run_id: Option<String>,
    parameters: String,
    idempotency_key: Option<String>,
    decision: String,
    reason: Option<String>,
    request_id: Option<String>,
    source_addr: Option<String>,
    prev_hash: String,
    hash: String,
    outcome: Option<String>,
    outcome_at: Option<String>,
}

impl From<AuditRow> for AuditRecord {
    fn from(r: AuditRow) -> AuditRecord {
        AuditRecord {
            seq: r.seq,
            at: r.at,
            tenant_id: r.tenant_id,
            caller: r.caller,
            auth_method: r.auth_method,
            action: r.action,
            job_id: r.job_id,
            run_id: r.run_id,
            parameters: r.parameters,
            idempotency_key: r.idempotency_key,
            decision: r.decision,
            reason: r.reason,
            request_id: r.request_id,
            source_addr: r.source_addr,
            prev_hash: r.prev_hash,
            hash: r.hash,
            outcome: r.outcome,
            outcome_at: r.outcome_at,
        }
    }
}

const AUDIT_COLUMNS: &str = "seq, at, tenant_id, caller, auth_method, action, job_id, run_id, \
     parameters, idempotency_key, decision, reason, request_id, source_addr, prev_hash, hash, \
     outcome, outcome_at";

const RUN_COLUMNS: &str = "run_id, tenant_id, job_id, status, provider_id, provider_kind, \
     provider_run_ref, parameters, idempotency_key, request_fingerprint, created_at, started_at, \
     finished_at, cancel_requested_at, stream_resume, ended";

/// Stamps out the [`Store`] implementation for one backend.
///
/// `$time_key` wraps a timestamp (column or bound value) into what the backend orders by:
/// PostgreSQL compares `TIMESTAMPTZ` as is; SQLite stores RFC 3339 text whose fraction has no
/// fixed width (`…:00Z` sorts after `…:00.5Z`), so it compares a fixed-width rendering to the
/// millisecond, the same expression as its `ci_run_listing` index.
macro_rules! impl_store {
    ($store:ty, $db:ty, $begin:literal, $time_key:expr) => {
        impl $store {
            /// Appends an audit row inside `tx`. Taking the chain head first serializes
            /// appends: on PostgreSQL the head row stays locked until `tx` ends; on SQLite the
            /// first write takes the database's write lock.
            async fn audit_insert(
                tx: &mut sqlx::Transaction<'static, $db>,
                e: &NewAudit,
            ) -> StoreResult<i64> {
                let (seq, prev): (i64, String) = sqlx::query_as(
                    "UPDATE ci_audit_head SET seq = seq + 1 WHERE id = 1 RETURNING seq, hash",
                )
                .fetch_one(&mut **tx)
                .await?;
                let at = format_time(e.at);
                let parameters = Value::Object(e.parameters.clone()).to_string();
                let hash = row_hash(&HashInput {
                    seq,
                    at: &at,
                    tenant_id: e.tenant_id.as_ref(),
                    caller: &e.caller,
                    auth_method: &e.auth_method,
                    action: e.action.as_str(),
                    job_id: e.job_id.as_deref(),
                    run_id: e.run_id.as_deref(),
                    parameters: &parameters,
                    idempotency_key: e.idempotency_key.as_deref(),
                    decision: e.decision.as_str(),
                    reason: e.reason.as_deref(),
                    request_id: e.request_id.as_deref(),
                    source_addr: e.source_addr.as_deref(),
                    prev_hash: &prev,
                });
                let outcome_at = e.outcome.as_ref().map(|_| at.clone());
                sqlx::query(
                    "INSERT INTO ci_audit (seq, at, tenant_id, caller, auth_method, action, \
                     job_id, run_id, parameters, idempotency_key, decision, reason, request_id, \
                     source_addr, prev_hash, hash, outcome, outcome_at) VALUES ($1, $2, $3, $4, \
                     $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)",
                )
                .bind(seq)
                .bind(&at)
                .bind(e.tenant_id.as_ref())
                .bind(&e.caller)
                .bind(&e.auth_method)
                .bind(e.action.as_str())
                .bind(&e.job_id)
                .bind(&e.run_id)
                .bind(&parameters)
                .bind(&e.idempotency_key)
                .bind(e.decision.as_str())
                .bind(&e.reason)
                .bind(&e.request_id)
                .bind(&e.source_addr)
                .bind(&prev)
                .bind(&hash)
                .bind(&e.outcome)
                .bind(&outcome_at)
                .execute(&mut **tx)
                .await?;
                sqlx::query("UPDATE ci_audit_head SET hash = $1 WHERE id = 1")
                    .bind(&hash)
                    .execute(&mut **tx)
                    .await?;
                Ok(seq)
            }
        }

        #[async_trait]
        impl Store for $store {
            async fn ping(&self) -> StoreResult<()> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn sync_jobs(&self, tenant: &TenantId, jobs: &[JobRecord]) -> StoreResult<()> {
                let now = OffsetDateTime::now_utc();
                let mut tx = self.pool.begin_with($begin).await?;
                sqlx::query("UPDATE ci_job SET active = FALSE, updated_at = $2 WHERE tenant_id = $1")
                    .bind(tenant.as_ref())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                for job in jobs {
                    sqlx::query(
                        "INSERT INTO ci_job (tenant_id, job_id, project, display_name, environment, \
                         provider_id, provider_kind, provider_ref, active, updated_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, TRUE, $9) \
                         ON CONFLICT (tenant_id, job_id) DO UPDATE SET project = excluded.project, \
                         display_name = excluded.display_name, environment = excluded.environment, \
                         provider_id = excluded.provider_id, provider_kind = excluded.provider_kind, \
                         provider_ref = excluded.provider_ref, active = TRUE, \
                         updated_at = excluded.updated_at",
                    )
                    .bind(tenant.as_ref())
                    .bind(&job.job_id)
                    .bind(&job.project)
                    .bind(&job.display_name)
                    .bind(&job.environment)
                    .bind(&job.provider_id)
                    .bind(&job.provider_kind)
                    .bind(Json(&job.provider_ref))
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn list_jobs(&self, tenant: &TenantId) -> StoreResult<Vec<JobRecord>> {
                let rows = sqlx::query_as::<_, JobRow>(
                    "SELECT tenant_id, job_id, project, display_name, environment, provider_id, \
                     provider_kind, provider_ref FROM ci_job \
                     WHERE tenant_id = $1 AND active ORDER BY job_id",
                )
                .bind(tenant.as_ref())
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.into_iter().map(JobRecord::from).collect())
            }

            async fn get_job(
                &self,
                tenant: &TenantId,
                job_id: &str,
            ) -> StoreResult<Option<JobRecord>> {
                let row = sqlx::query_as::<_, JobRow>(
                    "SELECT tenant_id, job_id, project, display_name, environment, provider_id, \
                     provider_kind, provider_ref FROM ci_job \
                     WHERE tenant_id = $1 AND job_id = $2 AND active",
                )
                .bind(tenant.as_ref())
                .bind(job_id)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.map(JobRecord::from))
            }

            async fn insert_run(
                &self,
                run: &NewRun,
                first: &NewEvent,
                audit: &NewAudit,
            ) -> StoreResult<InsertOutcome> {
                let mut tx = self.pool.begin_with($begin).await?;
                // DO NOTHING covers the partial unique index on the idempotency key: a second
                // request with the same key inserts nothing and reads the first one's run.
                let inserted = sqlx::query(
                    "INSERT INTO ci_run (run_id, tenant_id, job_id, status, provider_id, \
                     provider_kind, parameters, idempotency_key, request_fingerprint, created_at, \
                     ingest_owner, ingest_lease_until) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(run.run_id.to_string())
                .bind(run.tenant_id.as_ref())
                .bind(&run.job_id)
                .bind(RunStatus::Queued.as_str())
                .bind(&run.provider_id)
                .bind(&run.provider_kind)
                .bind(Json(&run.parameters))
                .bind(&run.idempotency_key)
                .bind(&run.request_fingerprint)
                .bind(run.created_at)
                .bind(&run.ingest_owner)
                .bind(run.lease_until)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if inserted == 0 {
                    tx.rollback().await?;
                    let key = run.idempotency_key.as_deref().ok_or_else(|| {
                        StoreError::Corrupt(format!("run id {} inserted twice", run.run_id))
                    })?;
                    let existing = self.find_run_by_key(&run.tenant_id, &run.job_id, key).await?;
                    return Ok(existing.map_or(InsertOutcome::Vanished, InsertOutcome::Duplicate));
                }
                sqlx::query(
                    "INSERT INTO ci_run_event (run_id, seq, kind, data, created_at) \
                     VALUES ($1, 0, $2, $3, $4)",
                )
                .bind(run.run_id.to_string())
                .bind(first.kind.as_str())
                .bind(Json(&first.data))
                .bind(run.created_at)
                .execute(&mut *tx)
                .await?;
                // Fail closed: no audit row, no run (and so no upstream build).
                Self::audit_insert(&mut tx, audit).await?;
                let row = sqlx::query_as::<_, RunRow>(sqlx::AssertSqlSafe(format!(
                    "SELECT {RUN_COLUMNS} FROM ci_run WHERE run_id = $1"
                )))
                .bind(run.run_id.to_string())
                .fetch_one(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(InsertOutcome::Created(row.try_into()?))
            }

            async fn find_run_by_key(
                &self,
                tenant: &TenantId,
                job_id: &str,
                key: &str,
            ) -> StoreResult<Option<RunRecord>> {
                sqlx::query_as::<_, RunRow>(sqlx::AssertSqlSafe(format!(
                    "SELECT {RUN_COLUMNS} FROM ci_run \
                     WHERE tenant_id = $1 AND job_id = $2 AND idempotency_key = $3"
                )))
                .bind(tenant.as_ref())
                .bind(job_id)
                .bind(key)
                .fetch_optional(&self.pool)
                .await?
                .map(RunRecord::try_from)
                .transpose()
            }

            async fn get_run(
                &self,
                tenant: &TenantId,
                run_id: RunId,
            ) -> StoreResult<Option<RunRecord>> {
                sqlx::query_as::<_, RunRow>(sqlx::AssertSqlSafe(format!(
                    "SELECT {RUN_COLUMNS} FROM ci_run WHERE tenant_id = $1 AND run_id = $2"
                )))
                .bind(tenant.as_ref())
                .bind(run_id.to_string())
                .fetch_optional(&self.pool)
                .await?
                .map(RunRecord::try_from)
                .transpose()
            }

            async fn list_runs(
                &self,
                tenant: &TenantId,
                filter: &RunFilter,
                limit: i64,
            ) -> StoreResult<Vec<RunRecord>> {
                let (key_open, key_close): (&str, &str) = $time_key;
                let created = format!("{key_open}created_at{key_close}");
                let mut q = sqlx::QueryBuilder::<$db>::new(format!(
                    "SELECT {RUN_COLUMNS} FROM ci_run WHERE tenant_id = "
                ));
                q.push_bind(tenant.as_ref().to_owned());
                if let Some(job_id) = &filter.job_id {
                    q.push(" AND job_id = ").push_bind(job_id.clone());
                }
                if let Some(job_ids) = &filter.job_ids {
                    // An empty list matches nothing (and `IN ()` is not valid SQL).
                    q.push(" AND job_id IN (NULL");
                    for id in job_ids {
                        q.push(", ").push_bind(id.clone());
                    }
                    q.push(")");
                }
                if let Some(status) = filter.status {
                    q.push(" AND status = ").push_bind(status.as_str());
                }
                if let Some(t) = filter.created_after {
                    q.push(format!(" AND {created} >= {key_open}"))
                        .push_bind(t)
                        .push(key_close);
                }
                if let Some(t) = filter.created_before {
                    q.push(format!(" AND {created} < {key_open}"))
                        .push_bind(t)
                        .push(key_close);
                }
                if let Some((t, run_id)) = filter.after {
                    // (key, run_id) < (t, id), spelled so that `key <= t` bounds the index scan.
                    q.push(format!(" AND {created} <= {key_open}"))
                        .push_bind(t)
                        .push(format!("{key_close} AND ({created} < {key_open}"))
                        .push_bind(t)
                        .push(format!("{key_close} OR run_id < "))
                        .push_bind(run_id.to_string())
                        .push(")");
                }
                q.push(format!(" ORDER BY {created} DESC, run_id DESC LIMIT "))
                    .push_bind(limit);
                q.build_query_as::<RunRow>()
                    .fetch_all(&self.pool)
                    .await?
                    .into_iter()
                    .map(RunRecord::try_from)
                    .collect()
            }

            async fn set_provider_run_ref(&self, run_id: RunId, run_ref: &Value) -> StoreResult<()> {
                sqlx::query("UPDATE ci_run SET provider_run_ref = $2 WHERE run_id = $1")
                    .bind(run_id.to_string())
                    .bind(Json(run_ref))
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn delete_run(&self, run_id: RunId) -> StoreResult<()> {
                let mut tx = self.pool.begin_with($begin).await?;
                sqlx::query("DELETE FROM ci_run_event WHERE run_id = $1")
                    .bind(run_id.to_string())
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM ci_run WHERE run_id = $1")
                    .bind(run_id.to_string())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn append_events(
                &self,
                run_id: RunId,
                owner: &str,
                events: &[NewEvent],
                change: &RunChange,
            ) -> StoreResult<Vec<EventRecord>> {
                let id = run_id.to_string();
                let now = OffsetDateTime::now_utc();
                let mut tx = self.pool.begin_with($begin).await?;
                let next: i64 = sqlx::query_scalar(
                    "SELECT COALESCE(MAX(seq), -1) + 1 FROM ci_run_event WHERE run_id = $1",
                )
                .bind(&id)
                .fetch_one(&mut *tx)
                .await?;
                let stored: Vec<EventRecord> = events
                    .iter()
                    .zip(next..)
                    .map(|(e, seq)| EventRecord {
                        seq,
                        kind: e.kind,
                        data: e.data.clone(),
                        created_at: now,
                    })
                    .collect();
                // Bounded batches keep each statement under the backends' parameter limits.
                for chunk in stored.chunks(500) {
                    let mut insert = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO ci_run_event (run_id, seq, kind, data, created_at) ",
                    );
                    insert.push_values(chunk, |mut b, e| {
                        b.push_bind(&id)
                            .push_bind(e.seq)
                            .push_bind(e.kind.as_str())
                            .push_bind(Json(&e.data))
                            .push_bind(e.created_at);
                    });
                    insert.build().execute(&mut *tx).await?;
                }
                let updated = sqlx::query(
                    "UPDATE ci_run SET status = COALESCE($2, status), \
                     started_at = COALESCE(started_at, $3), \
                     finished_at = COALESCE(finished_at, $4), \
                     stream_resume = COALESCE($5, stream_resume), \
                     ended = (ended OR $6) WHERE run_id = $1 AND ingest_owner = $7",
                )
                .bind(&id)
                .bind(change.status.map(RunStatus::as_str))
                .bind(change.started_at)
                .bind(change.finished_at)
                .bind(change.stream_resume.as_ref().map(Json))
                .bind(change.ended)
                .bind(owner)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if updated == 0 {
                    // Fenced: a replica that lost the lease must not add to the stream.
                    tx.rollback().await?;
                    return Err(StoreError::LeaseLost);
                }
                tx.commit().await?;
                Ok(stored)
            }

            async fn events_after(
                &self,
                run_id: RunId,
                after: i64,
                limit: i64,
            ) -> StoreResult<Vec<EventRecord>> {
                sqlx::query_as::<_, EventRow>(
                    "SELECT seq, kind, data, created_at FROM ci_run_event \
                     WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                )
                .bind(run_id.to_string())
                .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .map(EventRecord::try_from)
                .collect()
            }

            async fn end_event(&self, run_id: RunId) -> StoreResult<Option<EventRecord>> {
                sqlx::query_as::<_, EventRow>(
                    "SELECT seq, kind, data, created_at FROM ci_run_event \
                     WHERE run_id = $1 AND kind = 'end' ORDER BY seq DESC LIMIT 1",
                )
                .bind(run_id.to_string())
                .fetch_optional(&self.pool)
                .await?
                .map(EventRecord::try_from)
                .transpose()
            }

            async fn unsubmitted_runs(&self, before: OffsetDateTime) -> StoreResult<Vec<RunRecord>> {
                let (key_open, key_close): (&str, &str) = $time_key;
                sqlx::query_as::<_, RunRow>(sqlx::AssertSqlSafe(format!(
                    "SELECT {RUN_COLUMNS} FROM ci_run WHERE NOT ended \
                     AND provider_run_ref IS NULL \
                     AND {key_open}created_at{key_close} < {key_open}$1{key_close}"
                )))
                .bind(before)
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .map(RunRecord::try_from)
                .collect()
            }

            async fn claim_run(
                &self,
                run_id: RunId,
                owner: &str,
                until: OffsetDateTime,
                now: OffsetDateTime,
            ) -> StoreResult<bool> {
                let claimed = sqlx::query(
                    "UPDATE ci_run SET ingest_owner = $2, ingest_lease_until = $3 \
                     WHERE run_id = $1 AND NOT ended AND (ingest_owner IS NULL \
                     OR ingest_owner = $2 OR ingest_lease_until IS NULL OR ingest_lease_until < $4)",
                )
                .bind(run_id.to_string())
                .bind(owner)
                .bind(until)
                .bind(now)
                .execute(&self.pool)
                .await?
                .rows_affected();
                Ok(claimed == 1)
            }

            async fn renew_run_leases(&self, owner: &str, until: OffsetDateTime) -> StoreResult<u64> {
                Ok(sqlx::query(
                    "UPDATE ci_run SET ingest_lease_until = $2 WHERE ingest_owner = $1 AND NOT ended",
                )
                .bind(owner)
                .bind(until)
                .execute(&self.pool)
                .await?
                .rows_affected())
            }

            async fn release_run_leases(&self, owner: &str) -> StoreResult<u64> {
                Ok(sqlx::query(
                    "UPDATE ci_run SET ingest_owner = NULL, ingest_lease_until = NULL \
                     WHERE ingest_owner = $1 AND NOT ended",
                )
                .bind(owner)
                .execute(&self.pool)
                .await?
                .rows_affected())
            }

            async fn orphaned_runs(&self, now: OffsetDateTime) -> StoreResult<Vec<RunRecord>> {
                sqlx::query_as::<_, RunRow>(sqlx::AssertSqlSafe(format!(
                    "SELECT {RUN_COLUMNS} FROM ci_run WHERE NOT ended \
                     AND provider_run_ref IS NOT NULL AND (ingest_owner IS NULL \
                     OR ingest_lease_until IS NULL OR ingest_lease_until < $1) ORDER BY created_at"
                )))
                .bind(now)
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .map(RunRecord::try_from)
                .collect()
            }

            async fn acquire_lease(
                &self,
                name: &str,
                holder: &str,
                until: OffsetDateTime,
                now: OffsetDateTime,
            ) -> StoreResult<bool> {
                let held = sqlx::query(
                    "INSERT INTO ci_lease (name, holder, expires_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
                     expires_at = excluded.expires_at \
                     WHERE ci_lease.holder = excluded.holder OR ci_lease.expires_at < $4",
                )
                .bind(name)
                .bind(holder)
                .bind(until)
                .bind(now)
                .execute(&self.pool)
                .await?
                .rows_affected();
                Ok(held == 1)
            }

            async fn release_lease(&self, name: &str, holder: &str) -> StoreResult<()> {
                sqlx::query("DELETE FROM ci_lease WHERE name = $1 AND holder = $2")
                    .bind(name)
                    .bind(holder)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn prune_events(&self, cutoff: OffsetDateTime) -> StoreResult<u64> {
                Ok(sqlx::query(
                    "DELETE FROM ci_run_event WHERE kind <> 'end' AND run_id IN \
                     (SELECT run_id FROM ci_run WHERE ended AND finished_at < $1)",
                )
                .bind(cutoff)
                .execute(&self.pool)
                .await?
                .rows_affected())
            }

            async fn append_audit(&self, entry: &NewAudit) -> StoreResult<i64> {
                let mut tx = self.pool.begin_with($begin).await?;
                let seq = Self::audit_insert(&mut tx, entry).await?;
                tx.commit().await?;
                Ok(seq)
            }

            async fn set_audit_outcome(&self, seq: i64, outcome: &str) -> StoreResult<()> {
                sqlx::query(
                    "UPDATE ci_audit SET outcome = $2, outcome_at = $3 \
                     WHERE seq = $1 AND outcome IS NULL",
                )
                .bind(seq)
                .bind(outcome)
                .bind(format_time(OffsetDateTime::now_utc()))
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn set_trigger_outcome(&self, run_id: RunId, outcome: &str) -> StoreResult<()> {
                sqlx::query(
                    "UPDATE ci_audit SET outcome = $2, outcome_at = $3 \
                     WHERE run_id = $1 AND action = 'trigger' AND outcome IS NULL",
                )
                .bind(run_id.to_string())
                .bind(outcome)
                .bind(format_time(OffsetDateTime::now_utc()))
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn list_audit(
                &self,
                tenant: &TenantId,
                filter: &AuditFilter,
            ) -> StoreResult<Vec<AuditRecord>> {
                let rows = sqlx::query_as::<_, AuditRow>(sqlx::AssertSqlSafe(format!(
                    "SELECT {AUDIT_COLUMNS} FROM ci_audit WHERE tenant_id = $1 AND seq > $2 \
                     AND ($3 IS NULL OR caller = $3) AND ($4 IS NULL OR job_id = $4) \
                     AND ($5 IS NULL OR action = $5) AND ($6 IS NULL OR at >= $6) \
                     AND ($7 IS NULL OR at < $7) ORDER BY seq LIMIT $8"
                )))
                .bind(tenant.as_ref())
                .bind(filter.after_seq)
                .bind(&filter.caller)
                .bind(&filter.job_id)
                .bind(&filter.action)
                .bind(&filter.since)
                .bind(&filter.until)
                .bind(filter.limit)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.into_iter().map(AuditRecord::from).collect())
            }

            async fn audit_chain(&self, after: i64, limit: i64) -> StoreResult<Vec<AuditRecord>> {
                let rows = sqlx::query_as::<_, AuditRow>(sqlx::AssertSqlSafe(format!(
                    "SELECT {AUDIT_COLUMNS} FROM ci_audit WHERE seq > $1 ORDER BY seq LIMIT $2"
                )))
                .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.into_iter().map(AuditRecord::from).collect())
            }

            async fn audit_head(&self) -> StoreResult<(i64, String)> {
                Ok(sqlx::query_as("SELECT seq, hash FROM ci_audit_head WHERE id = 1")
                    .fetch_one(&self.pool)
                    .await?)
            }

            async fn mark_cancel_requested(
                &self,
                run_id: RunId,
                at: OffsetDateTime,
            ) -> StoreResult<()> {
                sqlx::query(
                    "UPDATE ci_run SET cancel_requested_at = COALESCE(cancel_requested_at, $2) \
                     WHERE run_id = $1",
                )
                .bind(run_id.to_string())
                .bind(at)
                .execute(&self.pool)
                .await?;
                Ok(())
            }
        }
    };
}

// SQLite: take the write lock when the transaction begins. A deferred transaction that reads
// and then writes fails at once with "database is locked" when another connection wrote in
// between (the busy timeout cannot help it); an immediate one waits its turn.
impl_store!(
    SqliteStore,
    sqlx::Sqlite,
    "BEGIN IMMEDIATE",
    ("strftime('%Y-%m-%dT%H:%M:%f', ", ")")
);
impl_store!(PgStore, sqlx::Postgres, "BEGIN", ("", ""));

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::domain::TenantId;
    use crate::store::RunFilter;

    async fn store() -> (SqliteStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        (SqliteStore::connect(&url, 2).await.unwrap(), dir)
    }

    /// The audit row of a test run's trigger.
    fn test_audit(run: &NewRun) -> crate::audit::NewAudit {
        crate::audit::NewAudit {
            at: run.created_at,
            tenant_id: TenantId::default_tenant(),
            caller: "t".into(),
            auth_method: "api_token".into(),
            action: crate::audit::AuditAction::Trigger,
            job_id: Some(run.job_id.clone()),
            run_id: Some(run.run_id.to_string()),
            parameters: Map::new(),
            idempotency_key: None,
            decision: crate::audit::Decision::Allowed,
            reason: None,
            request_id: None,
            source_addr: None,
            outcome: None,
        }
    }

    async fn new_run(store: &SqliteStore, owner: &str) -> RunId {
        let tenant = TenantId::default_tenant();
        let job = JobRecord {
            tenant_id: "default".into(),
            job_id: "job_a".into(),
            project: "p".into(),
            display_name: "A".into(),
            environment: None,
            provider_id: "ci".into(),
            provider_kind: "concourse".into(),
            provider_ref: json!({}),
        };
        store.sync_jobs(&tenant, &[job]).await.unwrap();
        let now = OffsetDateTime::now_utc();
        let run = NewRun {
            run_id: RunId::generate(),
            tenant_id: tenant,
            job_id: "job_a".into(),
            provider_id: "ci".into(),
            provider_kind: "concourse".into(),
            parameters: Map::new(),
            idempotency_key: None,
            request_fingerprint: "f".into(),
            created_at: now,
            ingest_owner: owner.into(),
            lease_until: now + time::Duration::seconds(30),
        };
        let first = NewEvent {
            kind: EventKind::Status,
            data: json!({"status": "queued"}),
        };
        store
            .insert_run(&run, &first, &test_audit(&run))
            .await
            .unwrap();
        store
            .set_provider_run_ref(run.run_id, &json!({"build_id": 1}))
            .await
            .unwrap();
        run.run_id
    }

    #[tokio::test]
    async fn a_released_run_is_claimed_by_another_replica_which_alone_may_append() {
        let (store, _dir) = store().await;
        let run = new_run(&store, "a").await;
        let log = [NewEvent {
            kind: EventKind::Log,
            data: json!({"line": "x"}),
        }];
        let now = OffsetDateTime::now_utc();
        let later = now + time::Duration::seconds(30);

        assert!(
            store
                .append_events(run, "a", &log, &RunChange::default())
                .await
                .is_ok()
        );
        assert!(
            !store.claim_run(run, "b", later, now).await.unwrap(),
            "lease held by a"
        );
        assert!(store.orphaned_runs(now).await.unwrap().is_empty());
        assert_eq!(store.release_run_leases("a").await.unwrap(), 1);
        assert_eq!(store.orphaned_runs(now).await.unwrap().len(), 1);
        assert!(store.claim_run(run, "b", later, now).await.unwrap());

        let fenced = store
            .append_events(run, "a", &log, &RunChange::default())
            .await;
        let stored = store
            .append_events(run, "b", &log, &RunChange::default())
            .await
            .unwrap();

        assert!(matches!(fenced, Err(StoreError::LeaseLost)), "{fenced:?}");
        assert_eq!(stored[0].seq, 2);
        assert!(store.orphaned_runs(now).await.unwrap().is_empty());
        // An expired lease can be taken over.
        let much_later = later + time::Duration::seconds(1);
        assert!(
            store
                .claim_run(
                    run,
                    "c",
                    much_later + time::Duration::seconds(30),
                    much_later
                )
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn the_audit_chain_verifies_and_an_edited_row_is_named() {
        let (store, _dir) = store().await;
        new_run(&store, "a").await;
        new_run(&store, "a").await;
        new_run(&store, "a").await;
        assert_eq!(
            crate::audit::verify(&store).await.unwrap(),
            crate::audit::Verification::Intact { rows: 3 }
        );
        sqlx::query("UPDATE ci_audit SET caller = 'mallory' WHERE seq = 2")
            .execute(&store.pool)
            .await
            .unwrap();
        let crate::audit::Verification::Broken { seq, .. } =
            crate::audit::verify(&store).await.unwrap()
        else {
            panic!("tampering not found")
        };
        assert_eq!(seq, 2);
    }

    #[tokio::test]
    async fn runs_list_newest_first_below_the_second_and_resume_after_a_keyset_position() {
        // Arrange: creation times whose RFC 3339 text does not sort like time
        // (`…:00Z` > `…:00.5Z` > `…:00.12Z` as text).
        let (store, _dir) = store().await;
        let tenant = TenantId::default_tenant();
        let base = time::macros::datetime!(2026-12-03 17:00:00 UTC);
        // A run of now, outside the window below; it also creates the job.
        new_run(&store, "a").await;
        let first = NewEvent {
            kind: EventKind::Status,
            data: json!({"status": "queued"}),
        };
        let mut ids = Vec::new();
        for ms in [0, 500, 120, 1000] {
            let run = NewRun {
                run_id: RunId::generate(),
                tenant_id: tenant.clone(),
                job_id: "job_a".into(),
                provider_id: "ci".into(),
                provider_kind: "concourse".into(),
                parameters: Map::new(),
                idempotency_key: None,
                request_fingerprint: "f".into(),
                created_at: base + time::Duration::milliseconds(ms),
                ingest_owner: "a".into(),
                lease_until: base,
            };
            store
                .insert_run(&run, &first, &test_audit(&run))
                .await
                .unwrap();
            ids.push((ms, run.run_id));
        }
        let window = RunFilter {
            created_before: Some(base + time::Duration::seconds(2)),
            ..RunFilter::default()
        };

        // Act
        let all = store.list_runs(&tenant, &window, 10).await.unwrap();
        let page = store.list_runs(&tenant, &window, 2).await.unwrap();
        let last = page.last().unwrap();
        let rest = store
            .list_runs(
                &tenant,
                &RunFilter {
                    after: Some((last.created_at, last.run_id)),
                    ..window.clone()
                },
                10,
            )
            .await
            .unwrap();

        // Assert
        let order: Vec<RunId> = all.iter().map(|r| r.run_id).collect();
        let by_time = |ms: i64| ids.iter().find(|(m, _)| *m == ms).unwrap().1;
        assert_eq!(
            order,
            [by_time(1000), by_time(500), by_time(120), by_time(0)]
        );
        let paged: Vec<RunId> = page.iter().chain(&rest).map(|r| r.run_id).collect();
        assert_eq!(paged, order);
    }

    #[tokio::test]
    async fn pruning_drops_old_logs_of_ended_runs_but_keeps_runs_and_their_end() {
        let (store, _dir) = store().await;
        let old = new_run(&store, "a").await;
        let open = new_run(&store, "a").await;
        let log = NewEvent {
            kind: EventKind::Log,
            data: json!({"line": "x"}),
        };
        let end = NewEvent {
            kind: EventKind::End,
            data: json!({"status": "succeeded"}),
        };
        let finished = RunChange {
            status: Some(RunStatus::Succeeded),
            finished_at: Some(OffsetDateTime::now_utc() - time::Duration::days(40)),
            ended: true,
            ..RunChange::default()
        };
        store
            .append_events(old, "a", &[log.clone(), end], &finished)
            .await
            .unwrap();
        store
            .append_events(open, "a", &[log], &RunChange::default())
            .await
            .unwrap();

        let pruned = store
            .prune_events(OffsetDateTime::now_utc() - time::Duration::days(30))
            .await
            .unwrap();

        assert_eq!(pruned, 2, "the old run's queued status and log line");
        let kept: Vec<EventKind> = store
            .events_after(old, -1, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kept, [EventKind::End]);
        assert_eq!(store.events_after(open, -1, 10).await.unwrap().len(), 2);
        let tenant = TenantId::default_tenant();
        assert!(store.get_run(&tenant, old).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn unsubmitted_runs_are_the_old_open_ones_without_a_provider_reference() {
        let (store, _dir) = store().await;
        let submitted = new_run(&store, "a").await;
        let stuck = new_run(&store, "a").await;
        sqlx::query("UPDATE ci_run SET provider_run_ref = NULL WHERE run_id = $1")
            .bind(stuck.to_string())
            .execute(&store.pool)
            .await
            .unwrap();
        let now = OffsetDateTime::now_utc();

        let old_enough = store
            .unsubmitted_runs(now + time::Duration::seconds(1))
            .await
            .unwrap();
        let too_recent = store
            .unsubmitted_runs(now - time::Duration::minutes(2))
            .await
            .unwrap();

        let ids: Vec<RunId> = old_enough.iter().map(|r| r.run_id).collect();
        assert_eq!(ids, [stuck]);
        assert_ne!(ids, [submitted]);
        assert!(too_recent.is_empty());
    }

    #[tokio::test]
    async fn the_maintenance_lease_has_one_holder_until_it_expires_or_is_released() {
        let (store, _dir) = store().await;
        let now = OffsetDateTime::now_utc();
        let until = now + time::Duration::seconds(10);

        assert!(store.acquire_lease("m", "a", until, now).await.unwrap());
        assert!(
            store.acquire_lease("m", "a", until, now).await.unwrap(),
            "renewal"
        );
        assert!(!store.acquire_lease("m", "b", until, now).await.unwrap());
        let after = until + time::Duration::seconds(1);
        assert!(
            store
                .acquire_lease("m", "b", after + time::Duration::seconds(10), after)
                .await
                .unwrap()
        );
        store.release_lease("m", "b").await.unwrap();
        assert!(store.acquire_lease("m", "a", until, now).await.unwrap());
    }
}
