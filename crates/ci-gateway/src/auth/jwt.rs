//! JWT bearer tokens: RS256, ES256 and EdDSA against static keys or a JWKS URL, and HS256 only
//! when a secret is configured.
//!
//! Algorithm confusion is closed three ways: the header's `alg` must be in the configured list
//! (`none` does not even parse), the key is chosen by `kid` and must belong to that algorithm's
//! family, and the validation accepts only that one algorithm. So an HS256 token "signed" with
//! an RSA public key as the HMAC secret is refused unless HS256 was configured, and then it is
//! checked against the configured secret only.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use secrecy::ExposeSecret;
use serde::Deserialize;
use tokio::sync::Mutex;

use super::Grant;
use crate::config::JwtSettings;

/// The claims the gateway reads; `exp`, `nbf`, `iss` and `aud` are checked by the validation.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    /// Space-separated scopes (RFC 8693 style).
    #[serde(default)]
    scope: Option<String>,
    /// Scopes as an array (Okta/Azure style).
    #[serde(default)]
    scp: Option<ScpClaim>,
    /// Optional project restriction.
    #[serde(default)]
    projects: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ScpClaim {
    List(Vec<String>),
    Text(String),
}

fn algorithm(name: &str) -> anyhow::Result<Algorithm> {
    Ok(match name {
        "RS256" => Algorithm::RS256,
        "ES256" => Algorithm::ES256,
        "EdDSA" => Algorithm::EdDSA,
        other => bail!("JWT algorithm {other:?} is not supported (RS256, ES256, EdDSA)"),
    })
}

fn decoding_key(alg: Algorithm, pem: &[u8]) -> anyhow::Result<DecodingKey> {
    Ok(match alg {
        Algorithm::RS256 => DecodingKey::from_rsa_pem(pem)?,
        Algorithm::ES256 => DecodingKey::from_ec_pem(pem)?,
        Algorithm::EdDSA => DecodingKey::from_ed_pem(pem)?,
        other => bail!("no static keys for {other:?}"),
    })
}

/// The JWKS, as last fetched.
#[derive(Default)]
struct JwksState {
    keys: HashMap<String, DecodingKey>,
    /// The last successful fetch.
    fetched_at: Option<Instant>,
    /// The last fetch attempt, successful or not.
    last_attempt: Option<Instant>,
    /// The last fetch caused by an unknown `kid`.
    last_forced: Option<Instant>,
}

/// The least time between two attempts to fetch a missing or stale JWKS, so an issuer outage
/// does not turn every request into a fetch.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// Verifies JWTs.
pub struct JwtVerifier {
    issuer: String,
    audience: Vec<String>,
    leeway: u64,
    algorithms: Vec<Algorithm>,
    static_keys: HashMap<String, (Algorithm, DecodingKey)>,
    hs256: Option<DecodingKey>,
    jwks_url: Option<String>,
    jwks_ttl: Duration,
    jwks_min_refresh: Duration,
    client: reqwest::Client,
    /// A tokio Mutex: held across the fetch, so concurrent misses cause one fetch.
    jwks: Mutex<JwksState>,
}

impl JwtVerifier {
    /// Checks the settings without reading files or the environment.
    ///
    /// # Errors
    /// An unsupported algorithm, no key source, an empty issuer or audience.
    pub fn check_settings(s: &JwtSettings) -> anyhow::Result<()> {
        for a in &s.algorithms {
            algorithm(a)?;
        }
        for k in &s.keys {
            algorithm(&k.algorithm).with_context(|| format!("auth.jwt key {:?}", k.kid))?;
            if k.public_key_pem.is_some() == k.public_key_file.is_some() {
                bail!(
                    "auth.jwt key {:?}: set exactly one of public_key_pem and public_key_file",
                    k.kid
                );
            }
        }
        if s.issuer.trim().is_empty() || s.audience.is_empty() {
            bail!("auth.jwt: issuer and audience are required");
        }
        if s.jwks_url.is_none() && s.keys.is_empty() && s.hs256_secret_env.is_none() {
            bail!("auth.jwt: set jwks_url, keys or hs256_secret_env");
        }
        Ok(())
    }

    /// Builds the verifier, reading static keys and the HS256 secret.
    ///
    /// # Errors
    /// Bad settings, an unreadable or invalid key, a missing secret.
    pub fn new(s: &JwtSettings) -> anyhow::Result<JwtVerifier> {
        Self::check_settings(s)?;
        let mut algorithms = s
            .algorithms
            .iter()
            .map(|a| algorithm(a))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut static_keys = HashMap::new();
        for k in &s.keys {
            let alg = algorithm(&k.algorithm)?;
            let pem = match (&k.public_key_pem, &k.public_key_file) {
                (Some(pem), _) => pem.clone().into_bytes(),
                (None, Some(file)) => std::fs::read(file)
                    .with_context(|| format!("auth.jwt key {:?}: {}", k.kid, file.display()))?,
                (None, None) => bail!("auth.jwt key {:?}: no key", k.kid),
            };
            let key = decoding_key(alg, &pem)
                .with_context(|| format!("auth.jwt key {:?}: not a {alg:?} public key", k.kid))?;
            static_keys.insert(k.kid.clone(), (alg, key));
        }
        let hs256 = match &s.hs256_secret_env {
            Some(var) => {
                let secret = crate::config::read_secret("auth.jwt hs256 secret", Some(var), None)?;
                algorithms.push(Algorithm::HS256);
                Some(DecodingKey::from_secret(secret.expose_secret().as_bytes())?)
            }
            None => None,
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(3))
            .build()
            .context("cannot build the JWKS client")?;
        Ok(JwtVerifier {
            issuer: s.issuer.clone(),
            audience: s.audience.clone(),
            leeway: s.leeway_secs,
            algorithms,
            static_keys,
            hs256,
            jwks_url: s.jwks_url.clone(),
            jwks_ttl: Duration::from_secs(s.jwks_ttl_secs.max(1)),
            jwks_min_refresh: Duration::from_secs(s.jwks_min_refresh_secs),
            client,
            jwks: Mutex::new(JwksState::default()),
        })
    }

    /// Fetches the JWKS into `state`. Keys that cannot be used are skipped.
    async fn fetch(&self, url: &str, state: &mut JwksState) -> anyhow::Result<()> {
        state.last_attempt = Some(Instant::now());
        let set: JwkSet = self
            .client
            .get(url)
            .send()
            .await
            .context("JWKS request failed")?
            .error_for_status()
            .context("JWKS request refused")?
            .json()
            .await
            .context("JWKS is not a key set")?;
        state.keys = set
            .keys
            .iter()
            .filter_map(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                DecodingKey::from_jwk(jwk).ok().map(|k| (kid, k))
            })
            .collect();
        state.fetched_at = Some(Instant::now());
        Ok(())
    }

    /// The JWKS key `kid`: from the cache while fresh; an unknown `kid` re-fetches the set,
    /// at most once per `jwks_min_refresh`.
    async fn jwks_key(&self, kid: &str) -> anyhow::Result<DecodingKey> {
        let Some(url) = &self.jwks_url else {
            bail!("unknown kid");
        };
        let mut state = self.jwks.lock().await;
        let stale = state
            .fetched_at
            .is_none_or(|at| at.elapsed() >= self.jwks_ttl);
        let fetch = if stale {
            state
                .last_attempt
                .is_none_or(|at| at.elapsed() >= RETRY_AFTER_FAILURE)
        } else if state.keys.contains_key(kid) {
            false
        } else {
            // A key the issuer may just have rotated in: re-fetch, at a bounded rate.
            let may = state
                .last_forced
                .is_none_or(|at| at.elapsed() >= self.jwks_min_refresh);
            if may {
                state.last_forced = Some(Instant::now());
            }
            may
        };
        if fetch && let Err(e) = self.fetch(url, &mut state).await {
            tracing::warn!(error = %e, "cannot refresh the JWKS");
        }
        state.keys.get(kid).cloned().context("unknown kid")
    }

    /// Verifies a token; returns its subject and grant.
    ///
    /// # Errors
    /// Anything wrong with it, in words for the debug log.
    pub async fn verify(&self, token: &str) -> anyhow::Result<(String, Grant)> {
        let header = jsonwebtoken::decode_header(token).context("bad header")?;
        if !self.algorithms.contains(&header.alg) {
            bail!("algorithm {:?} not accepted", header.alg);
        }
        let key = if header.alg == Algorithm::HS256 {
            self.hs256.clone().context("HS256 not configured")?
        } else {
            let kid = header.kid.as_deref().context("no kid")?;
            match self.static_keys.get(kid) {
                Some((alg, key)) if *alg == header.alg => key.clone(),
                Some(_) => bail!("kid {kid:?} is not a {:?} key", header.alg),
                None => self.jwks_key(kid).await?,
            }
        };
        if key.family() != header.alg.family() {
            bail!("key family does not match {:?}", header.alg);
        }
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.leeway = self.leeway;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&self.audience);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(|e| anyhow::anyhow!("invalid: {e}"))?;
        let claims = data.claims;
        let mut names: Vec<String> = Vec::new();
        if let Some(scope) = &claims.scope {
            names.extend(scope.split_whitespace().map(str::to_owned));
        }
        match claims.scp {
            Some(ScpClaim::List(list)) => names.extend(list),
            Some(ScpClaim::Text(text)) => {
                names.extend(text.split_whitespace().map(str::to_owned));
            }
            None => {}
        }
        let grant = Grant::from_names(names.iter().map(String::as_str), claims.projects);
        Ok((claims.sub, grant))
    }
}
