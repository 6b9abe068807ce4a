//! Caller authentication and authorization.
//!
//! A caller proves who it is with one of: a JWT bearer token ([`jwt`]), a static API token
//! (the config holds only its SHA-256), or a client certificate from the configured CA (mTLS).
//! Each yields a [`Caller`]: a subject, the method, the scopes it holds and, optionally, the
//! projects it is limited to. Handlers ask for a [`Caller`] (see [`crate::http::caller`]) and
//! check scopes with [`Caller::require`].
//!
//! Failures are deliberately uninformative: every authentication failure is the same 401 and
//! every missing grant the same 403; the reason goes to the debug log only.

pub mod jwt;

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use anyhow::{Context, bail};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{AuthMode, AuthSettings, TlsSettings};
use crate::domain::TenantId;

pub use jwt::JwtVerifier;

/// A permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// List jobs.
    JobsRead,
    /// Read runs and follow their events.
    RunsRead,
    /// Trigger runs.
    RunsTrigger,
    /// Cancel runs.
    RunsCancel,
    /// Read the audit log.
    AuditRead,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 5] = [
        Scope::JobsRead,
        Scope::RunsRead,
        Scope::RunsTrigger,
        Scope::RunsCancel,
        Scope::AuditRead,
    ];

    /// The spelling in tokens and config, e.g. `runs:trigger`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::JobsRead => "jobs:read",
            Scope::RunsRead => "runs:read",
            Scope::RunsTrigger => "runs:trigger",
            Scope::RunsCancel => "runs:cancel",
            Scope::AuditRead => "audit:read",
        }
    }

    /// Parses one scope; `None` for anything else.
    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|sc| sc.as_str() == s)
    }
}

/// How a caller authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// A JWT bearer token.
    Jwt,
    /// A static API token.
    ApiToken,
    /// A client certificate.
    Mtls,
    /// Nothing: `auth.mode = "none"`, or an anonymous attempt in the audit log.
    None,
}

impl AuthMethod {
    /// The spelling in the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Jwt => "jwt",
            AuthMethod::ApiToken => "api_token",
            AuthMethod::Mtls => "mtls",
            AuthMethod::None => "none",
        }
    }
}

/// What a credential grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The scopes.
    pub scopes: BTreeSet<Scope>,
    /// `None`: every project; otherwise only these.
    pub projects: Option<BTreeSet<String>>,
}

impl Grant {
    /// Every scope on every project.
    pub fn everything() -> Grant {
        Grant {
            scopes: Scope::ALL.into_iter().collect(),
            projects: None,
        }
    }

    /// Parses scope names, ignoring unknown ones (tokens may carry other services' scopes).
    pub fn from_names<'a>(
        scopes: impl IntoIterator<Item = &'a str>,
        projects: Option<Vec<String>>,
    ) -> Grant {
        Grant {
            scopes: scopes.into_iter().filter_map(Scope::parse).collect(),
            projects: projects.map(|p| p.into_iter().collect()),
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Who: the JWT `sub`, the API token's name, or the certificate identity.
    pub subject: String,
    /// How it authenticated.
    pub method: AuthMethod,
    /// The tenant it acts in; always `default` for now, but resolved here, from the identity.
    pub tenant: TenantId,
    /// What it may do.
    pub grant: Grant,
}

/// Why a request is refused, for the log only: callers see one 401 or one 403.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// No or bad credentials.
    Unauthenticated,
    /// The scope is missing.
    MissingScope,
    /// The project is outside the caller's grant.
    ProjectNotAllowed,
}

impl Denial {
    /// The stable reason recorded in the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Denial::Unauthenticated => "unauthenticated",
            Denial::MissingScope => "missing_scope",
            Denial::ProjectNotAllowed => "project_not_allowed",
        }
    }
}

impl Caller {
    /// The caller of every request when `auth.mode = "none"`.
    pub fn unauthenticated_operator() -> Caller {
        Caller {
            subject: "anonymous".to_owned(),
            method: AuthMethod::None,
            tenant: TenantId::default_tenant(),
            grant: Grant::everything(),
        }
    }

    /// Records the subject as the `caller` field of the current span (the handler's: extractors
    /// run before it is entered).
    pub fn record_in_span(&self) {
        tracing::Span::current().record("caller", self.subject.as_str());
    }

    /// Whether it holds `scope`.
    pub fn has(&self, scope: Scope) -> bool {
        self.grant.scopes.contains(&scope)
    }

    /// Whether it may touch jobs of `project`.
    pub fn may_access(&self, project: &str) -> bool {
        self.grant
            .projects
            .as_ref()
            .is_none_or(|p| p.contains(project))
    }

    /// Checks a scope.
    ///
    /// # Errors
    /// [`Denial::MissingScope`].
    pub fn require(&self, scope: Scope) -> Result<(), Denial> {
        if self.has(scope) {
            Ok(())
        } else {
            tracing::debug!(caller = %self.subject, scope = scope.as_str(), "scope missing");
            Err(Denial::MissingScope)
        }
    }
}

/// A configured API token: its digest and grant.
struct ApiToken {
    name: String,
    sha256: [u8; 32],
    grant: Grant,
}

/// Checks credentials against the `[auth]` configuration.
pub struct Authenticator {
    mode: AuthMode,
    tokens: Vec<ApiToken>,
    jwt: Option<JwtVerifier>,
    certs: Vec<(String, Grant)>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("mode", &self.mode)
            .field("tokens", &self.tokens.len())
            .field("jwt", &self.jwt.is_some())
            .field("cert_identities", &self.certs.len())
            .finish()
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn parse_hex32(hex: &str) -> Option<[u8; 32]> {
    // `from_str_radix` alone would accept a sign (`+a`): only hex digits count.
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The SHA-256 of a token, lowercase hex: what `[[auth.tokens]] sha256` holds.
pub fn token_digest(token: &str) -> String {
    sha256(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A fresh random API token (`cigw_` + 43 base62-ish characters, 256 bits).
pub fn generate_token() -> SecretString {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let body: String = (0..43)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect();
    SecretString::from(format!("cigw_{body}"))
}

fn parse_scopes(what: &str, scopes: &[String]) -> anyhow::Result<()> {
    for s in scopes {
        if Scope::parse(s).is_none() {
            bail!(
                "{what}: unknown scope {s:?} (known: jobs:read, runs:read, runs:trigger, \
                 runs:cancel, audit:read)"
            );
        }
    }
    Ok(())
}

/// The identity a client certificate (DER) stands for: its first SAN URI, else its first SAN
/// DNS name, else its subject CN.
pub fn cert_identity(der: &[u8]) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        let names = &san.value.general_names;
        let uri = names.iter().find_map(|n| match n {
            GeneralName::URI(u) => Some((*u).to_owned()),
            _ => None,
        });
        let dns = || {
            names.iter().find_map(|n| match n {
                GeneralName::DNSName(d) => Some((*d).to_owned()),
                _ => None,
            })
        };
        if let Some(id) = uri.or_else(dns) {
            return Some(id);
        }
    }
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
}

impl Authenticator {
    /// Checks the `[auth]` section without reading secrets or keys from outside the file.
    ///
    /// # Errors
    /// The first problem, in words an operator can act on.
    pub fn check_settings(auth: &AuthSettings, tls: Option<&TlsSettings>) -> anyhow::Result<()> {
        let mut names = std::collections::HashSet::new();
        let mut digests = std::collections::HashSet::new();
        for t in &auth.tokens {
            let what = format!("auth token {:?}", t.name);
            if t.name.trim().is_empty() || t.name == "anonymous" {
                bail!("{what}: give the token a name of its own (not empty, not \"anonymous\")");
            }
            if !names.insert(t.name.as_str()) {
                bail!("{what}: the name is used twice");
            }
            // One token, one grant: a second entry for the same digest would silently win.
            if let Some(h) = &t.sha256
                && !digests.insert(h.to_ascii_lowercase())
            {
                bail!("{what}: the same sha256 is configured twice");
            }
            match (&t.sha256, &t.token_env) {
                (Some(h), None) => {
                    if parse_hex32(&h.to_ascii_lowercase()).is_none() {
                        bail!("{what}: sha256 must be 64 hex digits");
                    }
                }
                (None, Some(_)) => {}
                _ => bail!("{what}: set exactly one of sha256 and token_env"),
            }
            parse_scopes(&what, &t.scopes)?;
        }
        for c in &auth.mtls {
            parse_scopes(&format!("auth mtls identity {:?}", c.identity), &c.scopes)?;
        }
        if !auth.mtls.is_empty() && tls.and_then(|t| t.client_ca_file.as_ref()).is_none() {
            bail!("auth.mtls needs [server.tls] with client_ca_file");
        }
        if let Some(jwt) = &auth.jwt {
            JwtVerifier::check_settings(jwt)?;
        }
        let any = auth.jwt.is_some() || !auth.tokens.is_empty() || !auth.mtls.is_empty();
        if auth.mode == AuthMode::Required && !any {
            bail!(
                "auth: no caller can authenticate: configure [auth.jwt], [[auth.tokens]] or \
                 [[auth.mtls]], or set auth.mode = \"none\" to turn authentication off"
            );
        }
        Ok(())
    }

    /// Builds the authenticator: reads token environment variables, static keys and the HS256
    /// secret.
    ///
    /// # Errors
    /// A missing environment variable, an unreadable key file, a bad key.
    pub fn from_settings(auth: &AuthSettings, tls: Option<&TlsSettings>) -> anyhow::Result<Self> {
        Self::check_settings(auth, tls)?;
        if auth.mode == AuthMode::None {
            tracing::warn!(
                "auth.mode = \"none\": callers are NOT authenticated and every caller holds \
                 every scope"
            );
        }
        let mut tokens = Vec::new();
        for t in &auth.tokens {
            let digest = match (&t.sha256, &t.token_env) {
                (Some(h), _) => parse_hex32(&h.to_ascii_lowercase())
                    .with_context(|| format!("auth token {:?}: bad sha256", t.name))?,
                (None, Some(var)) => {
                    let token = crate::config::read_secret(
                        &format!("auth token {:?}", t.name),
                        Some(var),
                        None::<&Path>,
                    )?;
                    sha256(token.expose_secret().as_bytes())
                }
                (None, None) => bail!("auth token {:?}: no sha256 or token_env", t.name),
            };
            tokens.push(ApiToken {
                name: t.name.clone(),
                sha256: digest,
                grant: Grant::from_names(t.scopes.iter().map(String::as_str), t.projects.clone()),
            });
        }
        let jwt = auth.jwt.as_ref().map(JwtVerifier::new).transpose()?;
        let certs = auth
            .mtls
            .iter()
            .map(|c| {
                (
                    c.identity.clone(),
                    Grant::from_names(c.scopes.iter().map(String::as_str), c.projects.clone()),
                )
            })
            .collect();
        Ok(Authenticator {
            mode: auth.mode,
            tokens,
            jwt,
            certs,
        })
    }

    /// An authenticator that accepts exactly one API token with every scope (for `dev`).
    pub fn single_token(name: &str, token: &SecretString) -> Authenticator {
        Authenticator {
            mode: AuthMode::Required,
            tokens: vec![ApiToken {
                name: name.to_owned(),
                sha256: sha256(token.expose_secret().as_bytes()),
                grant: Grant::everything(),
            }],
            jwt: None,
            certs: Vec::new(),
        }
    }

    /// Whether authentication is off.
    pub fn is_disabled(&self) -> bool {
        self.mode == AuthMode::None
    }

    /// Authenticates a request from its `Authorization` header value (if any) and its client
    /// certificate chain (if any; leaf first).
    ///
    /// # Errors
    /// [`Denial::Unauthenticated`] for a missing, malformed, unknown, expired or otherwise bad
    /// credential; the reason is logged at debug.
    pub async fn authenticate(
        &self,
        authorization: Option<&str>,
        peer_certs: &[Vec<u8>],
    ) -> Result<Caller, Denial> {
        if self.mode == AuthMode::None {
            return Ok(Caller::unauthenticated_operator());
        }
        let deny = |why: &str| {
            tracing::debug!(reason = why, "authentication failed");
            Denial::Unauthenticated
        };
        if let Some(value) = authorization {
            let Some((scheme, token)) = value.split_once(' ') else {
                return Err(deny("malformed Authorization header"));
            };
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err(deny("not a bearer token"));
            }
            let token = token.trim();
            if token.is_empty() {
                return Err(deny("empty bearer token"));
            }
            if let Some(caller) = self.match_api_token(token) {
                return Ok(caller);
            }
            if let Some(jwt) = &self.jwt
                && token.split('.').count() == 3
            {
                return match jwt.verify(token).await {
                    Ok((subject, grant)) => Ok(Caller {
                        subject,
                        method: AuthMethod::Jwt,
                        tenant: TenantId::default_tenant(),
                        grant,
                    }),
                    Err(e) => Err(deny(&format!("jwt: {e}"))),
                };
            }
            return Err(deny("unknown token"));
        }
        if let Some(leaf) = peer_certs.first() {
            // The TLS layer already verified the chain against the client CA.
            let Some(identity) = cert_identity(leaf) else {
                return Err(deny("client certificate without an identity"));
            };
            return match self.certs.iter().find(|(id, _)| *id == identity) {
                Some((_, grant)) => Ok(Caller {
                    subject: identity,
                    method: AuthMethod::Mtls,
                    tenant: TenantId::default_tenant(),
                    grant: grant.clone(),
                }),
                None => Err(deny("client certificate identity not mapped")),
            };
        }
        Err(deny("no credentials"))
    }

    /// Compares the token's digest with every configured digest in constant time (all of them,
    /// so timing tells nothing about which or how many are configured).
    fn match_api_token(&self, token: &str) -> Option<Caller> {
        let digest = sha256(token.as_bytes());
        let mut found: Option<&ApiToken> = None;
        for t in &self.tokens {
            if bool::from(t.sha256.ct_eq(&digest)) {
                found = Some(t);
            }
        }
        found.map(|t| Caller {
            subject: t.name.clone(),
            method: AuthMethod::ApiToken,
            tenant: TenantId::default_tenant(),
            grant: t.grant.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_digest_or_name_given_twice_or_not_hex_is_a_config_error() {
        let token = |name: &str, sha256: String| crate::config::ApiTokenSettings {
            name: name.to_owned(),
            sha256: Some(sha256),
            token_env: None,
            scopes: vec!["runs:read".to_owned()],
            projects: None,
        };
        let digest = token_digest("t");
        let check = |tokens| {
            Authenticator::check_settings(
                &AuthSettings {
                    tokens,
                    ..AuthSettings::default()
                },
                None,
            )
        };
        assert!(check(vec![token("a", digest.clone())]).is_ok());
        assert!(
            check(vec![
                token("a", digest.clone()),
                token("b", digest.to_uppercase())
            ])
            .is_err()
        );
        assert!(
            check(vec![
                token("a", digest.clone()),
                token("a", token_digest("u"))
            ])
            .is_err()
        );
        assert!(check(vec![token("anonymous", digest.clone())]).is_err());
        assert!(check(vec![token("a", format!("+{}", &digest[1..]))]).is_err());
    }

    #[test]
    fn scopes_round_trip_and_unknown_ones_are_ignored() {
        for s in Scope::ALL {
            assert_eq!(Scope::parse(s.as_str()), Some(s));
        }
        let g = Grant::from_names(["runs:read", "email:send"], None);
        assert_eq!(g.scopes.len(), 1);
    }

    #[tokio::test]
    async fn an_api_token_is_matched_by_digest_and_a_wrong_one_is_refused() {
        let token = generate_token();
        let auth = Authenticator::single_token("dev", &token);
        let header = format!("Bearer {}", token.expose_secret());
        let caller = auth.authenticate(Some(&header), &[]).await.unwrap();
        assert_eq!(caller.subject, "dev");
        assert!(caller.has(Scope::AuditRead));
        assert_eq!(
            auth.authenticate(Some("Bearer cigw_nope"), &[]).await,
            Err(Denial::Unauthenticated)
        );
        assert_eq!(
            auth.authenticate(None, &[]).await,
            Err(Denial::Unauthenticated)
        );
        assert_eq!(token_digest("abc").len(), 64);
    }
}
