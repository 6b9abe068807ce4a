//! Extractors that reject in the API's JSON error shape instead of axum's plain text.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// A JSON body that may also be absent (then `T::default()`); unknown fields are refused by
/// `T`'s `deny_unknown_fields`.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Default,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let declared_json = match req.headers().get(CONTENT_TYPE) {
            None => true,
            Some(v) => v
                .to_str()
                .ok()
                .and_then(|v| v.split(';').next())
                .is_some_and(|mime| {
                    let mime = mime.trim().to_ascii_lowercase();
                    mime == "application/json" || mime.ends_with("+json")
                }),
        };
        let bytes =
            Bytes::from_request(req, state)
                .await
                .map_err(|rejection: BytesRejection| {
                    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                        ApiError::PayloadTooLarge
                    } else {
                        ApiError::InvalidRequest("the request body could not be read".to_owned())
                    }
                })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonBody(T::default()));
        }
        if !declared_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        // Parse to a value first: only an object is a request (serde would also build a
        // struct from an array), and syntax errors stay apart from shape errors.
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
        if !value.is_object() {
            return Err(ApiError::InvalidRequest(
                "the request body must be a JSON object".into(),
            ));
        }
        T::deserialize(value)
            .map(JsonBody)
            .map_err(|e| ApiError::InvalidRequest(format!("invalid request body: {e}")))
    }
}

/// One path parameter as text. One that does not decode (bad percent-encoding, not UTF-8)
/// becomes the empty string, which no id accepts, so the caller gets the route's own 404.
pub struct PathParam(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(p)| PathParam(p))
            .or_else(|_| Ok(PathParam(String::new())))
    }
}
