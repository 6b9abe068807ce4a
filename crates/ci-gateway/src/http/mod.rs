//! The HTTP API: routes, shared state, middleware.

pub mod caller;
pub mod error;
pub mod extract;
pub mod handlers;
pub mod listing;
pub mod openapi;
pub mod sse;
pub mod views;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Request, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

use crate::auth::Authenticator;
use crate::config::ServerSettings;
use crate::runs::RunService;

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The run engine: store, providers, event bus.
    pub runs: Arc<RunService>,
    /// Server limits and heartbeat.
    pub server: Arc<ServerSettings>,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Checks callers' credentials.
    pub auth: Arc<Authenticator>,
    /// The OpenAPI document served at `/v1/openapi.json`.
    pub openapi: openapi::Document,
}

/// Request ids are ULIDs, so they sort by time in the logs.
#[derive(Clone, Copy)]
struct UlidRequestId;

impl MakeRequestId for UlidRequestId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        ulid::Ulid::generate()
            .to_string()
            .parse()
            .ok()
            .map(RequestId::new)
    }
}

/// A panic in a handler becomes the standard JSON 500, not an empty body.
fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response<axum::body::Body> {
    let body = serde_json::json!({ "error": { "code": "internal", "message": "internal error" } });
    Response::builder()
        .status(StatusCode::INTERNAL_SERVER_ERROR)
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body.to_string()))
        .unwrap_or_default()
}

/// The router with every route and layer. The routes come from [`openapi::api`], so each one
/// is in the OpenAPI document.
pub fn router(state: AppState) -> Router {
    let header = axum::http::HeaderName::from_static("x-request-id");
    let (routes, _) = openapi::api().split_for_parts();
    routes
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(DefaultBodyLimit::max(state.server.max_body_bytes))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
            let id = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
        }))
        .layer(PropagateRequestIdLayer::new(header.clone()))
        .layer(SetRequestIdLayer::new(header, UlidRequestId))
        .layer(axum::middleware::map_request(drop_odd_request_id))
        .with_state(state)
}

/// A caller's `x-request-id` is kept only if it is a plausible id (at most 128 characters of
/// `A-Z a-z 0-9 . _ : -`); anything else is replaced by our own, so it cannot bloat the logs,
/// the audit log or the response.
async fn drop_odd_request_id<B>(mut request: Request<B>) -> Request<B> {
    let odd = request.headers().get("x-request-id").is_some_and(|v| {
        v.len() > 128
            || !v
                .as_bytes()
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    });
    if odd {
        request.headers_mut().remove("x-request-id");
    }
    request
}
