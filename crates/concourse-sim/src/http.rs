//! The router and the small pieces every handler shares: response helpers in Concourse's
//! formats, path-segment decoding, and instance-var parsing.
//!
//! Concourse's router (`rata` on `bmizerany/pat`) answers an unknown path with Go's
//! `404 page not found\n` and a known path with the wrong method with `405` plus `Allow`;
//! both come before any API wrapper, so they lack `X-Concourse-Version`. Path parameters are
//! query-unescaped, so a `+` in a name becomes a space.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, put};
use percent_encoding::percent_decode_str;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::state::{Shared, go_json};
use crate::{api, auth, events};

/// The ATC version the simulator claims to be.
pub const CONCOURSE_VERSION: &str = "8.2.5";

/// Builds the full router.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let team = "/api/v1/teams/{team}/pipelines";
    let pipeline = "/api/v1/teams/{team}/pipelines/{pipeline}";
    let job = "/api/v1/teams/{team}/pipelines/{pipeline}/jobs/{job}";
    let api_routes = Router::new()
        .route("/api/v1/info", get(api::info))
        .route("/api/v1/user", get(api::user))
        .route(team, get(api::list_pipelines))
        .route(pipeline, get(api::get_pipeline))
        .route(&format!("{pipeline}/pause"), put(api::pause_pipeline))
        .route(&format!("{pipeline}/unpause"), put(api::unpause_pipeline))
        .route(&format!("{pipeline}/jobs"), get(api::list_jobs))
        .route(job, get(api::get_job))
        .route(
            &format!("{job}/builds"),
            post(api::trigger).get(api::list_job_builds),
        )
        .route(&format!("{job}/pause"), put(api::pause_job))
        .route(&format!("{job}/unpause"), put(api::unpause_job))
        .route("/api/v1/builds/{id}", get(api::get_build))
        .route("/api/v1/builds/{id}/events", get(events::build_events))
        .route("/api/v1/builds/{id}/abort", put(api::abort_build))
        .method_not_allowed_fallback(method_not_allowed)
        // A route layer runs only for matched routes (not for 404s or 405s), like the ATC's
        // versioned-handler wrapper.
        .route_layer(axum::middleware::map_response(add_version_header));
    Router::new()
        .route("/sky/issuer/token", any(auth::token))
        .merge(api_routes)
        .fallback(page_not_found)
        .with_state(shared)
}

/// Marks responses produced by the router itself (405), which must not get
/// `X-Concourse-Version` even though axum runs route layers for them.
#[derive(Clone, Copy)]
struct FromRouter;

/// Adds `X-Concourse-Version` to every matched API response.
async fn add_version_header(mut response: Response) -> Response {
    if response.extensions().get::<FromRouter>().is_some() {
        return response;
    }
    response.headers_mut().insert(
        "x-concourse-version",
        HeaderValue::from_static(CONCOURSE_VERSION),
    );
    response
}

/// Go's `http.NotFound`.
async fn page_not_found() -> Response {
    go_error(StatusCode::NOT_FOUND, "404 page not found")
}

/// pat's answer for a known path with another method (axum adds `Allow`).
async fn method_not_allowed() -> Response {
    let mut response = go_error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
    response.extensions_mut().insert(FromRouter);
    response
}

/// Go's `http.Error`: the message plus a newline, as text.
pub(crate) fn go_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        format!("{message}\n"),
    )
        .into_response()
}

/// A text body without a trailing newline (the ATC's `fmt.Fprintf` rejections).
pub(crate) fn text(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

/// Every way an API request is refused, in the ATC's formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ApiError {
    /// 400, empty body (bad id, bad `vars.*`, bad `Last-Event-ID`).
    BadRequest,
    /// 401 `not authorized`.
    Unauthorized,
    /// 403 `forbidden`.
    Forbidden,
    /// 404, empty body (unknown team, pipeline, job or build).
    NotFound,
    /// 409 `action not allowed for an archived pipeline`.
    Archived,
    /// 409, empty body with `Content-Type: application/json` (`disable_manual_trigger`).
    ManualTriggerDisabled,
    /// 500, empty body.
    Internal,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::BadRequest => empty(StatusCode::BAD_REQUEST),
            ApiError::Unauthorized => unauthorized(),
            ApiError::Forbidden => forbidden(),
            ApiError::NotFound => empty(StatusCode::NOT_FOUND),
            ApiError::Archived => go_error(
                StatusCode::CONFLICT,
                "action not allowed for an archived pipeline",
            ),
            ApiError::ManualTriggerDisabled => (
                StatusCode::CONFLICT,
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
            )
                .into_response(),
            ApiError::Internal => empty(StatusCode::INTERNAL_SERVER_ERROR),
        }
    }
}

/// `401 not authorized`.
pub(crate) fn unauthorized() -> Response {
    text(StatusCode::UNAUTHORIZED, "not authorized")
}

/// `403 forbidden`.
pub(crate) fn forbidden() -> Response {
    text(StatusCode::FORBIDDEN, "forbidden")
}

/// A status with an empty body (most ATC errors).
pub(crate) fn empty(status: StatusCode) -> Response {
    status.into_response()
}

/// A JSON body encoded like Go's `json.NewEncoder(w).Encode` (HTML-escaped, trailing newline).
pub(crate) fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response {
    match go_json(value) {
        Ok(mut body) => {
            body.push('\n');
            (
                status,
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                body,
            )
                .into_response()
        }
        Err(error) => {
            tracing::error!(%error, "failed to encode a response");
            empty(StatusCode::INTERNAL_SERVER_ERROR)
        }
    }
}

/// Go's `url.QueryUnescape`: `+` becomes a space, `%XX` is decoded; the result must be UTF-8.
pub(crate) fn query_unescape(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
        }
    }
    let spaced = s.replace('+', " ");
    percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

/// Parses `a=1&b=2` (form bodies and query strings). `None` if any pair is badly escaped.
pub(crate) fn parse_form(s: &str) -> Option<HashMap<String, String>> {
    let mut out = HashMap::new();
    for (key, value) in parse_pairs(s) {
        out.entry(key?).or_insert(value?);
    }
    Some(out)
}

/// Splits a query string into unescaped pairs, keeping order; bad escapes give `None`.
fn parse_pairs(s: &str) -> impl Iterator<Item = (Option<String>, Option<String>)> + '_ {
    s.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (query_unescape(key), query_unescape(value))
    })
}

/// Path segments of a request, each query-unescaped like pat's captures.
/// `None` if a segment is badly escaped.
pub(crate) fn segments(uri: &Uri) -> Option<Vec<String>> {
    uri.path().split('/').map(query_unescape).collect()
}

/// Why a pipeline reference could not be parsed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BadRequest;

/// `(team, pipeline, job?, instance vars)` from a `/api/v1/teams/...` request.
#[derive(Debug)]
pub(crate) struct PipelineRef {
    /// Team name.
    pub(crate) team: String,
    /// Pipeline name.
    pub(crate) pipeline: String,
    /// Job name, for job routes.
    pub(crate) job: Option<String>,
    /// Instance vars from `vars.*` / `vars`.
    pub(crate) vars: Option<Map<String, Value>>,
}

impl PipelineRef {
    /// Parses the path (`/api/v1/teams/T/pipelines/P[/jobs/J...]`) and query of a request.
    pub(crate) fn parse(uri: &Uri) -> Result<PipelineRef, BadRequest> {
        let segments = segments(uri).ok_or(BadRequest)?;
        let team = segments.get(4).ok_or(BadRequest)?.clone();
        let pipeline = segments.get(6).ok_or(BadRequest)?.clone();
        let job = match segments.get(7).map(String::as_str) {
            Some("jobs") => segments.get(8).cloned(),
            _ => None,
        };
        let vars = instance_vars(uri.query())?;
        Ok(PipelineRef {
            team,
            pipeline,
            job,
            vars,
        })
    }
}

/// Instance vars from a query string: `vars=<JSON object>` and/or `vars.<dotted.key>=<JSON>`.
/// A value that is not JSON (e.g. an unquoted string) is a bad request.
pub(crate) fn instance_vars(query: Option<&str>) -> Result<Option<Map<String, Value>>, BadRequest> {
    let mut vars = Map::new();
    for (key, value) in parse_pairs(query.unwrap_or("")) {
        // Like `url.Values`, pairs that fail to unescape are dropped.
        let (Some(key), Some(value)) = (key, value) else {
            continue;
        };
        if key == "vars" {
            let Ok(Value::Object(object)) = serde_json::from_str::<Value>(&value) else {
                return Err(BadRequest);
            };
            vars.extend(object);
        } else if let Some(path) = key.strip_prefix("vars.") {
            let value: Value = serde_json::from_str(&value).map_err(|_| BadRequest)?;
            let parts: Vec<&str> = path.split('.').collect();
            if parts.iter().any(|p| p.is_empty()) {
                return Err(BadRequest);
            }
            insert_nested(&mut vars, &parts, value);
        }
    }
    Ok((!vars.is_empty()).then_some(vars))
}

/// Inserts `value` at a dotted path, creating objects on the way.
fn insert_nested(map: &mut Map<String, Value>, path: &[&str], value: Value) {
    match path {
        [] => {}
        [last] => {
            map.insert((*last).to_owned(), value);
        }
        [first, rest @ ..] => {
            let entry = map
                .entry((*first).to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            if let Value::Object(inner) = entry {
                insert_nested(inner, rest, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn query_unescape_turns_plus_into_space() {
        assert_eq!(query_unescape("a+b").as_deref(), Some("a b"));
        assert_eq!(query_unescape("a%2Bb").as_deref(), Some("a+b"));
        assert_eq!(query_unescape("caf%C3%A9").as_deref(), Some("café"));
        assert_eq!(query_unescape("bad%zz"), None);
        assert_eq!(query_unescape("bad%4"), None);
    }

    #[test]
    fn instance_vars_parse_dotted_keys_and_whole_objects() {
        let vars = instance_vars(Some("vars.branch=%22main%22&vars.a.b=1&other=x"));
        assert_eq!(
            vars,
            Ok(json!({"branch": "main", "a": {"b": 1}})
                .as_object()
                .cloned())
        );
        let vars = instance_vars(Some("vars=%7B%22branch%22%3A%22main%22%7D"));
        assert_eq!(vars, Ok(json!({"branch": "main"}).as_object().cloned()));
        assert_eq!(instance_vars(Some("x=1")), Ok(None));
        assert_eq!(instance_vars(None), Ok(None));
    }

    #[test]
    fn unquoted_instance_vars_are_bad_requests() {
        assert_eq!(instance_vars(Some("vars.branch=main")), Err(BadRequest));
        assert_eq!(instance_vars(Some("vars=%5B1%5D")), Err(BadRequest));
    }

    #[test]
    fn pipeline_refs_come_from_raw_segments() {
        let uri: Uri = "/api/v1/teams/main/pipelines/a+b/jobs/c%2Bd/builds?vars.x=1"
            .parse()
            .unwrap_or_default();
        let r = PipelineRef::parse(&uri);
        let r = r.ok();
        assert_eq!(r.as_ref().map(|r| r.pipeline.as_str()), Some("a b"));
        assert_eq!(r.as_ref().and_then(|r| r.job.as_deref()), Some("c+d"));
        assert_eq!(r.and_then(|r| r.vars), json!({"x": 1}).as_object().cloned());
    }
}
