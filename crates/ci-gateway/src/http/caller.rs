//! The [`Caller`] extractor and what a request tells the audit log about itself.
//!
//! `Caller` (required) rejects with the standard 401; `MaybeCaller` never rejects, so the
//! trigger and cancel handlers can record a refused attempt before answering 401.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::AppState;
use super::error::ApiError;
use crate::auth::{Caller, Denial};

/// Who sent the request and where from, for the audit log.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    /// The `x-request-id` the request-id layer set (or the caller sent).
    pub request_id: Option<String>,
    /// The peer address.
    pub source_addr: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for RequestMeta {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Ok(RequestMeta {
            request_id: parts
                .headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            source_addr: parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(addr)| addr.to_string()),
        })
    }
}

/// The outcome of authenticating a request, for handlers that record refusals.
pub struct MaybeCaller(pub Result<Caller, Denial>);

async fn authenticate(parts: &Parts, state: &AppState) -> Result<Caller, Denial> {
    let mut values = parts.headers.get_all(AUTHORIZATION).iter();
    let authorization = match values.next() {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| Denial::Unauthenticated)?),
    };
    // Two credentials are one too many: refuse rather than pick one.
    if values.next().is_some() {
        return Err(Denial::Unauthenticated);
    }
    let peer_certs: &[Vec<u8>] = parts
        .extensions
        .get::<Arc<axum_server::tls::TlsInfo>>()
        .map(|info| info.peer_certificates.as_slice())
        .unwrap_or_default();
    state.auth.authenticate(authorization, peer_certs).await
}

impl FromRequestParts<AppState> for MaybeCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Ok(MaybeCaller(authenticate(parts, state).await))
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authenticate(parts, state).await.map_err(ApiError::from)
    }
}
