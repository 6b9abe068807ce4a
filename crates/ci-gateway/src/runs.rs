//! The run engine: triggering, canceling, and ingesting each run's events from its provider.
//!
//! Every run that has not ended has one ingester task in the process. It follows the provider's
//! event stream, turns it into the gateway's events, and stores each batch together with the
//! run's new status and the stream's resume point in one transaction. So any number of SSE
//! watchers share one upstream stream, a finished run replays from the store, and after a
//! restart the ingester continues exactly where the last stored batch ended.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::audit::{Decision, NewAudit};
use crate::bus::EventBus;
use crate::config::ClusterSettings;
use crate::domain::{IdempotencyKey, RunId, RunStatus, TenantId};
use crate::http::error::ApiError;
use crate::provider::{CiProvider, EventBatch, ProviderError, ProviderEvent};
use crate::store::{
    EventKind, InsertOutcome, JobRecord, NewEvent, NewRun, RunChange, RunRecord, Store, StoreError,
};

/// The lease whose holder does the cluster's background work.
const MAINTENANCE_LEASE: &str = "maintenance";

/// The providers of the allowlist, by name.
pub type Providers = HashMap<String, Arc<dyn CiProvider>>;

/// What a caller asked for when triggering a run.
#[derive(Debug, Clone, Default)]
pub struct TriggerRequest {
    /// The job's parameters.
    pub parameters: Map<String, Value>,
    /// The caller's idempotency key.
    pub idempotency_key: Option<IdempotencyKey>,
}

/// The outcome of a trigger.
#[derive(Debug)]
pub struct Triggered {
    /// The run.
    pub run: RunRecord,
    /// False when an earlier request with the same idempotency key made it.
    pub created: bool,
}

/// Triggers, cancels and follows runs.
pub struct RunService {
    /// Where runs and their events live.
    pub store: Arc<dyn Store>,
    /// The allowlist's providers.
    providers: Providers,
    /// Wakes this process's SSE streams.
    pub bus: Arc<EventBus>,
    /// Runs that have an ingester task in this process. A std Mutex: only inserts and removes.
    ingesting: Mutex<HashSet<RunId>>,
    /// Cancelled on shutdown: ingesters and streams stop; the store keeps where they were.
    pub shutdown: CancellationToken,
    /// This process's name in leases: unique per start.
    replica: String,
    /// Lease lifetimes and retention.
    cluster: ClusterSettings,
}

/// A digest of the parts of a trigger request that must match for a retry to be the same request.
fn fingerprint(job_id: &str, parameters: &Map<String, Value>) -> String {
    // serde_json's Map is ordered by key, so equal requests serialize identically.
    let canonical = json!({ "job_id": job_id, "parameters": parameters }).to_string();
    let digest = Sha256::digest(canonical.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn status_event(status: RunStatus) -> NewEvent {
    NewEvent {
        kind: EventKind::Status,
        data: json!({ "status": status }),
    }
}

impl RunService {
    /// Builds the service; call [`RunService::resume_open_runs`] to pick up unfinished runs.
    pub fn new(
        store: Arc<dyn Store>,
        providers: Providers,
        shutdown: CancellationToken,
        cluster: ClusterSettings,
    ) -> Self {
        RunService {
            store,
            providers,
            bus: Arc::new(EventBus::default()),
            ingesting: Mutex::new(HashSet::new()),
            shutdown,
            replica: format!("replica-{}", ulid::Ulid::generate()),
            cluster,
        }
    }

    /// This process's name in leases.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// When a lease taken now runs out.
    fn lease_until(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc() + self.cluster.lease_ttl()
    }

    /// The providers, for readiness checks.
    pub fn providers(&self) -> &Providers {
        &self.providers
    }

    fn provider(&self, name: &str) -> Result<&Arc<dyn CiProvider>, ApiError> {
        self.providers.get(name).ok_or_else(|| {
            ApiError::Provider(ProviderError::InvalidRef(format!(
                "provider {name} is not configured"
            )))
        })
    }

    /// Appends a standalone audit row for a trigger that creates no run: an idempotent replay
    /// (`allowed`, outcome `replayed`) or a refusal (`denied`, with the error's code).
    ///
    /// # Errors
    /// For a replay, when the row cannot be written (fail closed); a refusal stands anyway.
    async fn audit_without_run(
        &self,
        mut audit: NewAudit,
        result: Result<Triggered, ApiError>,
    ) -> Result<Triggered, ApiError> {
        match &result {
            Ok(t) => {
                audit.run_id = Some(t.run.run_id.to_string());
                audit.outcome = Some("replayed".to_owned());
                self.store.append_audit(&audit).await?;
            }
            Err(e) => {
                audit.decision = Decision::Denied;
                audit.reason = Some(e.code().to_owned());
                if let Err(store) = self.store.append_audit(&audit).await {
                    tracing::error!(error = %store, "cannot record a refused trigger");
                }
            }
        }
        result
    }

    /// Triggers a run of `job`, or returns the run an earlier request with the same idempotency
    /// key made. Exactly one audit row is appended (`audit`, completed here): for a new run in
    /// the same transaction as the run, before the provider is called, so that no build starts
    /// unless its audit row is committed; the provider's answer is recorded afterwards as the
    /// row's outcome.
    ///
    /// # Errors
    /// 422 for parameters the job does not take or a reused key with other parameters; provider
    /// and store failures (including an audit log that cannot be written).
    #[tracing::instrument(skip_all, fields(job_id = %job.job_id))]
    pub async fn trigger(
        self: &Arc<Self>,
        tenant: &TenantId,
        job: &JobRecord,
        request: TriggerRequest,
        audit: NewAudit,
    ) -> Result<Triggered, ApiError> {
        // Detached: a caller that hangs up mid-request must not leave a run half-submitted
        // (or an upstream build nobody follows); the work finishes and the retry finds it.
        let this = Arc::clone(self);
        let (tenant, job) = (tenant.clone(), job.clone());
        tokio::spawn(async move { this.trigger_detached(&tenant, &job, request, audit).await })
            .await
            .map_err(|e| ApiError::Internal(format!("the trigger task failed: {e}")))?
    }

    async fn trigger_detached(
        self: &Arc<Self>,
        tenant: &TenantId,
        job: &JobRecord,
        request: TriggerRequest,
        audit: NewAudit,
    ) -> Result<Triggered, ApiError> {
        self.provider(&job.provider_id)?;
        let fingerprint = fingerprint(&job.job_id, &request.parameters);
        let key = request.idempotency_key.map(|k| k.as_ref().to_owned());
        // A key changes hands only when the trigger that held it was refused upstream; then each
        // waiting request makes its own attempt, one at a time. Bounded, to answer in time.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::time::Instant::now() < deadline {
            if let Some(key) = &key
                && let Some(run) = self.store.find_run_by_key(tenant, &job.job_id, key).await?
            {
                match self.replay(tenant, run, &fingerprint).await {
                    Some(result) => return self.audit_without_run(audit, result).await,
                    None => continue,
                }
            }
            // No job takes parameters until jobs can declare them: refuse rather than drop them.
            if !request.parameters.is_empty() {
                let names: Vec<&str> = request.parameters.keys().map(String::as_str).collect();
                let refused = ApiError::InvalidParameters(format!(
                    "job {} takes no parameters; unknown: {}",
                    job.job_id,
                    names.join(", ")
                ));
                return self.audit_without_run(audit, Err(refused)).await;
            }
            let new = NewRun {
                run_id: RunId::generate(),
                tenant_id: tenant.clone(),
                job_id: job.job_id.clone(),
                provider_id: job.provider_id.clone(),
                provider_kind: job.provider_kind.clone(),
                parameters: request.parameters.clone(),
                idempotency_key: key.clone(),
                request_fingerprint: fingerprint.clone(),
                created_at: OffsetDateTime::now_utc(),
                ingest_owner: self.replica.clone(),
                lease_until: self.lease_until(),
            };
            let run_audit = NewAudit {
                run_id: Some(new.run_id.to_string()),
                decision: Decision::Allowed,
                ..audit.clone()
            };
            let first = status_event(RunStatus::Queued);
            match self.store.insert_run(&new, &first, &run_audit).await? {
                InsertOutcome::Created(run) => return self.submit(run, job).await,
                InsertOutcome::Duplicate(run) => match self.replay(tenant, run, &fingerprint).await
                {
                    Some(result) => return self.audit_without_run(audit, result).await,
                    None => continue,
                },
                InsertOutcome::Vanished => continue,
            }
        }
        let busy = ApiError::Busy("this idempotency key is contended; retry".to_owned());
        self.audit_without_run(audit, Err(busy)).await
    }

    /// The answer to a request whose idempotency key a run already holds: 422 if it asked for
    /// something else; otherwise the run, once its submission upstream has settled (so no
    /// caller is handed a run that is then withdrawn). `None` when the run was withdrawn (its
    /// trigger was refused upstream): the caller tries again.
    async fn replay(
        &self,
        tenant: &TenantId,
        mut run: RunRecord,
        fingerprint: &str,
    ) -> Option<Result<Triggered, ApiError>> {
        if run.request_fingerprint != fingerprint {
            return Some(Err(ApiError::IdempotencyKeyReused));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut pause = Duration::from_millis(10);
        // Polls the store: the submitting request may be on another replica.
        while run.provider_run_ref.is_none() && !run.ended {
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(250));
            match self.store.get_run(tenant, run.run_id).await {
                Ok(Some(current)) => run = current,
                Ok(None) => return None,
                Err(e) => return Some(Err(e.into())),
            }
        }
        Some(Ok(Triggered {
            run,
            created: false,
        }))
    }

    /// Sends a freshly stored run to its provider and records the answer.
    async fn submit(
        self: &Arc<Self>,
        mut run: RunRecord,
        job: &JobRecord,
    ) -> Result<Triggered, ApiError> {
        let provider = self.provider(&job.provider_id)?.clone();
        metrics::counter!("ci_gateway_runs_triggered_total").increment(1);
        let result = provider.trigger(&job.provider_ref).await;
        let outcome = match &result {
            Ok(_) => "triggered",
            Err(e) => crate::http::error::provider_code(e),
        };
        if let Err(e) = self.store.set_trigger_outcome(run.run_id, outcome).await {
            tracing::error!(run_id = %run.run_id, error = %e, "cannot record the trigger outcome");
        }
        match result {
            Ok(upstream) => {
                self.store
                    .set_provider_run_ref(run.run_id, &upstream.run_ref)
                    .await?;
                run.provider_run_ref = Some(upstream.run_ref);
                tracing::info!(run_id = %run.run_id, "run triggered");
                self.watch(run.clone());
                Ok(Triggered { run, created: true })
            }
            Err(e @ (ProviderError::Timeout(_) | ProviderError::BadResponse(_))) => {
                // The provider may have started it: keep the run, as errored, so that a retry
                // with the same key does not start a second build.
                tracing::error!(run_id = %run.run_id, error = %e, "trigger outcome unknown");
                self.finish(&run, RunStatus::Errored).await?;
                Err(ApiError::Provider(e))
            }
            Err(e) => {
                // The provider certainly did not start it: forget the run so a retry can. Its
                // audit row stays, with the refusal as its outcome.
                tracing::warn!(run_id = %run.run_id, error = %e, "trigger refused");
                self.store.delete_run(run.run_id).await?;
                Err(ApiError::Provider(e))
            }
        }
    }

    /// Asks the provider to cancel a run that has not finished.
    ///
    /// # Errors
    /// 409 with the run when it already finished; provider and store failures.
    #[tracing::instrument(skip_all, fields(run_id = %run.run_id))]
    pub async fn cancel(&self, run: RunRecord) -> Result<RunRecord, ApiError> {
        if run.is_finished() {
            return Err(ApiError::RunTerminal(Box::new(run)));
        }
        let Some(run_ref) = &run.provider_run_ref else {
            return Err(ApiError::RunNotSubmitted);
        };
        self.provider(&run.provider_id)?.cancel(run_ref).await?;
        let now = OffsetDateTime::now_utc();
        self.store.mark_cancel_requested(run.run_id, now).await?;
        tracing::info!("cancel requested");
        Ok(RunRecord {
            cancel_requested_at: Some(now),
            ..run
        })
    }

    /// Stores a final status and the `end` event for a run that will get no more events.
    async fn finish(&self, run: &RunRecord, status: RunStatus) -> Result<(), ApiError> {
        let now = OffsetDateTime::now_utc();
        let events = [
            status_event(status),
            NewEvent {
                kind: EventKind::End,
                data: json!({ "status": status }),
            },
        ];
        let change = RunChange {
            status: Some(status),
            finished_at: Some(now),
            ended: true,
            ..RunChange::default()
        };
        let stored = self
            .store
            .append_events(run.run_id, &self.replica, &events, &change)
            .await?;
        if !stored.is_empty() {
            self.bus.publish(run.run_id, stored.into());
        }
        self.bus.close(run.run_id);
        Ok(())
    }

    /// Starts an ingester for every run that no live replica follows (after a restart, or
    /// when another replica died), and settles runs whose submission never completed.
    ///
    /// # Errors
    /// When the store cannot list them.
    pub async fn adopt_orphans(self: &Arc<Self>) -> Result<usize, ApiError> {
        let now = OffsetDateTime::now_utc();
        let mut adopted = 0;
        for run in self.store.orphaned_runs(now).await? {
            if self.is_ingesting(run.run_id) {
                continue;
            }
            self.watch(run);
            adopted += 1;
        }
        self.settle_unsubmitted().await?;
        Ok(adopted)
    }

    /// Ends, as `unknown`, runs accepted over two minutes ago whose submission never finished
    /// (their replica died while the provider was answering): nobody can tell whether they
    /// started, so say so instead of leaving them queued forever. Each replica settles its own
    /// such runs and any whose replica's lease expired.
    ///
    /// # Errors
    /// Store failures.
    pub async fn settle_unsubmitted(&self) -> Result<(), ApiError> {
        let now = OffsetDateTime::now_utc();
        let stale = now - time::Duration::minutes(2);
        for run in self.store.unsubmitted_runs(stale).await? {
            if self
                .store
                .claim_run(run.run_id, &self.replica, self.lease_until(), now)
                .await?
            {
                tracing::warn!(run_id = %run.run_id, "run was never confirmed by its provider");
                self.finish(&run, RunStatus::Unknown).await?;
            }
        }
        Ok(())
    }

    /// The cluster's background work, on whichever replica holds the maintenance lease: adopt
    /// runs whose replica died, and prune old events. Every replica also renews the leases of
    /// the runs it follows. Runs until shutdown, then gives the leases up.
    pub async fn maintain(self: Arc<Self>) {
        let period = self.cluster.lease_ttl() / 3;
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                () = tokio::time::sleep(period) => {}
            }
            if let Err(e) = self.maintenance_pass().await {
                tracing::warn!(error = %e, "maintenance pass failed");
            }
        }
        self.release_leases().await;
    }

    /// One round of [`RunService::maintain`]; returns whether this replica led it.
    ///
    /// # Errors
    /// Store failures.
    pub async fn maintenance_pass(self: &Arc<Self>) -> Result<bool, ApiError> {
        let until = self.lease_until();
        self.store.renew_run_leases(&self.replica, until).await?;
        let now = OffsetDateTime::now_utc();
        if !self
            .store
            .acquire_lease(MAINTENANCE_LEASE, &self.replica, until, now)
            .await?
        {
            self.settle_unsubmitted().await?;
            return Ok(false);
        }
        let adopted = self.adopt_orphans().await?;
        if adopted > 0 {
            tracing::info!(adopted, "adopted runs no replica followed");
        }
        if self.cluster.event_retention_days > 0 {
            let days = i64::try_from(self.cluster.event_retention_days).unwrap_or(i64::MAX);
            let cutoff = now - time::Duration::days(days.min(100_000));
            let pruned = self.store.prune_events(cutoff).await?;
            if pruned > 0 {
                tracing::info!(pruned, "pruned old run events");
            }
        }
        Ok(true)
    }

    /// Gives up this replica's leases, so that others (or this one restarted) take over at once.
    pub async fn release_leases(&self) {
        if let Err(e) = self.store.release_run_leases(&self.replica).await {
            tracing::warn!(error = %e, "cannot release run leases");
        }
        if let Err(e) = self
            .store
            .release_lease(MAINTENANCE_LEASE, &self.replica)
            .await
        {
            tracing::warn!(error = %e, "cannot release the maintenance lease");
        }
    }

    fn is_ingesting(&self, run_id: RunId) -> bool {
        self.ingesting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&run_id)
    }

    /// Makes sure the run has an ingester in this process.
    pub fn watch(self: &Arc<Self>, run: RunRecord) {
        {
            let mut ingesting = self.ingesting.lock().unwrap_or_else(|p| p.into_inner());
            if !ingesting.insert(run.run_id) {
                return;
            }
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let run_id = run.run_id;
            this.ingest(run).await;
            this.ingesting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&run_id);
        });
    }

    /// Follows one run's provider stream until it ends or the process shuts down.
    #[tracing::instrument(skip_all, fields(run_id = %run.run_id))]
    async fn ingest(&self, run: RunRecord) {
        let Some(run_ref) = run.provider_run_ref.clone() else {
            return;
        };
        let now = OffsetDateTime::now_utc();
        match self
            .store
            .claim_run(run.run_id, &self.replica, self.lease_until(), now)
            .await
        {
            Ok(true) => {}
            Ok(false) => return, // another replica follows it
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim the run; the maintenance pass retries");
                return;
            }
        }
        let Ok(provider) = self.provider(&run.provider_id).cloned() else {
            tracing::error!(provider = %run.provider_id, "run's provider is not configured");
            return;
        };
        let mut state = IngestState {
            status: run.status,
            resume: run.stream_resume.clone(),
        };
        let mut backoff = Duration::from_millis(200);
        loop {
            let outcome = tokio::select! {
                () = self.shutdown.cancelled() => return,
                o = self.follow(&*provider, &run, &run_ref, &mut state) => o,
            };
            match outcome {
                Ok(Progress::Ended) => return,
                Ok(Progress::Some) => backoff = Duration::from_millis(200),
                Ok(Progress::None) => {}
                Err(IngestError::Gone(e)) => {
                    tracing::warn!(error = %e, "run vanished upstream");
                    let status = if state.status.is_terminal() {
                        state.status
                    } else {
                        RunStatus::Unknown
                    };
                    if let Err(e) = self.finish(&run, status).await {
                        tracing::error!(error = %e, "cannot store the end of a vanished run");
                    }
                    return;
                }
                Err(IngestError::Lost) => {
                    tracing::info!("another replica follows this run now");
                    return;
                }
                Err(IngestError::Retry(e)) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "event stream interrupted");
                }
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// One connection to the provider's stream: stores what it yields until it ends or breaks.
    async fn follow(
        &self,
        provider: &dyn CiProvider,
        run: &RunRecord,
        run_ref: &Value,
        state: &mut IngestState,
    ) -> Result<Progress, IngestError> {
        let stream = provider
            .stream_events(run_ref, state.resume.clone())
            .await
            .map_err(IngestError::from)?;
        // Store what arrives together in one transaction: one write per burst, not per line.
        let mut chunks = stream.ready_chunks(256);
        let mut progress = Progress::None;
        while let Some(chunk) = chunks.next().await {
            let mut batches = Vec::with_capacity(chunk.len());
            let mut failure = None;
            for item in chunk {
                match item {
                    Ok(batch) => batches.push(batch),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            let ended = self
                .store_batches(provider, run, run_ref, state, batches)
                .await?;
            if ended {
                return Ok(Progress::Ended);
            }
            progress = Progress::Some;
            if let Some(e) = failure {
                return Err(IngestError::from(e));
            }
        }
        if matches!(progress, Progress::None) {
            return Err(IngestError::Retry("stream closed before any event".into()));
        }
        Err(IngestError::Retry("stream closed before the end".into()))
    }

    /// Turns provider batches into stored events; returns true once the run ended.
    async fn store_batches(
        &self,
        provider: &dyn CiProvider,
        run: &RunRecord,
        run_ref: &Value,
        state: &mut IngestState,
        batches: Vec<EventBatch>,
    ) -> Result<bool, IngestError> {
        if batches.is_empty() {
            return Ok(false);
        }
        // Work on a copy: `state` moves on only once the batch is stored.
        let mut next = state.clone();
        let mut events = Vec::new();
        let mut change = RunChange::default();
        let mut ended = false;
        for batch in batches {
            for event in batch.events {
                match event {
                    ProviderEvent::Status { status, at } => {
                        next.apply_status(status, at, &mut change, &mut events);
                    }
                    ProviderEvent::Log { stream, line } => events.push(NewEvent {
                        kind: EventKind::Log,
                        data: json!({ "stream": stream, "line": line }),
                    }),
                }
            }
            next.resume = Some(batch.resume);
            ended |= batch.end;
        }
        if ended {
            if !next.status.is_terminal() {
                // The stream ended without a final status: ask for it once.
                let status = match provider.get_run(run_ref).await {
                    Ok(upstream) if upstream.status.is_terminal() => upstream.status,
                    Ok(_) | Err(_) => RunStatus::Unknown,
                };
                next.apply_status(status, None, &mut change, &mut events);
            }
            change
                .finished_at
                .get_or_insert_with(OffsetDateTime::now_utc);
            events.push(NewEvent {
                kind: EventKind::End,
                data: json!({ "status": next.status }),
            });
            change.ended = true;
        }
        change.stream_resume = next.resume.clone();
        let stored = self
            .store
            .append_events(run.run_id, &self.replica, &events, &change)
            .await
            .map_err(|e| match e {
                StoreError::LeaseLost => IngestError::Lost,
                other => IngestError::Retry(other.to_string()),
            })?;
        *state = next;
        if !stored.is_empty() {
            self.bus.publish(run.run_id, stored.into());
        }
        if ended {
            self.bus.close(run.run_id);
            tracing::info!(status = %state.status, "run ended");
        }
        Ok(ended)
    }
}

/// What an ingester remembers between batches.
#[derive(Clone)]
struct IngestState {
    /// The run's status as stored.
    status: RunStatus,
    /// The provider stream's resume point as stored.
    resume: Option<Value>,
}

impl IngestState {
    /// Records a status change, unless it is no change or would leave a final status.
    fn apply_status(
        &mut self,
        status: RunStatus,
        at: Option<OffsetDateTime>,
        change: &mut RunChange,
        events: &mut Vec<NewEvent>,
    ) {
        if status == self.status || self.status.is_terminal() {
            return;
        }
        let at = at.unwrap_or_else(OffsetDateTime::now_utc);
        if status == RunStatus::Running {
            change.started_at.get_or_insert(at);
        }
        if status.is_terminal() {
            change.finished_at.get_or_insert(at);
        }
        self.status = status;
        change.status = Some(status);
        events.push(status_event(status));
    }
}

enum Progress {
    /// The stream gave nothing before it broke.
    None,
    /// Something was stored.
    Some,
    /// The run ended.
    Ended,
}

enum IngestError {
    /// Worth retrying after a pause.
    Retry(String),
    /// The run does not exist upstream any more.
    Gone(String),
    /// Another replica took the run over.
    Lost,
}

impl From<ProviderError> for IngestError {
    fn from(e: ProviderError) -> IngestError {
        match e {
            ProviderError::NotFound(m) => IngestError::Gone(m),
            other => IngestError::Retry(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_ignores_key_order_but_not_values() {
        let a: Map<String, Value> = serde_json::from_str(r#"{"a":1,"b":"x"}"#).unwrap();
        let b: Map<String, Value> = serde_json::from_str(r#"{"b":"x","a":1}"#).unwrap();
        let c: Map<String, Value> = serde_json::from_str(r#"{"a":2,"b":"x"}"#).unwrap();
        assert_eq!(fingerprint("job_a", &a), fingerprint("job_a", &b));
        assert_ne!(fingerprint("job_a", &a), fingerprint("job_a", &c));
        assert_ne!(fingerprint("job_a", &a), fingerprint("job_b", &a));
    }

    #[test]
    fn a_final_status_is_never_left_and_repeats_make_no_event() {
        let mut state = IngestState {
            status: RunStatus::Queued,
            resume: None,
        };
        let mut change = RunChange::default();
        let mut events = Vec::new();
        for s in [
            RunStatus::Running,
            RunStatus::Running,
            RunStatus::Canceled,
            RunStatus::Running,
        ] {
            state.apply_status(s, None, &mut change, &mut events);
        }
        assert_eq!(
            events,
            vec![
                status_event(RunStatus::Running),
                status_event(RunStatus::Canceled)
            ]
        );
        assert_eq!(change.status, Some(RunStatus::Canceled));
        assert!(change.started_at.is_some() && change.finished_at.is_some());

        // Canceled while queued: it never started.
        let mut state = IngestState {
            status: RunStatus::Queued,
            resume: None,
        };
        let mut change = RunChange::default();
        state.apply_status(RunStatus::Canceled, None, &mut change, &mut Vec::new());
        assert!(change.started_at.is_none() && change.finished_at.is_some());
    }
}
