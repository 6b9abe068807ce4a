//! JSON shapes: what Concourse sends us, and the references this adapter stores in the gateway.
//!
//! The references (`provider_ref` of a job, `provider_run_ref` of a run) are written and read only
//! here, so their shape can evolve in one place. Reading is lenient about extra fields (a newer
//! gateway may have written them); the configuration binding is strict, so typos fail at start-up.

use serde::Deserialize;
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::domain::RunStatus;
use crate::provider::{ProviderError, ProviderRun};

/// A job binding as written in the gateway configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct JobBinding {
    /// Pipeline name.
    pub pipeline: String,
    /// Job name inside the pipeline.
    pub job: String,
    /// Instance vars selecting one instance of an instanced pipeline (v7+).
    #[serde(default)]
    pub instance_vars: Option<Value>,
}

/// The stored `provider_ref` of a gateway job: which Concourse job it is bound to.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(super) struct JobRef {
    /// Team owning the pipeline.
    pub team: String,
    /// Pipeline name.
    pub pipeline: String,
    /// Job name.
    pub job: String,
    /// Instance vars of an instanced pipeline; absent for an ordinary pipeline.
    #[serde(default)]
    pub instance_vars: Option<Map<String, Value>>,
}

impl JobRef {
    /// Builds the stored reference from a configuration binding, validating every field.
    pub fn from_binding(binding: &Value, team: &str) -> Result<JobRef, ProviderError> {
        // Serde would also accept a JSON array for a struct; only an object is a binding.
        if !binding.is_object() {
            return Err(ProviderError::InvalidRef(format!(
                "Concourse job binding must be an object {{\"pipeline\", \"job\", \"instance_vars\"?}}, not {}",
                json_kind(binding)
            )));
        }
        let binding: JobBinding = serde_json::from_value(binding.clone()).map_err(|e| {
            ProviderError::InvalidRef(format!(
                "Concourse job binding must be {{\"pipeline\", \"job\", \"instance_vars\"?}}: {e}"
            ))
        })?;
        let instance_vars = match binding.instance_vars {
            None => None,
            Some(Value::Object(map)) => Some(map),
            Some(other) => {
                return Err(ProviderError::InvalidRef(format!(
                    "Concourse job binding {}/{}: instance_vars must be a JSON object, not {}",
                    binding.pipeline,
                    binding.job,
                    json_kind(&other)
                )));
            }
        };
        let job_ref = JobRef {
            team: team.to_owned(),
            pipeline: binding.pipeline,
            job: binding.job,
            // An empty object selects the same pipeline as no object; store one canonical form.
            instance_vars: instance_vars.filter(|m| !m.is_empty()),
        };
        job_ref.validate()?;
        Ok(job_ref)
    }

    /// Reads a stored reference.
    pub fn parse(value: &Value) -> Result<JobRef, ProviderError> {
        if !value.is_object() {
            return Err(ProviderError::InvalidRef(format!(
                "stored Concourse job reference must be an object, not {}",
                json_kind(value)
            )));
        }
        let job_ref: JobRef = serde_json::from_value(value.clone()).map_err(|e| {
            ProviderError::InvalidRef(format!("stored Concourse job reference is malformed: {e}"))
        })?;
        job_ref.validate()?;
        Ok(job_ref)
    }

    fn validate(&self) -> Result<(), ProviderError> {
        check_name("team", &self.team)?;
        check_name("pipeline", &self.pipeline)?;
        check_name("job", &self.job)?;
        if let Some(vars) = &self.instance_vars
            && vars.keys().any(|k| k.is_empty())
        {
            return Err(ProviderError::InvalidRef(format!(
                "Concourse job {self}: instance_vars has an empty key"
            )));
        }
        Ok(())
    }

    /// The `vars.<key>=<JSON value>` query pairs that select the pipeline instance.
    pub fn instance_var_pairs(&self) -> Vec<(String, String)> {
        self.instance_vars
            .iter()
            .flatten()
            .map(|(k, v)| (format!("vars.{k}"), v.to_string()))
            .collect()
    }

    /// The reference as stored.
    pub fn to_value(&self) -> Value {
        let mut obj = Map::new();
        obj.insert("team".to_owned(), Value::String(self.team.clone()));
        obj.insert("pipeline".to_owned(), Value::String(self.pipeline.clone()));
        obj.insert("job".to_owned(), Value::String(self.job.clone()));
        if let Some(vars) = &self.instance_vars {
            obj.insert("instance_vars".to_owned(), Value::Object(vars.clone()));
        }
        Value::Object(obj)
    }
}

impl std::fmt::Display for JobRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.team, self.pipeline, self.job)?;
        if let Some(vars) = &self.instance_vars {
            write!(f, " {}", Value::Object(vars.clone()))?;
        }
        Ok(())
    }
}

/// Rejects names that cannot be a path segment: empty, `.` and `..` (URL normalisation would
/// drop or climb them, addressing another resource).
fn check_name(what: &str, value: &str) -> Result<(), ProviderError> {
    if value.is_empty() {
        return Err(ProviderError::InvalidRef(format!(
            "Concourse {what} name must not be empty"
        )));
    }
    if value == "." || value == ".." {
        return Err(ProviderError::InvalidRef(format!(
            "Concourse {what} name {value:?} is not allowed"
        )));
    }
    Ok(())
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The stored `provider_run_ref` of a run: one Concourse build.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(super) struct RunRef {
    /// Global build id (can exceed `i32`).
    pub build_id: i64,
    /// Build name within its job, e.g. `"42"` or `"42.1"` for a rerun.
    #[serde(default)]
    pub build_name: Option<String>,
    /// Team the build belongs to.
    #[serde(default)]
    pub team: Option<String>,
}

impl RunRef {
    /// Reads a stored reference.
    pub fn parse(value: &Value) -> Result<RunRef, ProviderError> {
        if !value.is_object() {
            return Err(ProviderError::InvalidRef(format!(
                "stored Concourse run reference must be an object, not {}",
                json_kind(value)
            )));
        }
        serde_json::from_value(value.clone()).map_err(|e| {
            ProviderError::InvalidRef(format!(
                "stored Concourse run reference must hold an integer build_id: {e}"
            ))
        })
    }
}

/// A Concourse `Build`, reduced to the fields the gateway uses.
#[derive(Debug, Deserialize)]
pub(super) struct Build {
    /// Global build id.
    pub id: i64,
    /// Build name (a string: `"42"`, `"42.1"`, `"check"`).
    #[serde(default)]
    pub name: String,
    /// `pending`, `started`, `succeeded`, `failed`, `errored` or `aborted`.
    pub status: String,
    /// Owning team.
    #[serde(default)]
    pub team_name: Option<String>,
    /// Unix seconds; omitted (or zero) before the build starts.
    #[serde(default)]
    pub start_time: Option<i64>,
    /// Unix seconds; omitted (or zero) until the build finishes.
    #[serde(default)]
    pub end_time: Option<i64>,
}

impl Build {
    /// Converts to the gateway's view, writing the run reference.
    pub fn into_run(self) -> ProviderRun {
        let mut run_ref = Map::new();
        run_ref.insert("build_id".to_owned(), Value::from(self.id));
        run_ref.insert("build_name".to_owned(), Value::String(self.name));
        if let Some(team) = self.team_name.filter(|t| !t.is_empty()) {
            run_ref.insert("team".to_owned(), Value::String(team));
        }
        ProviderRun {
            run_ref: Value::Object(run_ref),
            status: map_build_status(&self.status),
            started_at: unix_time(self.start_time),
            finished_at: unix_time(self.end_time),
        }
    }
}

/// Maps a Concourse build status to the gateway's closed set.
pub(super) fn map_build_status(status: &str) -> RunStatus {
    match status {
        "pending" => RunStatus::Queued,
        "started" => RunStatus::Running,
        "succeeded" => RunStatus::Succeeded,
        "failed" => RunStatus::Failed,
        "errored" => RunStatus::Errored,
        "aborted" => RunStatus::Canceled,
        other => {
            tracing::warn!(status = other, "unknown Concourse build status");
            RunStatus::Unknown
        }
    }
}

/// Converts Concourse's Unix seconds, where zero (or absence) means "not yet".
pub(super) fn unix_time(seconds: Option<i64>) -> Option<OffsetDateTime> {
    let seconds = seconds.filter(|s| *s != 0)?;
    match OffsetDateTime::from_unix_timestamp(seconds) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!(seconds, error = %e, "Concourse time out of range; ignored");
            None
        }
    }
}

/// `GET /api/v1/user`, reduced to what `check()` needs.
#[derive(Debug, Deserialize)]
pub(super) struct UserInfo {
    /// Login name.
    #[serde(default)]
    pub user_name: String,
    /// Roles per team; Go encodes an empty map as `null`.
    #[serde(default)]
    pub teams: Option<std::collections::BTreeMap<String, Vec<String>>>,
}

/// The token endpoint's success answer. No `Debug`: it holds the token.
#[derive(Deserialize)]
pub(super) struct TokenResponse {
    /// The opaque bearer token.
    pub access_token: String,
    /// `"bearer"`.
    #[serde(default)]
    pub token_type: Option<String>,
    /// Lifetime in seconds.
    #[serde(default)]
    pub expires_in: Option<f64>,
}

/// The token endpoint's OAuth2 error answer.
#[derive(Debug, Default, Deserialize)]
pub(super) struct TokenError {
    /// E.g. `access_denied`, `invalid_client`.
    #[serde(default)]
    pub error: String,
    /// Human text, e.g. "Invalid username or password".
    #[serde(default)]
    pub error_description: String,
}
