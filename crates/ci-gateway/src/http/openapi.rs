//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]` annotations.
//!
//! [`api`] is the single list of routes: each one is added with utoipa-axum's `routes!`, which
//! registers the handler with axum and its documentation with the document at once, so the
//! two cannot drift apart. The document is served at `GET /v1/openapi.json`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use utoipa::OpenApi;
use utoipa::openapi::OpenApi as OpenApiDoc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::views::{EndEventData, LogEventData, StatusEventData};
use super::{AppState, handlers, listing, sse};

/// The document's fixed parts: info, tags, and the schemas no operation names directly (the
/// event stream's data).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "ci-gateway",
        description = "One stable, provider-agnostic CI API. Every error is \
            `{\"error\": {\"code\": \"...\", \"message\": \"...\"}}` with a stable `code`; \
            unknown paths get 404 `not_found` and unsupported methods 405 `method_not_allowed`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags(
        (name = "jobs", description = "The catalog of jobs callers may trigger."),
        (name = "runs", description = "Runs: trigger, read, list, follow, cancel."),
        (name = "audit", description = "Who triggered and canceled what, and what was refused."),
        (name = "operations", description = "Health, readiness, metrics and this document."),
    ),
    modifiers(&BearerAuth),
    components(schemas(StatusEventData, LogEventData, EndEventData))
)]
struct ApiDoc;

/// Declares the `bearer` security scheme the `/v1` operations name: an API token or a JWT in
/// `Authorization: Bearer …` (mTLS callers present a client certificate instead).
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut OpenApiDoc) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "An API token or a JWT; callers with a client certificate need none.",
            ))
            .build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// Every route of the API with its documentation; the router and the document come from here.
pub fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(handlers::list_jobs))
        .routes(routes!(handlers::trigger_run))
        .routes(routes!(listing::list_runs))
        .routes(routes!(handlers::get_run))
        .routes(routes!(sse::run_events))
        .routes(routes!(handlers::cancel_run))
        .routes(routes!(handlers::list_audit))
        .routes(routes!(handlers::healthz))
        .routes(routes!(handlers::readyz))
        .routes(routes!(handlers::metrics))
        .routes(routes!(openapi_json))
}

/// The OpenAPI document (built once; the router holds it).
pub fn document() -> OpenApiDoc {
    api().into_openapi()
}

/// The document, shared by every request that asks for it.
#[derive(Clone)]
pub struct Document(
    /// The generated document.
    pub Arc<OpenApiDoc>,
);

/// `GET /v1/openapi.json`.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "operations",
    summary = "This API's OpenAPI 3.1 document",
    responses((status = 200, description = "The document.", body = Object))
)]
pub async fn openapi_json(State(state): State<AppState>) -> Json<Arc<OpenApiDoc>> {
    Json(Arc::clone(&state.openapi.0))
}
