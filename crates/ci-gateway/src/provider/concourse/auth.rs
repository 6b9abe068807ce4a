//! Logging in to Concourse and caching the bearer token.
//!
//! Concourse (v6.1+) issues tokens at `POST /sky/issuer/token` with the OAuth2 password grant,
//! authenticating the client (`fly:Zmx5` by default) with HTTP Basic. The token is opaque and has
//! no refresh token, so "refreshing" means logging in again. We do that ahead of expiry, so that a
//! call never starts with a token about to lapse, and once more when Concourse answers 401.
//!
//! All callers share one cached token behind a `tokio::sync::Mutex` that is held across the login
//! request: concurrent callers that find no valid token wait for the one login in flight instead of
//! each logging in (no thundering herd).
//!
//! Secrets (password, client secret, token) stay in [`SecretString`]s and are exposed only to
//! build the request; they never reach a log line or an error message.

use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::CONTENT_TYPE;
use reqwest::{RequestBuilder, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::wire::{TokenError, TokenResponse};
use super::{snippet, transport_error};
use crate::provider::ProviderError;

/// The scope `fly` asks for. `federated:id` and `groups` put the claims the ATC's role check reads
/// into the token; without them the token authenticates but grants no team role.
pub(super) const SCOPE: &str = "openid profile email federated:id groups";

/// How long to keep a token whose answer had no `expires_in` (older servers, proxies).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);

/// Upper bound of the safety margin before expiry.
const MAX_MARGIN: Duration = Duration::from_secs(60);

/// `application/x-www-form-urlencoded`, as Go's `url.QueryEscape` writes it: everything but
/// `A-Z a-z 0-9 - _ . *` is percent-encoded (a space becomes `+`, done separately).
const FORM: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'*');

/// A bearer token handed to one request, tagged with the login that produced it.
#[derive(Clone)]
pub(super) struct Bearer {
    token: SecretString,
    /// Which login produced it, so that a 401 invalidates only this token and not a newer one
    /// another caller already fetched.
    generation: u64,
}

impl Bearer {
    /// Adds the `Authorization: Bearer` header.
    pub fn apply(&self, request: RequestBuilder) -> RequestBuilder {
        request.bearer_auth(self.token.expose_secret())
    }
}

struct CachedToken {
    bearer: Bearer,
    /// When to stop handing it out and log in again (before it expires).
    refresh_at: Instant,
}

#[derive(Default)]
struct TokenState {
    current: Option<CachedToken>,
    generation: u64,
}

/// Credentials plus the shared token cache.
pub(super) struct Auth {
    client: reqwest::Client,
    token_url: Url,
    username: String,
    password: SecretString,
    client_id: String,
    client_secret: SecretString,
    state: Mutex<TokenState>,
}

impl Auth {
    /// Creates the cache; nothing is sent until the first [`Auth::bearer`].
    pub fn new(
        client: reqwest::Client,
        token_url: Url,
        username: String,
        password: SecretString,
        client_id: String,
        client_secret: SecretString,
    ) -> Auth {
        Auth {
            client,
            token_url,
            username,
            password,
            client_id,
            client_secret,
            state: Mutex::new(TokenState::default()),
        }
    }

    /// The login name, for messages.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// Returns a token that is not about to expire, logging in if needed.
    ///
    /// # Errors
    /// [`ProviderError::Unavailable`] when Concourse refuses the credentials or cannot be reached,
    /// [`ProviderError::Timeout`], [`ProviderError::BadResponse`] for an unreadable answer.
    pub async fn bearer(&self) -> Result<Bearer, ProviderError> {
        let mut state = self.state.lock().await;
        if let Some(cached) = &state.current {
            if Instant::now() < cached.refresh_at {
                return Ok(cached.bearer.clone());
            }
            tracing::debug!("Concourse token due for renewal");
        }
        state.current = None;
        let (token, lifetime) = self.login().await?;
        state.generation += 1;
        let bearer = Bearer {
            token,
            generation: state.generation,
        };
        state.current = Some(CachedToken {
            bearer: bearer.clone(),
            refresh_at: lifetime.refresh_at,
        });
        Ok(bearer)
    }

    /// Forgets `bearer` after Concourse rejected it, unless a newer token already replaced it.
    pub async fn invalidate(&self, bearer: &Bearer) {
        let mut state = self.state.lock().await;
        if state
            .current
            .as_ref()
            .is_some_and(|c| c.bearer.generation == bearer.generation)
        {
            tracing::debug!("dropping the rejected Concourse token");
            state.current = None;
        }
    }

    /// Runs the password grant once.
    #[tracing::instrument(skip_all, fields(user = %self.username))]
    async fn login(&self) -> Result<(SecretString, Lifetime), ProviderError> {
        // Measured before sending, so the computed expiry errs on the early side.
        let sent_at = Instant::now();
        let body = format!(
            "grant_type=password&username={}&password={}&scope={}",
            form_encode(&self.username),
            form_encode(self.password.expose_secret()),
            form_encode(SCOPE),
        );
        // RFC 6749 §2.3.1: the client id and secret are form-encoded before Basic encoding;
        // dex decodes them that way (as golang.org/x/oauth2 encodes them).
        let response = self
            .client
            .post(self.token_url.clone())
            .basic_auth(
                form_encode(&self.client_id),
                Some(form_encode(self.client_secret.expose_secret())),
            )
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| self.scrub(transport_error("log in to Concourse", &e)))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| self.scrub(transport_error("read the Concourse login answer", &e)))?;
        if !status.is_success() {
            return Err(self.scrub(self.login_error(status, &text)));
        }
        let token: TokenResponse = serde_json::from_str(&text).map_err(|e| {
            // serde's message can quote input; report only where it failed.
            ProviderError::BadResponse(format!(
                "Concourse login answer is not the expected token JSON ({:?} error at line {} column {})",
                e.classify(),
                e.line(),
                e.column()
            ))
        })?;
        if token.access_token.is_empty() {
            return Err(ProviderError::BadResponse(
                "Concourse login answer has an empty access_token".to_owned(),
            ));
        }
        if let Some(kind) = &token.token_type
            && !kind.eq_ignore_ascii_case("bearer")
        {
            tracing::warn!(token_type = %kind, "Concourse issued a token that is not 'bearer'; using it as one");
        }
        let lifetime = Lifetime::new(sent_at, token.expires_in);
        tracing::info!(
            expires_in_secs = token.expires_in,
            renew_in_secs = lifetime
                .refresh_at
                .saturating_duration_since(sent_at)
                .as_secs_f64(),
            "logged in to Concourse"
        );
        Ok((SecretString::from(token.access_token), lifetime))
    }

    fn login_error(&self, status: StatusCode, body: &str) -> ProviderError {
        let oauth: TokenError = serde_json::from_str(body).unwrap_or_default();
        let detail = if oauth.error.is_empty() {
            snippet(body)
        } else if oauth.error_description.is_empty() {
            oauth.error.clone()
        } else {
            format!("{}: {}", oauth.error, oauth.error_description)
        };
        let user = &self.username;
        let message = match (status, oauth.error.as_str()) {
            (StatusCode::UNAUTHORIZED, "access_denied") => format!(
                "Concourse login refused for user {user:?}: wrong username or password ({status}, {detail})"
            ),
            (StatusCode::UNAUTHORIZED, "invalid_client") => format!(
                "Concourse login refused: client id {:?} or its secret is not accepted ({status}, {detail})",
                self.client_id
            ),
            _ => format!("Concourse login as user {user:?} failed ({status}): {detail}"),
        };
        ProviderError::Unavailable(message)
    }

    /// Belt and braces: never let a secret through in an error text, whatever the server echoed.
    fn scrub(&self, error: ProviderError) -> ProviderError {
        let secrets = [
            self.password.expose_secret(),
            self.client_secret.expose_secret(),
        ];
        let clean = |text: String| {
            secrets
                .iter()
                .filter(|s| s.len() >= 3)
                .fold(text, |t, s| t.replace(s, "[REDACTED]"))
        };
        match error {
            ProviderError::Unavailable(m) => ProviderError::Unavailable(clean(m)),
            ProviderError::Timeout(m) => ProviderError::Timeout(clean(m)),
            ProviderError::NotFound(m) => ProviderError::NotFound(clean(m)),
            ProviderError::Refused(m) => ProviderError::Refused(clean(m)),
            ProviderError::BadResponse(m) => ProviderError::BadResponse(clean(m)),
            ProviderError::InvalidRef(m) => ProviderError::InvalidRef(clean(m)),
        }
    }
}

/// When a freshly issued token should be renewed.
struct Lifetime {
    refresh_at: Instant,
}

impl Lifetime {
    /// Renews at `expires_in` minus a margin of a quarter of the lifetime, at most 60 s: a 24 h
    /// token is renewed a minute early, a 2 s token after 1.5 s.
    fn new(sent_at: Instant, expires_in: Option<f64>) -> Lifetime {
        let lifetime = match expires_in {
            Some(secs) if secs.is_finite() && secs > 0.0 => {
                Duration::try_from_secs_f64(secs).unwrap_or(DEFAULT_LIFETIME)
            }
            Some(_) => Duration::ZERO,
            None => {
                tracing::debug!("Concourse token answer has no expires_in; assuming a short life");
                DEFAULT_LIFETIME
            }
        };
        let margin = (lifetime / 4).min(MAX_MARGIN);
        Lifetime {
            refresh_at: sent_at + (lifetime - margin),
        }
    }
}

/// Encodes one form value.
fn form_encode(value: &str) -> String {
    // `%20` can only come from a space: a literal `%` is itself encoded as `%25`.
    utf8_percent_encode(value, FORM)
        .to_string()
        .replace("%20", "+")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding_matches_go_query_escape() {
        assert_eq!(
            form_encode(SCOPE),
            "openid+profile+email+federated%3Aid+groups"
        );
        assert_eq!(
            form_encode("a b&c=d%e+f/é*-_."),
            "a+b%26c%3Dd%25e%2Bf%2F%C3%A9*-_."
        );
    }

    #[test]
    fn renewal_margin_is_a_quarter_of_the_life_capped_at_a_minute() {
        let t0 = Instant::now();
        let at = |e| Lifetime::new(t0, e).refresh_at - t0;
        assert_eq!(at(Some(2.0)), Duration::from_millis(1500));
        assert_eq!(at(Some(86_399.0)), Duration::from_secs(86_339));
        assert_eq!(at(Some(0.0)), Duration::ZERO);
        assert_eq!(at(None), Duration::from_secs(240));
    }
}
