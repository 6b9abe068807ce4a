//! The API's one error type and its one JSON shape:
//! `{"error": {"code": "job_not_found", "message": "..."}}`.
//!
//! Codes are stable and documented in the README. Messages are written for callers and never
//! carry a provider's URL, team, pipeline, build id or credential: provider and store details go
//! to the log, the caller gets a generic sentence.

use super::views::{ErrorBody, ErrorDetail, RunView};
use crate::provider::ProviderError;
use crate::store::{RunRecord, StoreError};
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON (or not UTF-8).
    #[error("the request body is not valid JSON: {0}")]
    InvalidJson(String),
    /// The body or a header is JSON of the wrong shape: unknown field, wrong type, bad value.
    #[error("{0}")]
    InvalidRequest(String),
    /// The body is larger than allowed.
    #[error("the request body is too large")]
    PayloadTooLarge,
    /// The body is not declared as JSON.
    #[error("the request body must be application/json")]
    UnsupportedMediaType,
    /// No such job (or it was removed from the catalog).
    #[error("job not found")]
    JobNotFound,
    /// No such run.
    #[error("run not found")]
    RunNotFound,
    /// No such route.
    #[error("no such endpoint")]
    NotFound,
    /// The route exists, the method does not.
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
    /// Parameters the job does not accept.
    #[error("{0}")]
    InvalidParameters(String),
    /// The idempotency key was used before for a different request.
    #[error("this idempotency key was already used with different parameters")]
    IdempotencyKeyReused,
    /// The run already finished; the body carries it.
    #[error("the run has already finished")]
    RunTerminal(Box<RunRecord>),
    /// The run is still being submitted to the provider.
    #[error("the run is still being submitted; retry in a moment")]
    RunNotSubmitted,
    /// The provider failed.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A bug; details in the log.
    #[error("internal error: {0}")]
    Internal(String),
    /// Contention the caller should retry after a moment.
    #[error("{0}")]
    Busy(String),
    /// No credentials, or bad ones. Says nothing about which check failed.
    #[error("authentication required")]
    Unauthorized,
    /// Authenticated, but not allowed to do this. Says nothing about which grant is missing.
    #[error("not allowed")]
    Forbidden,
}

impl From<crate::auth::Denial> for ApiError {
    fn from(d: crate::auth::Denial) -> ApiError {
        match d {
            crate::auth::Denial::Unauthenticated => ApiError::Unauthorized,
            crate::auth::Denial::MissingScope | crate::auth::Denial::ProjectNotAllowed => {
                ApiError::Forbidden
            }
        }
    }
}

/// The API's code for a provider failure.
pub fn provider_code(e: &ProviderError) -> &'static str {
    match e {
        ProviderError::Unavailable(_) => "provider_unavailable",
        ProviderError::Timeout(_) => "provider_timeout",
        ProviderError::Refused(_) => "job_not_triggerable",
        ProviderError::NotFound(_)
        | ProviderError::BadResponse(_)
        | ProviderError::InvalidRef(_) => "provider_error",
    }
}

impl ApiError {
    /// The HTTP status.
    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::InvalidJson(_) | ApiError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::JobNotFound | ApiError::RunNotFound | ApiError::NotFound => {
                StatusCode::NOT_FOUND
            }
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::InvalidParameters(_) | ApiError::IdempotencyKeyReused => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::RunTerminal(_) | ApiError::RunNotSubmitted => StatusCode::CONFLICT,
            ApiError::Provider(e) => match e {
                ProviderError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                ProviderError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                ProviderError::Refused(_) => StatusCode::CONFLICT,
                ProviderError::NotFound(_)
                | ProviderError::BadResponse(_)
                | ProviderError::InvalidRef(_) => StatusCode::BAD_GATEWAY,
            },
            ApiError::Store(StoreError::Database(_) | StoreError::LeaseLost) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Store(StoreError::Corrupt(_)) | ApiError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidJson(_) => "invalid_json",
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::JobNotFound => "job_not_found",
            ApiError::RunNotFound => "run_not_found",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden => "forbidden",
            ApiError::InvalidParameters(_) => "invalid_parameters",
            ApiError::IdempotencyKeyReused => "idempotency_key_reused",
            ApiError::RunTerminal(_) => "run_already_finished",
            ApiError::RunNotSubmitted => "run_not_submitted",
            ApiError::Provider(e) => provider_code(e),
            ApiError::Store(StoreError::Database(_) | StoreError::LeaseLost) => "store_unavailable",
            ApiError::Busy(_) => "busy",
            ApiError::Store(StoreError::Corrupt(_)) | ApiError::Internal(_) => "internal",
        }
    }

    /// The caller-facing message: the error's own words for caller mistakes, a generic
    /// sentence for everything whose details belong to the operator.
    fn public_message(&self) -> String {
        match self {
            ApiError::Provider(ProviderError::Unavailable(_)) => {
                "the CI provider is unavailable; retry later".to_owned()
            }
            ApiError::Provider(ProviderError::Timeout(_)) => {
                "the CI provider did not answer in time".to_owned()
            }
            ApiError::Provider(ProviderError::Refused(_)) => {
                "the CI provider refuses to run this job now (disabled or archived upstream)"
                    .to_owned()
            }
            ApiError::Provider(_) => "the CI provider answered unexpectedly".to_owned(),
            ApiError::Store(StoreError::Database(_) | StoreError::LeaseLost) => {
                "the gateway's database is unavailable; retry later".to_owned()
            }
            ApiError::Store(StoreError::Corrupt(_)) | ApiError::Internal(_) => {
                "internal error".to_owned()
            }
            other => other.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        if status.is_server_error() {
            tracing::error!(code = self.code(), error = %self, "request failed");
        } else if matches!(self, ApiError::Provider(_)) {
            tracing::warn!(code = self.code(), error = %self, "provider refused");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message: self.public_message(),
            },
            run: match &self {
                ApiError::RunTerminal(run) => Some(RunView::from(run.as_ref())),
                _ => None,
            },
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"ci-gateway\""),
            );
        }
        response
    }
}
