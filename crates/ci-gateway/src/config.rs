//! Configuration: one TOML file, read once at start-up.
//!
//! Credentials are never read from the file itself: the file names an environment variable or a
//! file that holds each secret (`password_env`, `password_file`). The job catalog is defined here
//! by the operator and synced into the store at start-up.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use secrecy::SecretString;
use serde::Deserialize;

use crate::domain::JobId;

/// The whole configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Where the API listens.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The database.
    pub database: DatabaseSettings,
    /// HTTP server limits.
    #[serde(default)]
    pub server: ServerSettings,
    /// How replicas sharing one database divide the background work.
    #[serde(default)]
    pub cluster: ClusterSettings,
    /// The provider allowlist: every CI system the gateway may talk to, by name.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderSettings>,
    /// The job catalog.
    #[serde(default)]
    pub jobs: Vec<JobSettings>,
    /// Caller authentication and authorization.
    #[serde(default)]
    pub auth: AuthSettings,
}

/// Whether callers must authenticate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Every `/v1` request needs a credential (the default).
    #[default]
    Required,
    /// Nobody authenticates and everyone holds every scope. Logged as a warning at every start.
    None,
}

/// The `[auth]` section: any combination of JWTs, static API tokens and client certificates.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// `required` (default) or `none`.
    #[serde(default)]
    pub mode: AuthMode,
    /// JWT bearer tokens.
    pub jwt: Option<JwtSettings>,
    /// Static API tokens for internal callers.
    #[serde(default)]
    pub tokens: Vec<ApiTokenSettings>,
    /// Client-certificate identities and their grants (needs `[server.tls]` with a client CA).
    #[serde(default)]
    pub mtls: Vec<CertIdentitySettings>,
}

/// How JWT bearer tokens are verified.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSettings {
    /// The only accepted `iss`.
    pub issuer: String,
    /// The accepted `aud` (one must match).
    pub audience: Vec<String>,
    /// The issuer's JWKS; fetched on first use, re-fetched after `jwks_ttl_secs`, and on an
    /// unknown `kid` at most once per `jwks_min_refresh_secs`.
    pub jwks_url: Option<String>,
    /// How long a fetched JWKS is trusted.
    #[serde(default = "default_jwks_ttl")]
    pub jwks_ttl_secs: u64,
    /// The least time between two fetches caused by unknown `kid`s.
    #[serde(default = "default_jwks_min_refresh")]
    pub jwks_min_refresh_secs: u64,
    /// Static public keys, by `kid`.
    #[serde(default)]
    pub keys: Vec<JwtKeySettings>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// The asymmetric algorithms accepted (default RS256, ES256, EdDSA).
    #[serde(default = "default_jwt_algorithms")]
    pub algorithms: Vec<String>,
    /// The environment variable holding an HS256 secret; HS256 is accepted only when set.
    pub hs256_secret_env: Option<String>,
}

/// One static JWT verification key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtKeySettings {
    /// The `kid` tokens name it by.
    pub kid: String,
    /// `RS256`, `ES256` or `EdDSA`.
    pub algorithm: String,
    /// The public key, PEM.
    pub public_key_pem: Option<String>,
    /// A file holding the public key, PEM.
    pub public_key_file: Option<PathBuf>,
}

/// One static API token. The file holds only its SHA-256 (or names an environment variable
/// holding the token itself).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiTokenSettings {
    /// Who this is, as recorded in the audit log.
    pub name: String,
    /// The token's SHA-256, lowercase hex (`printf %s TOKEN | sha256sum`).
    pub sha256: Option<String>,
    /// Or an environment variable holding the token.
    pub token_env: Option<String>,
    /// What it may do.
    pub scopes: Vec<String>,
    /// When set, the only projects it may touch.
    pub projects: Option<Vec<String>>,
}

/// Grants for callers presenting a client certificate with this identity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertIdentitySettings {
    /// The certificate's first SAN URI, else first SAN DNS name, else subject CN.
    pub identity: String,
    /// What it may do.
    pub scopes: Vec<String>,
    /// When set, the only projects it may touch.
    pub projects: Option<Vec<String>>,
}

/// TLS termination, optionally requiring client certificates.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// The server certificate chain, PEM.
    pub cert_file: PathBuf,
    /// The server private key, PEM.
    pub key_file: PathBuf,
    /// CA certificates that sign client certificates; enables mTLS.
    pub client_ca_file: Option<PathBuf>,
    /// Refuse the TLS handshake without a client certificate (otherwise a caller may use a
    /// bearer token instead).
    #[serde(default)]
    pub require_client_cert: bool,
}

fn default_jwks_ttl() -> u64 {
    300
}
fn default_jwks_min_refresh() -> u64 {
    30
}
fn default_leeway() -> u64 {
    30
}
fn default_jwt_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into(), "EdDSA".into()]
}

/// Database settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `sqlite://path/to/file.db` (created if missing) or `postgres://user@host/db`.
    /// The environment variable `CI_GATEWAY_DATABASE_URL` overrides it.
    pub url: String,
    /// The connection pool's size.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
}

/// HTTP server settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// The largest request body accepted, in bytes; larger ones get 413.
    pub max_body_bytes: usize,
    /// Seconds between SSE heartbeat comments while a stream is idle.
    pub sse_heartbeat_secs: u64,
    /// Terminate TLS (and optionally mTLS) in the gateway.
    pub tls: Option<TlsSettings>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            max_body_bytes: 64 * 1024,
            sse_heartbeat_secs: 15,
            tls: None,
        }
    }
}

impl ServerSettings {
    /// The heartbeat interval.
    pub fn sse_heartbeat(&self) -> Duration {
        Duration::from_secs(self.sse_heartbeat_secs.max(1))
    }
}

/// Settings for replicas that share a database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSettings {
    /// Seconds a replica's claim on a run (or on the maintenance lease) lasts without renewal;
    /// a replica that dies is replaced after at most this long. Renewed every third of it.
    pub lease_ttl_secs: u64,
    /// Delete the log and status events of runs that ended more than this many days ago
    /// (their run record and final status stay). 0 keeps them forever.
    pub event_retention_days: u64,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            lease_ttl_secs: 15,
            event_retention_days: 0,
        }
    }
}

impl ClusterSettings {
    /// The lease lifetime.
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.lease_ttl_secs.max(1))
    }
}

/// One entry of the provider allowlist.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ProviderSettings {
    /// A Concourse ATC.
    Concourse(ConcourseProviderSettings),
}

/// How to reach and log in to one Concourse team.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcourseProviderSettings {
    /// The ATC's external URL.
    pub url: String,
    /// The team whose pipelines the jobs are bound to.
    pub team: String,
    /// A local user with at least the `pipeline-operator` role on the team.
    pub username: String,
    /// The environment variable that holds the password.
    pub password_env: Option<String>,
    /// A file that holds the password (a trailing newline is ignored).
    pub password_file: Option<PathBuf>,
    /// Present only to reject it with a clear message: passwords never live in this file.
    password: Option<toml::Value>,
    /// The OAuth client id; `fly` works on every Concourse.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// The environment variable that holds the client secret; defaults to fly's public secret.
    pub client_secret_env: Option<String>,
    /// Seconds an ordinary Concourse call may take.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
    /// Seconds to wait for a TCP connection to the ATC.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
}

/// One job of the catalog.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSettings {
    /// The stable public id, e.g. `job_payments_build_test`.
    pub job_id: String,
    /// A logical grouping, e.g. `payments`.
    pub project: String,
    /// A human name.
    pub display_name: String,
    /// Optional environment label, e.g. `prod`.
    pub environment: Option<String>,
    /// The name of a provider in the allowlist.
    pub provider: String,
    /// The provider-specific binding; for Concourse `{ pipeline, job, instance_vars? }`.
    pub binding: toml::Table,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_max_connections() -> u32 {
    10
}
fn default_client_id() -> String {
    "fly".to_owned()
}
fn default_request_timeout() -> u64 {
    30
}
fn default_connect_timeout() -> u64 {
    5
}

/// Reads a secret named by an environment variable or a file.
pub(crate) fn read_secret(
    what: &str,
    env: Option<&str>,
    file: Option<&Path>,
) -> anyhow::Result<SecretString> {
    match (env, file) {
        (Some(_), Some(_)) => bail!("{what}: set only one of the _env and _file keys"),
        (Some(var), None) => {
            let value = std::env::var(var)
                .with_context(|| format!("{what}: environment variable {var} is not set"))?;
            if value.is_empty() {
                bail!("{what}: environment variable {var} is empty");
            }
            Ok(SecretString::from(value))
        }
        (None, Some(path)) => {
            let value = std::fs::read_to_string(path)
                .with_context(|| format!("{what}: cannot read {}", path.display()))?;
            let value = value.trim_end_matches(['\n', '\r']);
            if value.is_empty() {
                bail!("{what}: {} is empty", path.display());
            }
            Ok(SecretString::from(value.to_owned()))
        }
        (None, None) => bail!("{what}: set password_env or password_file"),
    }
}

impl ConcourseProviderSettings {
    /// Settings whose password is read from a file; the other keys take their defaults.
    pub fn with_password_file(url: String, team: String, username: String, file: PathBuf) -> Self {
        ConcourseProviderSettings {
            url,
            team,
            username,
            password_env: None,
            password_file: Some(file),
            password: None,
            client_id: default_client_id(),
            client_secret_env: None,
            request_timeout_secs: default_request_timeout(),
            connect_timeout_secs: default_connect_timeout(),
        }
    }

    /// Resolves the secrets and builds the adapter's settings.
    ///
    /// # Errors
    /// When a secret is missing or the file puts a password inline.
    pub fn resolve(
        &self,
        name: &str,
    ) -> anyhow::Result<crate::provider::concourse::ConcourseSettings> {
        if self.password.is_some() {
            bail!(
                "provider {name}: `password` is not allowed in the config file; \
                 use password_env or password_file"
            );
        }
        let password = read_secret(
            &format!("provider {name} password"),
            self.password_env.as_deref(),
            self.password_file.as_deref(),
        )?;
        let client_secret = match &self.client_secret_env {
            Some(var) => read_secret(&format!("provider {name} client secret"), Some(var), None)?,
            None => SecretString::from("Zmx5".to_owned()),
        };
        Ok(crate::provider::concourse::ConcourseSettings {
            url: self.url.clone(),
            team: self.team.clone(),
            username: self.username.clone(),
            password,
            client_id: self.client_id.clone(),
            client_secret,
            request_timeout: Duration::from_secs(self.request_timeout_secs.max(1)),
            connect_timeout: Duration::from_secs(self.connect_timeout_secs.max(1)),
        })
    }
}

impl Settings {
    /// Reads and checks a configuration file. Secrets are resolved later, when providers are
    /// built.
    ///
    /// # Errors
    /// When the file cannot be read, is not valid TOML, or fails [`Settings::validate`].
    pub fn load(path: &Path) -> anyhow::Result<Settings> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let mut settings: Settings =
            toml::from_str(&text).with_context(|| format!("invalid config {}", path.display()))?;
        if let Ok(url) = std::env::var("CI_GATEWAY_DATABASE_URL") {
            settings.database.url = url;
        }
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what can be checked without the network: job ids, duplicates, and that every job
    /// names a provider of the allowlist.
    ///
    /// # Errors
    /// The first problem found, in words an operator can act on.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut seen = HashSet::new();
        for job in &self.jobs {
            JobId::parse(&job.job_id)
                .map_err(|e| anyhow::anyhow!("job {:?}: invalid job_id: {e}", job.job_id))?;
            if !seen.insert(job.job_id.as_str()) {
                bail!("job {}: defined twice", job.job_id);
            }
            if !self.providers.contains_key(&job.provider) {
                bail!(
                    "job {}: provider {:?} is not in the [providers] allowlist",
                    job.job_id,
                    job.provider
                );
            }
            if job.project.trim().is_empty() || job.display_name.trim().is_empty() {
                bail!(
                    "job {}: project and display_name must not be empty",
                    job.job_id
                );
            }
        }
        crate::auth::Authenticator::check_settings(&self.auth, self.server.tls.as_ref())?;
        if !(self.database.url.starts_with("sqlite:")
            || self.database.url.starts_with("postgres:")
            || self.database.url.starts_with("postgresql:"))
        {
            bail!("database.url must start with sqlite: or postgres:");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Settings> {
        let s: Settings = toml::from_str(text)?;
        s.validate()?;
        Ok(s)
    }

    const BASE: &str = r#"
        [database]
        url = "sqlite://x.db"
        [providers.ci]
        kind = "concourse"
        url = "http://127.0.0.1:1"
        team = "main"
        username = "gw"
        password_env = "NOPE"
        [auth]
        mode = "none"
    "#;

    #[test]
    fn auth_is_required_unless_explicitly_turned_off() {
        let text = BASE.replace("mode = \"none\"", "");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("no caller can authenticate"), "{err}");
        let with_token = format!(
            "{text}\n[[auth.tokens]]\nname = \"ci\"\nsha256 = \"{}\"\nscopes = [\"runs:read\"]\n",
            "ab".repeat(32)
        );
        assert!(parse(&with_token).is_ok());
        let bad_scope = with_token.replace("runs:read", "runs:write");
        assert!(parse(&bad_scope).is_err());
    }

    #[test]
    fn a_job_naming_a_provider_outside_the_allowlist_is_refused() {
        let text = format!(
            "{BASE}\n[[jobs]]\njob_id = \"job_a\"\nproject = \"p\"\ndisplay_name = \"A\"\n\
             provider = \"other\"\nbinding = {{ pipeline = \"p\", job = \"j\" }}\n"
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("not in the [providers] allowlist"), "{err}");
    }

    #[test]
    fn an_inline_password_is_refused_by_name() {
        let text = BASE.replace("password_env = \"NOPE\"", "password = \"hunter2\"");
        let s = parse(&text).unwrap();
        let ProviderSettings::Concourse(c) = &s.providers["ci"];
        let err = c.resolve("ci").unwrap_err().to_string();
        assert!(err.contains("not allowed in the config file"), "{err}");
        assert!(!err.contains("hunter2"));
    }

    #[test]
    fn unknown_keys_and_duplicate_jobs_are_refused() {
        assert!(parse(&format!("{BASE}\nlisten_port = 3\n")).is_err());
        let job = "\n[[jobs]]\njob_id = \"job_a\"\nproject = \"p\"\ndisplay_name = \"A\"\n\
                   provider = \"ci\"\nbinding = { pipeline = \"p\", job = \"j\" }\n";
        assert!(parse(&format!("{BASE}{job}")).is_ok());
        let err = parse(&format!("{BASE}{job}{job}")).unwrap_err().to_string();
        assert!(err.contains("defined twice"), "{err}");
    }
}
