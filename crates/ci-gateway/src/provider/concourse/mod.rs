//! The Concourse adapter: [`ConcourseProvider`] implements [`CiProvider`] against the ATC's HTTP
//! API (`/api/v1`, Concourse v6.1 and later).
//!
//! A gateway job is bound to one Concourse job (team, pipeline, job and optional instance vars);
//! a run is one Concourse build, known by its global id. See
//! `/work/shared/spec/concourse-atc-api.md` for the upstream facts this code relies on.
//!
//! # Layout
//! - this file: settings, the provider, URL building, HTTP error mapping;
//! - [`auth`]: password-grant login at `/sky/issuer/token` and the shared token cache;
//! - [`wire`]: Concourse JSON shapes and the stored references (`provider_ref`, `provider_run_ref`);
//! - [`events`]: the SSE build event stream and its resume state.
//!
//! # Retries
//! Idempotent calls (every GET, the abort PUT, the events GET) log in again and retry once when
//! Concourse answers 401 (the token may have been revoked or the ATC's DB reset). The trigger POST
//! is never replayed: a 401 there drops the token and returns [`ProviderError::Unavailable`], and
//! the caller decides (it holds the idempotency key).
//!
//! # Clients
//! Ordinary calls use a client with a whole-request deadline (`request_timeout`). The event stream
//! uses a second client with only a connect timeout and TCP keepalive: a build can stay quiet for
//! hours, and a pending build sends no response headers until its first event.

mod auth;
mod events;
mod wire;

#[cfg(test)]
mod tests;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::{ACCEPT, HeaderValue};
use reqwest::{RequestBuilder, Response, StatusCode, Url};
use secrecy::SecretString;
use serde_json::Value;

use self::auth::{Auth, Bearer};
use self::events::Decoder;
use self::wire::{Build, JobRef, RunRef, UserInfo};
use crate::provider::{CiProvider, EventStream, ProviderError, ProviderRun};

/// The OAuth client id `fly` uses, registered by every ATC.
pub const DEFAULT_CLIENT_ID: &str = "fly";

/// The secret of the `fly` client (base64 of "fly"; public).
pub const DEFAULT_CLIENT_SECRET: &str = "Zmx5";

/// Roles that may trigger and abort builds (`pipeline-operator` and the roles above it).
const TRIGGER_ROLES: [&str; 3] = ["pipeline-operator", "member", "owner"];

/// How much of an error body goes into a message.
const SNIPPET_CHARS: usize = 200;

/// Path segments: everything but RFC 3986 unreserved characters is encoded, so `+` (which the
/// ATC's router would read as a space), `%`, `/`, `?`, `#`, `&` and non-ASCII all survive.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// How to reach and log in to one Concourse team.
pub struct ConcourseSettings {
    /// ATC base URL, e.g. `http://127.0.0.1:8079`; a trailing slash or a path prefix is fine.
    pub url: String,
    /// The team that owns the bound pipelines.
    pub team: String,
    /// Local (or LDAP) user to log in as.
    pub username: String,
    /// Its password.
    pub password: SecretString,
    /// OAuth client id; [`DEFAULT_CLIENT_ID`] unless the ATC has `--add-client`.
    pub client_id: String,
    /// OAuth client secret; [`DEFAULT_CLIENT_SECRET`] for `fly`.
    pub client_secret: SecretString,
    /// Whole-request deadline of ordinary calls (not of the event stream).
    pub request_timeout: Duration,
    /// TCP/TLS connect deadline of every call, the event stream included.
    pub connect_timeout: Duration,
}

impl fmt::Debug for ConcourseSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcourseSettings")
            .field("url", &redact_url(&self.url))
            .field("team", &self.team)
            .field("username", &self.username)
            .field("password", &"[REDACTED]")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[REDACTED]")
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// Hides a password put into the URL's userinfo (which [`ConcourseProvider::new`] rejects).
fn redact_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            // Cannot fail: the URL has a host, since it has a password.
            let _ = parsed.set_password(Some("REDACTED"));
            parsed.to_string()
        }
        Ok(_) => url.to_owned(),
        Err(_) => "<unparsable url>".to_owned(),
    }
}

/// The Concourse [`CiProvider`]. Cheap to share behind an `Arc`; safe to call concurrently.
pub struct ConcourseProvider {
    /// Base URL without a trailing slash; path segments are appended to it.
    base: String,
    /// The team every new binding is stored with.
    team: String,
    /// Client with the whole-request deadline.
    api: reqwest::Client,
    /// Client without any deadline after connecting, for the event stream.
    streaming: reqwest::Client,
    /// Used to read an error body on the streaming client, where nothing else bounds it.
    request_timeout: Duration,
    /// Login and token cache.
    auth: Auth,
}

impl fmt::Debug for ConcourseProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcourseProvider")
            .field("base", &self.base)
            .field("team", &self.team)
            .field("username", &self.auth.username())
            .finish_non_exhaustive()
    }
}

impl ConcourseProvider {
    /// Builds the adapter. Nothing is sent: call [`CiProvider::check`] to verify the credentials.
    ///
    /// # Errors
    /// [`ProviderError::InvalidRef`] for an unusable URL (not http(s), with a query, fragment or
    /// credentials) or an empty team or username; [`ProviderError::Unavailable`] if the HTTP
    /// clients cannot be built.
    pub fn new(settings: ConcourseSettings) -> Result<Self, ProviderError> {
        let url = Url::parse(settings.url.trim()).map_err(|e| {
            ProviderError::InvalidRef(format!(
                "Concourse url {:?} is not a URL: {e}",
                redact_url(&settings.url)
            ))
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
            return Err(ProviderError::InvalidRef(format!(
                "Concourse url {:?} must be an http or https URL",
                redact_url(&settings.url)
            )));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(ProviderError::InvalidRef(format!(
                "Concourse url {url} must not have a query or fragment"
            )));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(ProviderError::InvalidRef(
                "Concourse url must not hold credentials; use username and password".to_owned(),
            ));
        }
        if settings.team.is_empty() {
            return Err(ProviderError::InvalidRef(
                "Concourse team must not be empty".to_owned(),
            ));
        }
        if settings.username.is_empty() {
            return Err(ProviderError::InvalidRef(
                "Concourse username must not be empty".to_owned(),
            ));
        }
        let base = url.as_str().trim_end_matches('/').to_owned();

        let api = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .connect_timeout(settings.connect_timeout)
            .tcp_keepalive(Some(Duration::from_secs(30)))
            .build()
            .map_err(|e| {
                ProviderError::Unavailable(format!(
                    "cannot build the Concourse HTTP client: {}",
                    error_chain(&e)
                ))
            })?;
        // No `timeout` and no `read_timeout`: a quiet build must not end the stream.
        let streaming = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .tcp_keepalive(Some(Duration::from_secs(30)))
            .build()
            .map_err(|e| {
                ProviderError::Unavailable(format!(
                    "cannot build the Concourse streaming HTTP client: {}",
                    error_chain(&e)
                ))
            })?;

        let token_url = join_url(&base, &["sky", "issuer", "token"], &[])?;
        let auth = Auth::new(
            api.clone(),
            token_url,
            settings.username,
            settings.password,
            settings.client_id,
            settings.client_secret,
        );
        Ok(ConcourseProvider {
            base,
            team: settings.team,
            api,
            streaming,
            request_timeout: settings.request_timeout,
            auth,
        })
    }

    fn url(&self, segments: &[&str], query: &[(String, String)]) -> Result<Url, ProviderError> {
        join_url(&self.base, segments, query)
    }

    /// Sends an idempotent request with the cached token; on 401, logs in again and sends it once
    /// more. A second 401 is returned to the caller to map.
    async fn send_idempotent(
        &self,
        action: &str,
        client: &reqwest::Client,
        make: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<Response, ProviderError> {
        let bearer = self.auth.bearer().await?;
        let response = send(action, bearer.apply(make(client))).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        drop(response);
        tracing::info!(
            action,
            "Concourse answered 401; logging in again and retrying once"
        );
        self.auth.invalidate(&bearer).await;
        let bearer: Bearer = self.auth.bearer().await?;
        send(action, bearer.apply(make(client))).await
    }

    /// Reads the body of an ordinary-client response.
    async fn body(action: &str, response: Response) -> Result<(StatusCode, String), ProviderError> {
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| transport_error(&format!("{action}: read the answer"), &e))?;
        Ok((status, text))
    }

    /// Maps the common non-success statuses.
    fn status_error(&self, action: &str, status: StatusCode, body: &str) -> ProviderError {
        let detail = if body.trim().is_empty() {
            String::new()
        } else {
            format!(": {}", snippet(body))
        };
        match status {
            StatusCode::NOT_FOUND => {
                ProviderError::NotFound(format!("{action}: Concourse answered 404{detail}"))
            }
            StatusCode::UNAUTHORIZED => ProviderError::Unavailable(format!(
                "{action}: Concourse rejected the token of user {:?} (401){detail}",
                self.auth.username()
            )),
            StatusCode::FORBIDDEN => ProviderError::Unavailable(format!(
                "{action}: user {:?} lacks the required role (pipeline-operator or above) on the \
                 team (403){detail}",
                self.auth.username()
            )),
            StatusCode::CONFLICT => {
                ProviderError::Refused(format!("{action}: Concourse answered 409{detail}"))
            }
            s if s.is_server_error() => {
                ProviderError::Unavailable(format!("{action}: Concourse answered {s}{detail}"))
            }
            s => ProviderError::BadResponse(format!("{action}: unexpected answer {s}{detail}")),
        }
    }
}

#[async_trait]
impl CiProvider for ConcourseProvider {
    fn kind(&self) -> &'static str {
        "concourse"
    }

    /// Accepts `{"pipeline", "job", "instance_vars"?}` and stores
    /// `{"team", "pipeline", "job", "instance_vars"?}` (an empty `instance_vars` is dropped).
    fn job_ref(&self, binding: &Value) -> Result<Value, ProviderError> {
        Ok(JobRef::from_binding(binding, &self.team)?.to_value())
    }

    /// Logs in, then reads `GET /api/v1/user` and requires pipeline-operator, member or owner on
    /// the configured team.
    #[tracing::instrument(skip_all, fields(provider = "concourse", team = %self.team))]
    async fn check(&self) -> Result<(), ProviderError> {
        let action = "check the Concourse user's roles";
        let url = self.url(&["api", "v1", "user"], &[])?;
        let response = self
            .send_idempotent(action, &self.api, |c| c.get(url.clone()))
            .await?;
        let (status, body) = Self::body(action, response).await?;
        if !status.is_success() {
            return Err(self.status_error(action, status, &body));
        }
        let user: UserInfo = serde_json::from_str(&body).map_err(|e| {
            ProviderError::BadResponse(format!("{action}: cannot read the user JSON: {e}"))
        })?;
        let name = if user.user_name.is_empty() {
            self.auth.username().to_owned()
        } else {
            user.user_name
        };
        let teams = user.teams.unwrap_or_default();
        let Some(roles) = teams.get(&self.team) else {
            let known: Vec<&str> = teams.keys().map(String::as_str).collect();
            return Err(ProviderError::Unavailable(format!(
                "Concourse user {name:?} has no role on team {:?} (it has roles on {known:?})",
                self.team
            )));
        };
        if !roles.iter().any(|r| TRIGGER_ROLES.contains(&r.as_str())) {
            let what = if roles.iter().all(|r| r == "viewer") && !roles.is_empty() {
                "only the viewer role".to_owned()
            } else {
                format!("roles {roles:?}")
            };
            return Err(ProviderError::Unavailable(format!(
                "Concourse user {name:?} has {what} on team {:?}; triggering needs \
                 pipeline-operator, member or owner",
                self.team
            )));
        }
        tracing::debug!(user = %name, roles = ?roles, "Concourse credentials verified");
        Ok(())
    }

    /// `POST .../jobs/{job}/builds` once; never replayed.
    #[tracing::instrument(skip_all, fields(provider = "concourse", job = tracing::field::Empty, build_id = tracing::field::Empty))]
    async fn trigger(&self, job_ref: &Value) -> Result<ProviderRun, ProviderError> {
        let job = JobRef::parse(job_ref)?;
        tracing::Span::current().record("job", tracing::field::display(&job));
        let action = format!("trigger Concourse job {job}");
        let url = self.url(
            &[
                "api",
                "v1",
                "teams",
                &job.team,
                "pipelines",
                &job.pipeline,
                "jobs",
                &job.job,
                "builds",
            ],
            &job.instance_var_pairs(),
        )?;
        let bearer = self.auth.bearer().await?;
        let response = send(&action, bearer.apply(self.api.post(url).body(""))).await?;
        let (status, body) = Self::body(&action, response).await?;
        if status == StatusCode::UNAUTHORIZED {
            // Not replayed: a second POST could start a second build.
            self.auth.invalidate(&bearer).await;
            return Err(ProviderError::Unavailable(format!(
                "{action}: Concourse rejected the token (401); not retried, the next call logs in \
                 again"
            )));
        }
        if status == StatusCode::CONFLICT {
            let reason = if body.trim().is_empty() {
                "manual triggering is disabled for this job (disable_manual_trigger)".to_owned()
            } else if body.contains("archived") {
                format!("the pipeline is archived ({})", snippet(&body))
            } else {
                snippet(&body)
            };
            return Err(ProviderError::Refused(format!("{action}: 409, {reason}")));
        }
        if !status.is_success() {
            return Err(self.status_error(&action, status, &body));
        }
        let build: Build = serde_json::from_str(&body).map_err(|e| {
            ProviderError::BadResponse(format!("{action}: cannot read the build JSON: {e}"))
        })?;
        tracing::Span::current().record("build_id", build.id);
        tracing::info!(build_name = %build.name, status = %build.status, "Concourse build created");
        Ok(build.into_run())
    }

    /// `GET /api/v1/builds/{id}`.
    #[tracing::instrument(skip_all, fields(provider = "concourse", build_id = tracing::field::Empty))]
    async fn get_run(&self, run_ref: &Value) -> Result<ProviderRun, ProviderError> {
        let run = RunRef::parse(run_ref)?;
        tracing::Span::current().record("build_id", run.build_id);
        let action = format!("read Concourse build {}", run.build_id);
        let id = run.build_id.to_string();
        let url = self.url(&["api", "v1", "builds", &id], &[])?;
        let response = self
            .send_idempotent(&action, &self.api, |c| c.get(url.clone()))
            .await?;
        let (status, body) = Self::body(&action, response).await?;
        if !status.is_success() {
            return Err(self.status_error(&action, status, &body));
        }
        let build: Build = serde_json::from_str(&body).map_err(|e| {
            ProviderError::BadResponse(format!("{action}: cannot read the build JSON: {e}"))
        })?;
        Ok(build.into_run())
    }

    /// `GET /api/v1/builds/{id}/events`, with `Last-Event-ID` when resuming.
    ///
    /// This awaits the response headers, and Concourse sends none for a pending build until its
    /// first event: the call can take as long as the build stays pending. Do not wrap it in a
    /// timeout; drop the future to give up.
    #[tracing::instrument(skip_all, fields(provider = "concourse", build_id = tracing::field::Empty))]
    async fn stream_events(
        &self,
        run_ref: &Value,
        resume: Option<Value>,
    ) -> Result<EventStream, ProviderError> {
        let run = RunRef::parse(run_ref)?;
        tracing::Span::current().record("build_id", run.build_id);
        let decoder = Decoder::new(resume.as_ref())?;
        let action = format!("stream events of Concourse build {}", run.build_id);
        let id = run.build_id.to_string();
        let url = self.url(&["api", "v1", "builds", &id, "events"], &[])?;
        let last_event_id = decoder.last_event_id().map(HeaderValue::from);
        tracing::debug!(last_event_id = ?decoder.last_event_id(), "opening Concourse event stream");
        let response = self
            .send_idempotent(&action, &self.streaming, |c| {
                let request = c
                    .get(url.clone())
                    .header(ACCEPT, HeaderValue::from_static("text/event-stream"));
                match &last_event_id {
                    Some(id) => request.header("Last-Event-ID", id.clone()),
                    None => request,
                }
            })
            .await?;
        let status = response.status();
        if !status.is_success() {
            // The streaming client has no deadline; an error body is short, but bound it anyway.
            let body = tokio::time::timeout(self.request_timeout, response.text())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            return Err(self.status_error(&action, status, &body));
        }
        Ok(events::batches(response, decoder, run.build_id))
    }

    /// `PUT /api/v1/builds/{id}/abort` (204, also for a finished build).
    #[tracing::instrument(skip_all, fields(provider = "concourse", build_id = tracing::field::Empty))]
    async fn cancel(&self, run_ref: &Value) -> Result<(), ProviderError> {
        let run = RunRef::parse(run_ref)?;
        tracing::Span::current().record("build_id", run.build_id);
        let action = format!("abort Concourse build {}", run.build_id);
        let id = run.build_id.to_string();
        let url = self.url(&["api", "v1", "builds", &id, "abort"], &[])?;
        let response = self
            .send_idempotent(&action, &self.api, |c| c.put(url.clone()).body(""))
            .await?;
        let (status, body) = Self::body(&action, response).await?;
        if !status.is_success() {
            return Err(self.status_error(&action, status, &body));
        }
        tracing::info!("Concourse build abort requested");
        Ok(())
    }
}

/// Appends percent-encoded path segments (and encoded query pairs) to the base URL.
fn join_url(
    base: &str,
    segments: &[&str],
    query: &[(String, String)],
) -> Result<Url, ProviderError> {
    let mut url = base.to_owned();
    for segment in segments {
        url.push('/');
        url.extend(utf8_percent_encode(segment, SEGMENT));
    }
    for (i, (key, value)) in query.iter().enumerate() {
        url.push(if i == 0 { '?' } else { '&' });
        url.extend(utf8_percent_encode(key, SEGMENT));
        url.push('=');
        url.extend(utf8_percent_encode(value, SEGMENT));
    }
    Url::parse(&url)
        .map_err(|e| ProviderError::InvalidRef(format!("cannot build a Concourse URL: {e}")))
}

/// Sends a request, mapping transport failures.
async fn send(action: &str, request: RequestBuilder) -> Result<Response, ProviderError> {
    request
        .send()
        .await
        .map_err(|e| transport_error(action, &e))
}

/// Maps a reqwest failure: deadline → Timeout, anything else on the wire → Unavailable.
pub(super) fn transport_error(action: &str, error: &reqwest::Error) -> ProviderError {
    let chain = error_chain(error);
    if error.is_timeout() {
        ProviderError::Timeout(format!("{action}: no answer in time: {chain}"))
    } else if error.is_decode() {
        ProviderError::BadResponse(format!("{action}: {chain}"))
    } else {
        ProviderError::Unavailable(format!("{action}: {chain}"))
    }
}

/// An error and its sources, joined with `: `.
pub(super) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The start of a response body, on one line, for an error message.
pub(super) fn snippet(body: &str) -> String {
    let flat: String = body
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(SNIPPET_CHARS + 1)
        .collect();
    if flat.chars().count() > SNIPPET_CHARS {
        let cut: String = flat.chars().take(SNIPPET_CHARS).collect();
        format!("{cut}…")
    } else {
        flat
    }
}
