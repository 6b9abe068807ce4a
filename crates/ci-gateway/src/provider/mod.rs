//! The provider seam: what the gateway needs from a CI system, in provider-agnostic terms.
//!
//! A provider adapter (today only [`concourse`]) is the only code that knows its CI system's words.
//! The rest of the gateway handles jobs and runs through opaque JSON references that the adapter
//! itself wrote: `provider_ref` (which upstream job a gateway job is bound to) and
//! `provider_run_ref` (which upstream execution a run is).

pub mod concourse;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use serde_json::Value;
use time::OffsetDateTime;

use crate::domain::{LogStream, RunStatus};

/// What a provider knows about one upstream execution.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderRun {
    /// The adapter's own reference to the execution, stored as the run's `provider_run_ref`.
    pub run_ref: Value,
    /// The execution's state, mapped to the generic enum.
    pub status: RunStatus,
    /// When it started upstream, if it has.
    pub started_at: Option<OffsetDateTime>,
    /// When it finished upstream, if it has.
    pub finished_at: Option<OffsetDateTime>,
}

/// One event of a run, in the gateway's vocabulary.
#[derive(Debug, Clone, PartialEq)]
pub enum ProviderEvent {
    /// The run's state changed.
    Status {
        /// The new state.
        status: RunStatus,
        /// When the provider says it changed.
        at: Option<OffsetDateTime>,
    },
    /// One whole line of output, without its trailing `\n`, otherwise byte for byte as produced.
    Log {
        /// Which stream it was written to.
        stream: LogStream,
        /// The text.
        line: String,
    },
}

/// What one upstream event turned into, plus where to resume after it.
#[derive(Debug, Clone, PartialEq)]
pub struct EventBatch {
    /// The gateway events it produced, in order; often empty (ignored event types, partial lines).
    pub events: Vec<ProviderEvent>,
    /// Opaque resume state. Passing it to [`CiProvider::stream_events`] continues the stream
    /// exactly after this batch: no event repeated, none lost, partial lines kept.
    pub resume: Value,
    /// True on the last batch: the upstream execution is over and its partial lines are flushed.
    pub end: bool,
}

/// The stream of a run's events. It ends after a batch with `end: true`, or after an error.
pub type EventStream = BoxStream<'static, Result<EventBatch, ProviderError>>;

/// Why a provider call failed, in terms the API can map to a status code.
///
/// The messages are for the operator's logs; the API never shows them to callers.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The provider could not be reached, refused our credentials, or answered 5xx.
    #[error("provider unavailable: {0}")]
    Unavailable(String),
    /// The provider did not answer in time.
    #[error("provider timed out: {0}")]
    Timeout(String),
    /// The bound job or the execution does not exist upstream.
    #[error("not found upstream: {0}")]
    NotFound(String),
    /// The provider refused the action for a reason of its own (a job that may not be triggered
    /// by hand, an archived pipeline).
    #[error("refused upstream: {0}")]
    Refused(String),
    /// The provider answered something we cannot understand.
    #[error("unexpected answer from provider: {0}")]
    BadResponse(String),
    /// A reference or configuration value the adapter cannot use.
    #[error("invalid provider reference: {0}")]
    InvalidRef(String),
}

/// A CI system behind the gateway.
///
/// Implementations must be cheap to share (`Arc<dyn CiProvider>`) and safe to call concurrently.
#[async_trait]
pub trait CiProvider: Send + Sync + 'static {
    /// The provider kind stored in `ci_job.provider_kind`, e.g. `"concourse"`.
    fn kind(&self) -> &'static str;

    /// Checks a job binding taken from configuration and returns it in the form to store as the
    /// job's `provider_ref`.
    ///
    /// # Errors
    /// [`ProviderError::InvalidRef`] when a field is missing or malformed.
    fn job_ref(&self, binding: &Value) -> Result<Value, ProviderError>;

    /// Checks that the credentials work and grant what the gateway needs. Used at start-up (fail
    /// fast) and by the readiness probe.
    async fn check(&self) -> Result<(), ProviderError>;

    /// Starts one execution of the job. Never retried blindly: at most one upstream execution per
    /// call.
    async fn trigger(&self, job_ref: &Value) -> Result<ProviderRun, ProviderError>;

    /// Reads the execution's current state.
    async fn get_run(&self, run_ref: &Value) -> Result<ProviderRun, ProviderError>;

    /// Streams the execution's events from the start (`resume: None`) or from a resume state
    /// returned in an earlier [`EventBatch`]. The stream holds no timeout that fires while the
    /// execution is quiet; it closes its upstream connection itself at the end.
    async fn stream_events(
        &self,
        run_ref: &Value,
        resume: Option<Value>,
    ) -> Result<EventStream, ProviderError>;

    /// Asks the provider to stop the execution. Returns once the request is accepted; the run
    /// becomes canceled when the provider says so, through the event stream.
    async fn cancel(&self, run_ref: &Value) -> Result<(), ProviderError>;
}
