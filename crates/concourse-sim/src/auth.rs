//! The token endpoint (`POST /sky/issuer/token`, dex's password grant) and bearer-token checks.
//!
//! Tokens are opaque like the ATC's since v6.5: 20 random bytes plus the 8-byte little-endian
//! Unix expiry, base64 (standard alphabet, no padding). They are looked up in an in-memory
//! table, expire after [`World::token_ttl`](crate::World::token_ttl), and carry team roles only
//! if the scope asked for both `federated:id` and `groups`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use rand::Rng;
use serde::Serialize;
use serde_json::json;

use crate::http::{ApiError, parse_form, query_unescape};
use crate::state::{Shared, go_json, unix_now};
use crate::world::Role;

/// An issued access token.
pub(crate) struct Grant {
    /// The user the token belongs to.
    pub(crate) username: String,
    /// Whether the claims carry `federated_claims` and `groups`, without which no team role
    /// matches.
    pub(crate) has_roles: bool,
    /// When the token stops working.
    pub(crate) expires: Instant,
}

/// Who is calling, resolved from the `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Caller {
    /// No `Authorization` header.
    Anonymous,
    /// A header that is malformed, or a token that is unknown or expired.
    Invalid,
    /// A valid token.
    User {
        /// The user's name.
        username: String,
        /// Whether team roles apply (see [`Grant::has_roles`]).
        has_roles: bool,
    },
}

impl Caller {
    /// Resolves the caller like the ATC's verifier: `Bearer <token>` (scheme case-insensitive,
    /// exactly one space); cookies are ignored.
    pub(crate) fn from_headers(shared: &Shared, headers: &HeaderMap) -> Caller {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Caller::Anonymous;
        };
        let Ok(value) = value.to_str() else {
            return Caller::Invalid;
        };
        if value.is_empty() {
            return Caller::Anonymous;
        }
        let parts: Vec<&str> = value.split(' ').collect();
        let [scheme, token] = parts.as_slice() else {
            return Caller::Invalid;
        };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Caller::Invalid;
        }
        let mut tokens = shared.lock_tokens();
        match tokens.get(*token) {
            Some(grant) if grant.expires > Instant::now() => Caller::User {
                username: grant.username.clone(),
                has_roles: grant.has_roles,
            },
            Some(_) => {
                tokens.remove(*token);
                Caller::Invalid
            }
            None => Caller::Invalid,
        }
    }

    /// The caller's role on `team`, if any.
    pub(crate) fn role(&self, shared: &Shared, team: &str) -> Option<Role> {
        match self {
            Caller::User {
                username,
                has_roles: true,
            } => shared.user_role(username, team),
            _ => None,
        }
    }

    /// True for a valid token.
    pub(crate) fn is_authenticated(&self) -> bool {
        matches!(self, Caller::User { .. })
    }

    /// The display user id (`created_by` of triggered builds).
    pub(crate) fn username(&self) -> &str {
        match self {
            Caller::User { username, .. } => username,
            _ => "",
        }
    }

    /// Requires `needed` (or more) on `team`: 401 unless authenticated, 403 without the role.
    pub(crate) fn require(
        &self,
        shared: &Shared,
        team: &str,
        needed: Role,
    ) -> Result<(), ApiError> {
        if !self.is_authenticated() {
            return Err(ApiError::Unauthorized);
        }
        match self.role(shared, team) {
            Some(role) if role.includes(needed) => Ok(()),
            _ => Err(ApiError::Forbidden),
        }
    }
}

/// The successful token response (dex's, as rewritten by the ATC).
#[derive(Serialize)]
struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
    id_token: String,
}

/// An OAuth2 error response.
fn oauth_error(status: StatusCode, error: &str, description: Option<&str>) -> Response {
    let body = match description {
        Some(d) => json!({"error": error, "error_description": d}),
        None => json!({"error": error}),
    };
    let body = go_json(&body).unwrap_or_default();
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

/// Client credentials from HTTP Basic (URL-unescaped, as golang/oauth2 escapes them).
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((query_unescape(id)?, query_unescape(secret)?))
}

/// Random bytes.
fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::rng().fill(&mut bytes[..]);
    bytes
}

/// An opaque access token: 20 random bytes + `exp` as 8 bytes little-endian, base64 no padding.
pub(crate) fn opaque_token(exp: i64) -> String {
    let mut bytes = Vec::with_capacity(28);
    bytes.extend_from_slice(&random_bytes::<20>());
    bytes.extend_from_slice(&exp.to_le_bytes());
    STANDARD_NO_PAD.encode(bytes)
}

/// A JWT-shaped id token (unsigned: the signature part is random bytes).
fn id_token(shared: &Shared, username: &str, client_id: &str, scopes: &[&str], exp: i64) -> String {
    let header = json!({"alg": "RS256", "kid": "concourse-sim"});
    let mut claims = json!({
        "iss": format!("{}/sky/issuer", shared.external_url),
        "sub": URL_SAFE_NO_PAD.encode(format!("local:{username}")),
        "aud": client_id,
        "exp": exp,
        "iat": unix_now(),
        "name": username,
        "preferred_username": username,
    });
    if let Some(obj) = claims.as_object_mut() {
        if scopes.contains(&"email") {
            obj.insert("email".into(), json!(format!("{username}@example.com")));
            obj.insert("email_verified".into(), json!(true));
        }
        if scopes.contains(&"federated:id") {
            obj.insert(
                "federated_claims".into(),
                json!({"connector_id": "local", "user_id": username}),
            );
        }
        if scopes.contains(&"groups") {
            obj.insert("groups".into(), json!([]));
        }
    }
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(random_bytes::<64>()),
    )
}

/// `POST /sky/issuer/token` (every method is routed here; dex answers non-POST with 400).
pub(crate) async fn token(
    State(shared): State<Arc<Shared>>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method != Method::POST {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("method not allowed"),
        );
    }
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim() == "application/x-www-form-urlencoded")
        });
    let form = if is_form {
        let Some(form) = std::str::from_utf8(&body).ok().and_then(parse_form) else {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                Some("Couldn't parse data"),
            );
        };
        form
    } else {
        HashMap::new()
    };
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or("");

    let (client_id, client_secret) = basic_credentials(&headers).unwrap_or_else(|| {
        (
            field("client_id").to_owned(),
            field("client_secret").to_owned(),
        )
    });
    if !shared
        .clients
        .iter()
        .any(|(id, secret)| *id == client_id && *secret == client_secret)
    {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            Some("Invalid client credentials."),
        );
    }
    if field("grant_type") != "password" {
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", None);
    }
    let scopes: Vec<&str> = field("scope").split_whitespace().collect();
    if !scopes.contains(&"openid") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some(r#"Missing required scope(s) ["openid"]"#),
        );
    }
    let username = field("username");
    let password = field("password");
    let known = shared
        .users
        .iter()
        .any(|u| u.username == username && u.password == password);
    if username.is_empty() || !known {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "access_denied",
            Some("Invalid username or password"),
        );
    }

    let ttl = shared.token_ttl;
    let whole_secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    let exp = unix_now().saturating_add(i64::try_from(whole_secs).unwrap_or(i64::MAX));
    let access_token = opaque_token(exp);
    let response = TokenResponse {
        access_token: access_token.clone(),
        token_type: "bearer",
        expires_in: ttl.as_secs().max(1),
        id_token: id_token(&shared, username, &client_id, &scopes, exp),
    };
    let now = Instant::now();
    {
        let mut tokens = shared.lock_tokens();
        tokens.retain(|_, g| g.expires > now);
        tokens.insert(
            access_token,
            Grant {
                username: username.to_owned(),
                has_roles: scopes.contains(&"federated:id") && scopes.contains(&"groups"),
                expires: now + ttl.max(Duration::from_millis(1)),
            },
        );
    }
    shared.logins.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(username, client_id, "issued access token");
    let Ok(body) = go_json(&response) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (header::PRAGMA, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opaque_tokens_carry_their_expiry() {
        let token = opaque_token(1_786_037_157);
        assert_eq!(token.len(), 38);
        let bytes = STANDARD_NO_PAD.decode(&token).unwrap_or_default();
        assert_eq!(bytes.len(), 28);
        let mut exp = [0u8; 8];
        exp.copy_from_slice(&bytes[20..]);
        assert_eq!(i64::from_le_bytes(exp), 1_786_037_157);
    }
}
