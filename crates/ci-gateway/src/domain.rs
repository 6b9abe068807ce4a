//! Provider-agnostic domain types shared by the API, the store and the providers.
//!
//! Nothing here knows a Concourse word: a provider adapter maps its own vocabulary onto these types.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The state of a run, as the public API reports it.
///
/// The set is closed: a provider state that has no mapping becomes [`RunStatus::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Accepted, waiting to start upstream.
    Queued,
    /// Started upstream.
    Running,
    /// Finished successfully.
    Succeeded,
    /// Finished with a failing step.
    Failed,
    /// Stopped on request.
    Canceled,
    /// Could not run to completion because of an infrastructure or configuration error.
    Errored,
    /// The provider reported a state the gateway does not know.
    Unknown,
}

impl RunStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [RunStatus; 7] = [
        RunStatus::Queued,
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Canceled,
        RunStatus::Errored,
        RunStatus::Unknown,
    ];

    /// The wire and database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Canceled => "canceled",
            RunStatus::Errored => "errored",
            RunStatus::Unknown => "unknown",
        }
    }

    /// Parses the wire spelling; `None` for anything else.
    pub fn parse(s: &str) -> Option<RunStatus> {
        RunStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// True once the run can no longer change: succeeded, failed, canceled or errored.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Canceled | RunStatus::Errored
        )
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which output stream a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    /// Standard output of a step.
    Stdout,
    /// Standard error of a step, and errors the provider reports about a step.
    Stderr,
}

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidId(&'static str);

/// A job's stable public id: 1 to 128 ASCII letters, digits, `_`, `-` or `.`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(String);

impl JobId {
    /// Parses a job id.
    ///
    /// # Errors
    /// When it is empty, too long or holds other characters.
    pub fn parse(s: &str) -> Result<JobId, InvalidId> {
        if s.is_empty() || s.len() > 128 {
            return Err(InvalidId("must be 1 to 128 characters long"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            return Err(InvalidId(
                "may hold only ASCII letters, digits, '_', '-' and '.'",
            ));
        }
        Ok(JobId(s.to_owned()))
    }
}

/// A run's public id: `run_` followed by a ULID, minted by the gateway at trigger time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunId(ulid::Ulid);

impl RunId {
    /// Mints a new id, ordered by creation time.
    pub fn generate() -> RunId {
        RunId(ulid::Ulid::generate())
    }

    /// Parses `run_<ULID>`.
    ///
    /// # Errors
    /// When the prefix or the ULID is wrong.
    pub fn parse(s: &str) -> Result<RunId, InvalidId> {
        let rest = s
            .strip_prefix("run_")
            .ok_or(InvalidId("must start with run_"))?;
        // Only the canonical upper-case form, so that one run has exactly one spelling.
        if rest.len() != 26 || rest.bytes().any(|b| b.is_ascii_lowercase()) {
            return Err(InvalidId("must be run_ followed by a 26-character ULID"));
        }
        ulid::Ulid::from_string(rest)
            .map(RunId)
            .map_err(|_| InvalidId("must be run_ followed by a 26-character ULID"))
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "run_{}", self.0)
    }
}

impl AsRef<str> for JobId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A caller's idempotency key: 1 to 255 printable ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Parses a key.
    ///
    /// # Errors
    /// When it is empty, too long, or holds control or non-ASCII characters.
    pub fn parse(s: &str) -> Result<IdempotencyKey, InvalidId> {
        if s.is_empty() || s.len() > 255 {
            return Err(InvalidId("must be 1 to 255 characters long"));
        }
        if !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(InvalidId("may hold only printable ASCII characters"));
        }
        Ok(IdempotencyKey(s.to_owned()))
    }
}

impl AsRef<str> for IdempotencyKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// The tenant a request acts for. Always `default` in v1, but passed through every store call.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TenantId(String);

impl TenantId {
    /// The only tenant of v1.
    pub fn default_tenant() -> TenantId {
        TenantId("default".to_owned())
    }
}

impl AsRef<str> for TenantId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_only_their_canonical_form() {
        let id = RunId::generate();
        assert_eq!(RunId::parse(&id.to_string()), Ok(id));
        assert!(RunId::parse("run_").is_err());
        assert!(RunId::parse(&id.to_string().to_lowercase()).is_err());
        assert!(RunId::parse(&id.to_string()[4..]).is_err());
        assert!(JobId::parse("job_payments_build-test.v2").is_ok());
        for bad in ["", "a b", "job/x", "é", &"x".repeat(129)] {
            assert!(JobId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(IdempotencyKey::parse("deploy-2026-12-03 #1").is_ok());
        for bad in ["", "a\nb", "ключ", &"k".repeat(256)] {
            assert!(IdempotencyKey::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn status_spelling_round_trips_and_only_finished_states_are_terminal() {
        for st in RunStatus::ALL {
            assert_eq!(RunStatus::parse(st.as_str()), Some(st));
            let json = serde_json::to_string(&st).unwrap();
            assert_eq!(json, format!("\"{}\"", st.as_str()));
        }
        assert_eq!(RunStatus::parse("pending"), None);
        let terminal: Vec<_> = RunStatus::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(
            terminal,
            [
                RunStatus::Succeeded,
                RunStatus::Failed,
                RunStatus::Canceled,
                RunStatus::Errored
            ]
        );
    }
}
