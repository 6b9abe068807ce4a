//! The HTTP client of the v1 API: one method per endpoint, errors in the API's own words.

use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderValue};
use reqwest::{Method, RequestBuilder, Response, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a plain request (not an event stream) may take in total.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a read may wait for bytes. The gateway sends a heartbeat comment on idle event
/// streams (every 15 s by default), so a silent stream past this is dead and gets reopened.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The gateway answered with an error in its `{"error": {"code", "message"}}` shape (or, for
    /// a body without that shape, `http_<status>`).
    #[error("{message} ({code})")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The stable error code.
        code: String,
        /// The caller-facing message.
        message: String,
    },
    /// The gateway could not be reached, or the connection broke.
    #[error("cannot reach the gateway: {0}")]
    Network(String),
    /// The gateway answered something this client does not understand.
    #[error("unexpected answer from the gateway: {0}")]
    Protocol(String),
}

impl CliError {
    /// The error code printed after the message.
    pub fn code(&self) -> &str {
        match self {
            CliError::Api { code, .. } => code,
            CliError::Network(_) => "network_error",
            CliError::Protocol(_) => "protocol_error",
        }
    }

    /// The message, without the code.
    pub fn message(&self) -> String {
        match self {
            CliError::Api { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }

    /// True when retrying may help: the network, or a 5xx (the gateway or its database is
    /// briefly unavailable, e.g. during a restart).
    pub fn is_transient(&self) -> bool {
        match self {
            CliError::Api { status, .. } => *status >= 500,
            CliError::Network(_) => true,
            CliError::Protocol(_) => false,
        }
    }
}

/// A reqwest error with its causes, e.g. `error sending request: connection refused`.
fn network(e: &reqwest::Error) -> CliError {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    CliError::Network(text)
}

/// A job, as `GET /v1/jobs` lists it.
#[derive(Debug, Clone, Deserialize)]
pub struct Job {
    /// Stable public id.
    pub job_id: String,
    /// Logical grouping.
    pub project: String,
    /// Human name.
    pub display_name: String,
    /// Environment label.
    pub environment: Option<String>,
}

/// A run, as the API returns it (links omitted).
#[derive(Debug, Clone, Deserialize)]
pub struct Run {
    /// Public id.
    pub run_id: String,
    /// The job it runs.
    pub job_id: String,
    /// `queued`, `running`, `succeeded`, `failed`, `canceled`, `errored` or `unknown`.
    pub status: String,
    /// When the gateway accepted it.
    pub created_at: String,
    /// When it started.
    pub started_at: Option<String>,
    /// When it finished.
    pub finished_at: Option<String>,
    /// The parameters it was triggered with.
    #[serde(default)]
    pub parameters: Map<String, Value>,
    /// True once the status can no longer change.
    #[serde(default)]
    pub terminal: bool,
}

/// An answer: the typed value for human output and the body as sent, for `--output json`.
#[derive(Debug)]
pub struct Fetched<T> {
    /// The typed value.
    pub value: T,
    /// The whole response body.
    pub body: Value,
}

/// One page of `GET /v1/runs`.
#[derive(Debug, Deserialize)]
pub struct RunPage {
    /// The runs, newest first.
    pub runs: Vec<Run>,
    /// Pass as `cursor` for the next page; `None` on the last one.
    pub next_cursor: Option<String>,
}

/// The filters of `GET /v1/runs`.
#[derive(Debug, Default, Clone)]
pub struct RunFilter {
    /// Only runs of this job.
    pub job_id: Option<String>,
    /// Only runs with this status.
    pub status: Option<String>,
    /// At most this many runs.
    pub limit: Option<u32>,
    /// Where the previous page ended.
    pub cursor: Option<String>,
}

/// A client of one gateway.
pub struct ApiClient {
    /// The gateway's base URL, ending with `/`.
    base: Url,
    /// The bearer token, sent on every request when set; never printed.
    token: Option<SecretString>,
    /// Without a total timeout, which would cut long event streams; plain requests set their own.
    http: reqwest::Client,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.base.as_str())
            .field("token", &self.token.as_ref().map(|_| "[REDACTED]"))
            .finish()
    }
}

/// Parses `--server`: an `http` or `https` URL.
///
/// # Errors
/// When it is not such a URL.
pub fn parse_server(s: &str) -> Result<Url, String> {
    let mut url = Url::parse(s).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("the URL must start with http:// or https://".to_owned());
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

impl ApiClient {
    /// A client of the gateway at `base`, sending `token` when given.
    ///
    /// # Errors
    /// When the token cannot go in an HTTP header, or the TLS backend cannot start.
    pub fn new(base: Url, token: Option<SecretString>) -> Result<ApiClient, String> {
        if let Some(t) = &token
            && HeaderValue::from_str(&format!("Bearer {}", t.expose_secret())).is_err()
        {
            return Err("the token contains characters that cannot be sent in a header".to_owned());
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(concat!("ci-gateway-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(ApiClient { base, token, http })
    }

    /// The URL of `segments` under the base; each segment is percent-encoded.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        // `parse_server` accepts only http(s) URLs, which can always take path segments.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    fn request(&self, method: Method, url: Url) -> RequestBuilder {
        let mut request = self.http.request(method, url);
        if let Some(token) = &self.token {
            // Validated in `new`.
            if let Ok(mut value) =
                HeaderValue::from_str(&format!("Bearer {}", token.expose_secret()))
            {
                value.set_sensitive(true);
                request = request.header(AUTHORIZATION, value);
            }
        }
        request
    }

    /// Sends a plain request and reads its JSON body, turning error statuses into
    /// [`CliError::Api`].
    async fn call(&self, request: RequestBuilder) -> Result<Value, CliError> {
        let response = request
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|e| network(&e))?;
        let response = check(response).await?;
        let text = response.text().await.map_err(|e| network(&e))?;
        serde_json::from_str(&text).map_err(|e| CliError::Protocol(format!("invalid JSON: {e}")))
    }

    /// `GET /v1/jobs`.
    ///
    /// # Errors
    /// See [`CliError`].
    pub async fn list_jobs(&self) -> Result<Fetched<Vec<Job>>, CliError> {
        let body = self
            .call(self.request(Method::GET, self.url(&["v1", "jobs"])))
            .await?;
        typed(body, "jobs")
    }

    /// `POST /v1/jobs/{job_id}/runs`; the flag is true when the run is new (201), false when
    /// the idempotency key named an earlier run (200).
    ///
    /// # Errors
    /// See [`CliError`].
    pub async fn trigger(
        &self,
        job_id: &str,
        parameters: Map<String, Value>,
        idempotency_key: Option<&str>,
    ) -> Result<Fetched<Run>, CliError> {
        let mut body = json!({ "parameters": parameters });
        if let Some(key) = idempotency_key {
            body["idempotency_key"] = Value::String(key.to_owned());
        }
        let url = self.url(&["v1", "jobs", job_id, "runs"]);
        let body = self
            .call(self.request(Method::POST, url).json(&body))
            .await?;
        typed(body, "run")
    }

    /// `GET /v1/runs/{run_id}`.
    ///
    /// # Errors
    /// See [`CliError`].
    pub async fn get_run(&self, run_id: &str) -> Result<Fetched<Run>, CliError> {
        let url = self.url(&["v1", "runs", run_id]);
        typed(self.call(self.request(Method::GET, url)).await?, "run")
    }

    /// `POST /v1/runs/{run_id}/cancel`.
    ///
    /// # Errors
    /// See [`CliError`]; a finished run is `run_already_finished`.
    pub async fn cancel(&self, run_id: &str) -> Result<Fetched<Run>, CliError> {
        let url = self.url(&["v1", "runs", run_id, "cancel"]);
        typed(self.call(self.request(Method::POST, url)).await?, "run")
    }

    /// The request of `GET /v1/runs?job_id=&status=&limit=&cursor=`, with only the given filters.
    fn list_runs_request(&self, filter: &RunFilter) -> RequestBuilder {
        let mut url = self.url(&["v1", "runs"]);
        {
            let mut query = url.query_pairs_mut();
            if let Some(job) = &filter.job_id {
                query.append_pair("job_id", job);
            }
            if let Some(status) = &filter.status {
                query.append_pair("status", status);
            }
            if let Some(limit) = filter.limit {
                query.append_pair("limit", &limit.to_string());
            }
            if let Some(cursor) = &filter.cursor {
                query.append_pair("cursor", cursor);
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        self.request(Method::GET, url)
    }

    /// `GET /v1/runs`: one page of runs, newest first.
    ///
    /// # Errors
    /// See [`CliError`].
    pub async fn list_runs(&self, filter: &RunFilter) -> Result<Fetched<RunPage>, CliError> {
        let body = self.call(self.list_runs_request(filter)).await?;
        let value = serde_json::from_value(body.clone())
            .map_err(|e| CliError::Protocol(format!("unexpected run list: {e}")))?;
        Ok(Fetched { value, body })
    }

    /// Opens `GET /v1/runs/{run_id}/events`, after `last_event_id` when given. No total
    /// timeout: the stream lasts as long as the run.
    ///
    /// # Errors
    /// See [`CliError`].
    pub async fn open_events(
        &self,
        run_id: &str,
        last_event_id: Option<&str>,
    ) -> Result<Response, CliError> {
        let url = self.url(&["v1", "runs", run_id, "events"]);
        let mut request = self
            .request(Method::GET, url)
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.map_err(|e| network(&e))?;
        check(response).await
    }
}

/// Passes a success through; reads an error status's body into [`CliError::Api`].
async fn check(response: Response) -> Result<Response, CliError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let text = response.text().await.unwrap_or_default();
    let error = serde_json::from_str::<Value>(&text).ok().and_then(|body| {
        let e = body.get("error")?;
        Some((
            e.get("code")?.as_str()?.to_owned(),
            e.get("message")?.as_str()?.to_owned(),
        ))
    });
    let (code, message) = error.unwrap_or_else(|| {
        (
            format!("http_{}", status.as_u16()),
            format!(
                "the gateway answered {status} {}",
                status.canonical_reason().unwrap_or_default()
            )
            .trim_end()
            .to_owned(),
        )
    });
    Err(CliError::Api {
        status: status.as_u16(),
        code,
        message,
    })
}

/// Reads `body[field]` as `T`, keeping the body.
fn typed<T: serde::de::DeserializeOwned>(body: Value, field: &str) -> Result<Fetched<T>, CliError> {
    let value = body
        .get(field)
        .cloned()
        .ok_or_else(|| CliError::Protocol(format!("no `{field}` in the answer")))
        .and_then(|v| {
            serde_json::from_value(v)
                .map_err(|e| CliError::Protocol(format!("unexpected `{field}`: {e}")))
        })?;
    Ok(Fetched { value, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(base: &str, token: Option<&str>) -> ApiClient {
        ApiClient::new(
            parse_server(base).expect("valid URL"),
            token.map(SecretString::from),
        )
        .expect("client")
    }

    #[test]
    fn the_run_list_request_carries_only_the_given_filters_and_the_token() {
        let c = client("http://gw.example:8080", Some("tok-123"));
        let filter = RunFilter {
            job_id: Some("job_a b".to_owned()),
            status: Some("failed".to_owned()),
            limit: Some(20),
            cursor: Some("c/1".to_owned()),
        };

        let request = c.list_runs_request(&filter).build().expect("request");

        assert_eq!(request.method(), Method::GET);
        assert_eq!(
            request.url().as_str(),
            "http://gw.example:8080/v1/runs?job_id=job_a+b&status=failed&limit=20&cursor=c%2F1"
        );
        let auth = request.headers().get(AUTHORIZATION).expect("auth header");
        assert_eq!(auth.to_str().ok(), Some("Bearer tok-123"));
        assert!(auth.is_sensitive());
    }

    #[test]
    fn the_run_list_request_without_filters_has_no_query_and_no_token() {
        let c = client("http://gw.example/prefix", None);

        let request = c
            .list_runs_request(&RunFilter::default())
            .build()
            .expect("request");

        assert_eq!(request.url().as_str(), "http://gw.example/prefix/v1/runs");
        assert!(request.headers().get(AUTHORIZATION).is_none());
    }

    #[test]
    fn ids_are_encoded_as_one_path_segment() {
        let c = client("http://gw.example/", None);
        assert_eq!(
            c.url(&["v1", "runs", "a/../b", "events"]).as_str(),
            "http://gw.example/v1/runs/a%2F..%2Fb/events"
        );
    }

    #[test]
    fn the_token_is_not_in_the_debug_output() {
        let c = client("http://gw.example/", Some("tok-secret-42"));
        let text = format!("{c:?}");
        assert!(!text.contains("tok-secret-42"), "{text}");
    }

    #[test]
    fn only_http_urls_are_servers() {
        assert!(parse_server("ftp://x").is_err());
        assert!(parse_server("nonsense").is_err());
        assert_eq!(
            parse_server("https://x/api").map(|u| u.to_string()),
            Ok("https://x/api/".to_owned())
        );
    }
}
