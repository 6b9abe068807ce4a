//! The audit log: who tried to trigger or cancel what, whether it was allowed, and how it went.
//!
//! Rows are appended through the [`Store`] (a trigger's row in the same transaction as its run),
//! and each carries `hash = sha256(canonical JSON of its immutable fields + prev_hash)`, so
//! editing, deleting or reordering a row breaks the chain from that row on. [`verify`] walks the
//! chain and names the first bad row; `ci-gateway audit verify` runs it.
//!
//! The upstream outcome is learnt after the row is committed (the row must exist before the
//! provider is called: fail closed). It is written once into the row's `outcome` column, which
//! is deliberately left out of the hash: the chain covers exactly the immutable part.

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::domain::TenantId;
use crate::store::{Store, StoreError};

/// The `prev_hash` of the first row.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What replaces a redacted parameter value.
pub const REDACTED: &str = "[REDACTED]";

/// What was attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAction {
    /// `POST /v1/jobs/{job_id}/runs`.
    Trigger,
    /// `POST /v1/runs/{run_id}/cancel`.
    Cancel,
}

impl AuditAction {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::Trigger => "trigger",
            AuditAction::Cancel => "cancel",
        }
    }
}

/// Whether the gateway let the attempt through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Authenticated, authorized and valid: the provider was (or will be) asked.
    Allowed,
    /// Refused; the row's `reason` says why.
    Denied,
}

impl Decision {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Denied => "denied",
        }
    }
}

/// A row to append.
#[derive(Debug, Clone)]
pub struct NewAudit {
    /// When it happened.
    pub at: OffsetDateTime,
    /// The tenant of the caller.
    pub tenant_id: TenantId,
    /// The caller's subject, or `anonymous`.
    pub caller: String,
    /// How the caller authenticated: `jwt`, `api_token`, `mtls`, `none`.
    pub auth_method: String,
    /// What was attempted.
    pub action: AuditAction,
    /// The job, when known.
    pub job_id: Option<String>,
    /// The run, when known.
    pub run_id: Option<String>,
    /// The parameters, already redacted ([`redact`]).
    pub parameters: Map<String, Value>,
    /// The idempotency key.
    pub idempotency_key: Option<String>,
    /// The decision.
    pub decision: Decision,
    /// Why it was denied, as a stable code.
    pub reason: Option<String>,
    /// The request's `x-request-id`.
    pub request_id: Option<String>,
    /// The peer's address.
    pub source_addr: Option<String>,
    /// An outcome known already when the row is written (e.g. `replayed`); not chained.
    pub outcome: Option<String>,
}

/// A stored row.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AuditRecord {
    /// Position in the chain, from 1.
    pub seq: i64,
    /// When, as fixed-width RFC 3339 (`YYYY-MM-DDTHH:MM:SS.ffffffZ`).
    pub at: String,
    /// Tenant.
    pub tenant_id: String,
    /// Caller subject.
    pub caller: String,
    /// Authentication method.
    pub auth_method: String,
    /// `trigger` or `cancel`.
    pub action: String,
    /// Job.
    pub job_id: Option<String>,
    /// Run.
    pub run_id: Option<String>,
    /// Parameters as stored (a JSON object, redacted).
    pub parameters: String,
    /// Idempotency key.
    pub idempotency_key: Option<String>,
    /// `allowed` or `denied`.
    pub decision: String,
    /// Why denied.
    pub reason: Option<String>,
    /// Request id.
    pub request_id: Option<String>,
    /// Peer address.
    pub source_addr: Option<String>,
    /// The previous row's hash.
    pub prev_hash: String,
    /// This row's hash.
    pub hash: String,
    /// The upstream outcome, once known.
    pub outcome: Option<String>,
    /// When the outcome was recorded.
    pub outcome_at: Option<String>,
}

/// Filters of `GET /v1/audit`.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only rows of this caller.
    pub caller: Option<String>,
    /// Only rows of this job.
    pub job_id: Option<String>,
    /// Only this action.
    pub action: Option<String>,
    /// Only rows at or after this time (fixed-width RFC 3339).
    pub since: Option<String>,
    /// Only rows before this time (fixed-width RFC 3339).
    pub until: Option<String>,
    /// The cursor: only rows with a larger `seq`.
    pub after_seq: i64,
    /// At most this many.
    pub limit: i64,
}

/// Formats a time the way the audit log stores it: UTC, microseconds, fixed width, so that
/// text order is time order on both backends.
pub fn format_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// Whether a parameter name looks like it holds a secret.
fn looks_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "secret",
        "password",
        "passwd",
        "pass",
        "pwd",
        "token",
        "key",
        "credential",
        "auth",
        "private",
        "cert",
        "signature",
    ]
    .iter()
    .any(|word| key.contains(word))
}

/// Redacts the values of parameters whose names look secret (`password`, `api_key`, `token`,
/// ...), recursively. No job declares secret parameters yet; when they can, declared ones are to
/// be redacted too.
pub fn redact(parameters: &Map<String, Value>) -> Map<String, Value> {
    parameters
        .iter()
        .map(|(k, v)| {
            let v = if looks_secret(k) {
                Value::String(REDACTED.to_owned())
            } else {
                redact_value(v)
            };
            (k.clone(), v)
        })
        .collect()
}

/// Redacts inside objects and arrays, at any depth.
fn redact_value(value: &Value) -> Value {
    match value {
        Value::Object(inner) => Value::Object(redact(inner)),
        Value::Array(items) => Value::Array(items.iter().map(redact_value).collect()),
        other => other.clone(),
    }
}

/// The fields a row's hash covers, as they are stored.
#[derive(Debug, Clone, Copy)]
pub struct HashInput<'a> {
    /// Position.
    pub seq: i64,
    /// Time as stored.
    pub at: &'a str,
    /// Tenant.
    pub tenant_id: &'a str,
    /// Caller.
    pub caller: &'a str,
    /// Method.
    pub auth_method: &'a str,
    /// Action.
    pub action: &'a str,
    /// Job.
    pub job_id: Option<&'a str>,
    /// Run.
    pub run_id: Option<&'a str>,
    /// Parameters as stored.
    pub parameters: &'a str,
    /// Idempotency key.
    pub idempotency_key: Option<&'a str>,
    /// Decision.
    pub decision: &'a str,
    /// Reason.
    pub reason: Option<&'a str>,
    /// Request id.
    pub request_id: Option<&'a str>,
    /// Peer.
    pub source_addr: Option<&'a str>,
    /// The previous row's hash.
    pub prev_hash: &'a str,
}

/// The row's hash: sha256 hex over the canonical JSON (keys sorted) of its immutable fields.
pub fn row_hash(input: &HashInput<'_>) -> String {
    let canonical = json!({
        "seq": input.seq,
        "at": input.at,
        "tenant_id": input.tenant_id,
        "caller": input.caller,
        "auth_method": input.auth_method,
        "action": input.action,
        "job_id": input.job_id,
        "run_id": input.run_id,
        "parameters": input.parameters,
        "idempotency_key": input.idempotency_key,
        "decision": input.decision,
        "reason": input.reason,
        "request_id": input.request_id,
        "source_addr": input.source_addr,
        "prev_hash": input.prev_hash,
    })
    .to_string();
    Sha256::digest(canonical.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl AuditRecord {
    /// What this row's hash should be.
    pub fn expected_hash(&self) -> String {
        row_hash(&HashInput {
            seq: self.seq,
            at: &self.at,
            tenant_id: &self.tenant_id,
            caller: &self.caller,
            auth_method: &self.auth_method,
            action: &self.action,
            job_id: self.job_id.as_deref(),
            run_id: self.run_id.as_deref(),
            parameters: &self.parameters,
            idempotency_key: self.idempotency_key.as_deref(),
            decision: &self.decision,
            reason: self.reason.as_deref(),
            request_id: self.request_id.as_deref(),
            source_addr: self.source_addr.as_deref(),
            prev_hash: &self.prev_hash,
        })
    }
}

/// The result of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// Every row checks out.
    Intact {
        /// How many rows.
        rows: u64,
    },
    /// The first row that does not.
    Broken {
        /// Its `seq` (or the `seq` expected where a row is missing).
        seq: i64,
        /// What is wrong with it.
        problem: String,
    },
}

/// Walks the whole chain in order and reports the first row whose hash, link or position is
/// wrong.
///
/// # Errors
/// When the store cannot be read.
pub async fn verify(store: &dyn Store) -> Result<Verification, StoreError> {
    const PAGE: i64 = 1000;
    let mut prev = GENESIS_HASH.to_owned();
    let mut expected_seq = 1;
    let mut rows = 0u64;
    loop {
        let page = store.audit_chain(expected_seq - 1, PAGE).await?;
        if page.is_empty() {
            break;
        }
        for row in &page {
            if row.seq != expected_seq {
                return Ok(Verification::Broken {
                    seq: expected_seq,
                    problem: format!("row missing (next row found is {})", row.seq),
                });
            }
            if row.prev_hash != prev {
                return Ok(Verification::Broken {
                    seq: row.seq,
                    problem: "prev_hash does not match the previous row's hash".to_owned(),
                });
            }
            if row.expected_hash() != row.hash {
                return Ok(Verification::Broken {
                    seq: row.seq,
                    problem: "content does not match its hash (row edited)".to_owned(),
                });
            }
            prev.clone_from(&row.hash);
            expected_seq += 1;
            rows += 1;
        }
    }
    let (head_seq, head_hash) = store.audit_head().await?;
    if head_seq != expected_seq - 1 || head_hash != prev {
        return Ok(Verification::Broken {
            seq: expected_seq,
            problem: format!("the chain ends early: the head says {head_seq} rows were written"),
        });
    }
    Ok(Verification::Intact { rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_looking_parameters_are_redacted_and_others_kept() {
        let params = json!({
            "branch": "main",
            "api_key": "k",
            "nested": {"db_password": "p", "n": 1},
            "list": [{"secret": "s", "ok": 2}, [{"DB_PASS": "q"}], 3],
        });
        let Value::Object(params) = params else {
            unreachable!()
        };
        let red = Value::Object(redact(&params));
        assert_eq!(
            red,
            json!({
                "branch": "main",
                "api_key": REDACTED,
                "nested": {"db_password": REDACTED, "n": 1},
                "list": [{"secret": REDACTED, "ok": 2}, [{"DB_PASS": REDACTED}], 3],
            })
        );
    }

    #[test]
    fn times_are_fixed_width_so_text_order_is_time_order() {
        let t = time::macros::datetime!(2026-01-02 03:04:05.000_007 UTC);
        assert_eq!(format_time(t), "2026-01-02T03:04:05.000007Z");
    }
}
