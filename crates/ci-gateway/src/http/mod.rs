//! The HTTP API: routes, shared state, middleware.

pub mod caller;
pub mod error;
pub mod extract;
pub mod handlers;
pub mod sse;
pub mod views;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Request, Response, StatusCode};
use axum::routing::{get, post};
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

/// The router with every route and layer.
pub fn router(state: AppState) -> Router {
    let header = axum::http::HeaderName::from_static("x-request-id");
    Router::new()
        .route("/v1/jobs", get(handlers::list_jobs))
        .route("/v1/jobs/{job_id}/runs", post(handlers::trigger_run))
        .route("/v1/runs/{run_id}", get(handlers::get_run))
        .route("/v1/runs/{run_id}/events", get(sse::run_events))
        .route("/v1/runs/{run_id}/cancel", post(handlers::cancel_run))
        .route("/v1/audit", get(handlers::list_audit))
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(handlers::metrics))
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
        .with_state(state)
}
