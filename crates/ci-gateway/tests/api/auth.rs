//! Caller authentication (JWT, API tokens, mTLS), scopes and projects, and the audit log.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ci_gateway::config::{
    AuthSettings, CertIdentitySettings, JwtKeySettings, JwtSettings, TlsSettings,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

const ISSUER: &str = "https://idp.test/";
const AUDIENCE: &str = "ci-gateway";

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A tiny JWKS server that counts its fetches.
struct Jwks {
    url: String,
    fetches: Arc<AtomicUsize>,
}

async fn serve_jwks(jwks: Value) -> Jwks {
    let fetches = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&fetches);
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let counter = Arc::clone(&counter);
            let jwks = jwks.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                axum::Json(jwks)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Jwks { url, fetches }
}

/// The issuer's keys: an EC key published in the JWKS and an RSA key configured statically.
struct Idp {
    ec: KeyPair,
    rsa: KeyPair,
    jwks: Jwks,
}

impl Idp {
    async fn new() -> Idp {
        let ec = KeyPair::generate().unwrap();
        let rsa = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let raw = ec.public_key_raw();
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "kid": "jwks-ec", "alg": "ES256", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&raw[33..65]),
        });
        let jwks = serve_jwks(json!({ "keys": [jwk] })).await;
        Idp { ec, rsa, jwks }
    }

    fn settings(&self) -> JwtSettings {
        JwtSettings {
            issuer: ISSUER.to_owned(),
            audience: vec![AUDIENCE.to_owned()],
            jwks_url: Some(self.jwks.url.clone()),
            jwks_ttl_secs: 300,
            jwks_min_refresh_secs: 60,
            keys: vec![JwtKeySettings {
                kid: "static-rsa".to_owned(),
                algorithm: "RS256".to_owned(),
                public_key_pem: Some(self.rsa.public_key_pem()),
                public_key_file: None,
            }],
            leeway_secs: 5,
            algorithms: vec!["RS256".into(), "ES256".into(), "EdDSA".into()],
            hs256_secret_env: None,
        }
    }

    fn claims(&self) -> Value {
        json!({
            "sub": "alice", "iss": ISSUER, "aud": AUDIENCE,
            "exp": now() + 300, "nbf": now() - 10, "iat": now(),
            "scope": "jobs:read runs:read runs:trigger",
        })
    }

    fn es256(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_owned());
        let key = EncodingKey::from_ec_pem(self.ec.serialize_pem().as_bytes()).unwrap();
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }

    fn rs256(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("static-rsa".to_owned());
        let key = EncodingKey::from_rsa_pem(self.rsa.serialize_pem().as_bytes()).unwrap();
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }
}

async fn spawn_jwt_app(idp: &Idp) -> TestApp {
    let mut auth = auth_with(Vec::new());
    auth.jwt = Some(idp.settings());
    spawn_app_with(
        world(),
        Options {
            auth,
            ..Options::default()
        },
    )
    .await
}

impl TestApp {
    async fn get_with_token(&self, path: &str, token: &str) -> Reply {
        self.send(self.client.get(self.url(path)).bearer_auth(token))
            .await
    }

    async fn trigger_with_token(&self, job_id: &str, token: &str) -> Reply {
        self.send(
            self.client
                .post(self.url(&format!("/v1/jobs/{job_id}/runs")))
                .bearer_auth(token)
                .json(&json!({})),
        )
        .await
    }

    async fn cancel_with_token(&self, run_id: &str, token: Option<&str>) -> Reply {
        let request = self
            .client
            .post(self.url(&format!("/v1/runs/{run_id}/cancel")));
        match token {
            Some(t) => self.send(request.bearer_auth(t)).await,
            None => self.send_anonymous(request).await,
        }
    }

    async fn audit(&self, query: &str) -> Vec<Value> {
        let reply = self.get(&format!("/v1/audit{query}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        reply.json()["entries"].as_array().expect("entries").clone()
    }
}

fn assert_unauthorized(reply: &Reply) {
    reply.assert_error(401, "unauthorized");
    let challenge = reply
        .headers
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(challenge.starts_with("Bearer"), "{challenge:?}");
    // The same sentence whatever failed.
    assert_eq!(reply.json()["error"]["message"], "authentication required");
}

#[tokio::test]
async fn a_valid_jwt_from_the_jwks_or_a_static_key_is_accepted_with_its_scopes() {
    let idp = Idp::new().await;
    let app = spawn_jwt_app(&idp).await;

    let from_jwks = app
        .get_with_token("/v1/jobs", &idp.es256("jwks-ec", &idp.claims()))
        .await;
    let mut claims = idp.claims();
    claims["scope"] = Value::Null;
    claims["scp"] = json!(["jobs:read"]);
    let from_static = app.get_with_token("/v1/jobs", &idp.rs256(&claims)).await;
    let no_scope = app
        .get_with_token("/v1/audit", &idp.es256("jwks-ec", &idp.claims()))
        .await;

    assert_eq!(from_jwks.status, StatusCode::OK, "{}", from_jwks.body);
    assert_eq!(from_static.status, StatusCode::OK, "{}", from_static.body);
    no_scope.assert_error(403, "forbidden");
}

#[tokio::test]
async fn jwts_failing_any_check_are_refused_with_401() {
    // Arrange
    let idp = Idp::new().await;
    let app = spawn_jwt_app(&idp).await;
    let with = |key: &str, value: Value| {
        let mut c = idp.claims();
        c[key] = value;
        c
    };
    let other_ec = KeyPair::generate().unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("jwks-ec".to_owned());
    let bad_signature = jsonwebtoken::encode(
        &header,
        &idp.claims(),
        &EncodingKey::from_ec_pem(other_ec.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    let alg_none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(idp.claims().to_string())
    );
    let mut hs_header = Header::new(Algorithm::HS256);
    hs_header.kid = Some("static-rsa".to_owned());
    let hs256_with_public_key = jsonwebtoken::encode(
        &hs_header,
        &idp.claims(),
        &EncodingKey::from_secret(idp.rsa.public_key_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    let cases: Vec<(&str, String)> = vec![
        ("malformed", "not-a-jwt.at.all".to_owned()),
        ("garbage", "eyJhbGciOi".to_owned()),
        (
            "expired",
            idp.es256("jwks-ec", &with("exp", json!(now() - 120))),
        ),
        (
            "not yet valid",
            idp.es256("jwks-ec", &with("nbf", json!(now() + 120))),
        ),
        (
            "wrong issuer",
            idp.es256("jwks-ec", &with("iss", json!("https://evil.test/"))),
        ),
        (
            "wrong audience",
            idp.es256("jwks-ec", &with("aud", json!("someone-else"))),
        ),
        ("bad signature", bad_signature),
        ("alg none", alg_none),
        ("HS256 keyed with the RSA public key", hs256_with_public_key),
        ("RS256 header on the EC kid", {
            let mut h = Header::new(Algorithm::RS256);
            h.kid = Some("jwks-ec".to_owned());
            let key = EncodingKey::from_rsa_pem(idp.rsa.serialize_pem().as_bytes()).unwrap();
            jsonwebtoken::encode(&h, &idp.claims(), &key).unwrap()
        }),
    ];

    // Act + Assert
    let missing = app
        .send_anonymous(app.client.get(app.url("/v1/jobs")))
        .await;
    assert_unauthorized(&missing);
    let not_bearer = app
        .send(
            app.client
                .get(app.url("/v1/jobs"))
                .header("authorization", "Basic dXNlcjpwdw=="),
        )
        .await;
    assert_unauthorized(&not_bearer);
    for (name, token) in cases {
        let reply = app.get_with_token("/v1/jobs", &token).await;
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "{name}: {}",
            reply.body
        );
        assert_unauthorized(&reply);
    }
}

#[tokio::test]
async fn an_unknown_kid_refreshes_the_jwks_once_and_is_then_refused() {
    let idp = Idp::new().await;
    let app = spawn_jwt_app(&idp).await;
    let good = app
        .get_with_token("/v1/jobs", &idp.es256("jwks-ec", &idp.claims()))
        .await;
    assert_eq!(good.status, StatusCode::OK);
    assert_eq!(
        idp.jwks.fetches.load(Ordering::SeqCst),
        1,
        "fetched once, cached"
    );

    let unknown = app
        .get_with_token("/v1/jobs", &idp.es256("rotated-in", &idp.claims()))
        .await;
    let again = app
        .get_with_token("/v1/jobs", &idp.es256("rotated-in-2", &idp.claims()))
        .await;
    let good_again = app
        .get_with_token("/v1/jobs", &idp.es256("jwks-ec", &idp.claims()))
        .await;

    assert_unauthorized(&unknown);
    assert_unauthorized(&again);
    assert_eq!(good_again.status, StatusCode::OK);
    assert_eq!(
        idp.jwks.fetches.load(Ordering::SeqCst),
        2,
        "one refresh for the unknown kid, then rate-limited"
    );
}

const BOT_TOKEN: &str = "cigw_bot-token-canary-4kq";

#[tokio::test]
async fn a_wrong_api_token_is_401_and_a_token_without_the_scope_is_403() {
    let reader = token_settings("reader", BOT_TOKEN, &["jobs:read", "runs:read"], None);
    let app = spawn_app_with(
        world(),
        Options {
            auth: auth_with(vec![reader]),
            ..Options::default()
        },
    )
    .await;

    let wrong = app.get_with_token("/v1/jobs", "cigw_wrong-token").await;
    let two = app
        .send_anonymous(
            app.client
                .get(app.url("/v1/jobs"))
                .header("authorization", format!("Bearer {CALLER_TOKEN}"))
                .header("authorization", "Basic eA=="),
        )
        .await;
    let read = app.get_with_token("/v1/jobs", BOT_TOKEN).await;
    let trigger = app.trigger_with_token(JOB_OK, BOT_TOKEN).await;

    assert_unauthorized(&wrong);
    assert_unauthorized(&two);
    assert_eq!(read.status, StatusCode::OK);
    trigger.assert_error(403, "forbidden");
    assert!(app.sim.builds().is_empty());
}

#[tokio::test]
async fn a_token_removed_from_the_config_is_refused_after_a_restart() {
    let bot = token_settings("bot", BOT_TOKEN, &["jobs:read"], None);
    let app = spawn_app_with(
        world(),
        Options {
            auth: auth_with(vec![bot]),
            ..Options::default()
        },
    )
    .await;
    assert_eq!(
        app.get_with_token("/v1/jobs", BOT_TOKEN).await.status,
        StatusCode::OK
    );

    let (sim, db) = app.stop().await;
    let app = start_gateway(sim, db, Options::default()).await.unwrap();

    assert_unauthorized(&app.get_with_token("/v1/jobs", BOT_TOKEN).await);
}

#[tokio::test]
async fn a_caller_limited_to_another_project_cannot_trigger_or_see_its_jobs() {
    let scopes = ["jobs:read", "runs:read", "runs:trigger"];
    let other = token_settings("other-team", BOT_TOKEN, &scopes, Some(&["other"]));
    let app = spawn_app_with(
        world(),
        Options {
            auth: auth_with(vec![other]),
            ..Options::default()
        },
    )
    .await;

    let payments_run = app.trigger_ok(JOB_FAIL).await;
    let jobs = app.get_with_token("/v1/jobs", BOT_TOKEN).await;
    let trigger = app.trigger_with_token(JOB_OK, BOT_TOKEN).await;
    let listed = app.get_with_token("/v1/runs?limit=1", BOT_TOKEN).await;
    let read = app
        .get_with_token(&format!("/v1/runs/{payments_run}"), BOT_TOKEN)
        .await;
    let audit = app.get_with_token("/v1/audit", BOT_TOKEN).await;

    assert_eq!(jobs.json()["jobs"], json!([]));
    // The same answer as for a job that does not exist: nothing about other projects leaks.
    trigger.assert_error(404, "job_not_found");
    assert_eq!(listed.json(), json!({"runs": [], "next_cursor": null}));
    read.assert_error(404, "run_not_found");
    audit.assert_error(403, "forbidden");
    assert_eq!(app.sim.builds().len(), 1, "only the suite's own run");
    let rows = app.audit("").await;
    let refused: Vec<_> = rows
        .iter()
        .filter(|r| r["caller"]["subject"] == "other-team")
        .collect();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["reason"], "forbidden");
}

#[tokio::test]
async fn every_trigger_and_cancel_allowed_or_denied_leaves_exactly_one_audit_row() {
    // Arrange
    let reader = token_settings("reader", BOT_TOKEN, &["jobs:read", "runs:read"], None);
    let app = spawn_app_with(
        world(),
        Options {
            auth: auth_with(vec![reader]),
            ..Options::default()
        },
    )
    .await;

    // Act
    let run_id = app.trigger_ok(JOB_SLOW).await;
    let anonymous = app
        .send_anonymous(
            app.client
                .post(app.url(&format!("/v1/jobs/{JOB_OK}/runs")))
                .json(&json!({"parameters": {"api_token": "s3cr3t-canary"}})),
        )
        .await;
    let forbidden = app.trigger_with_token(JOB_OK, BOT_TOKEN).await;
    let unknown_job = app.trigger("job_nope", &json!({})).await;
    let replay_key = json!({"idempotency_key": "k-1"});
    let first = app.trigger(JOB_FAIL, &replay_key).await;
    let replay = app.trigger(JOB_FAIL, &replay_key).await;
    let cancel_anonymous = app.cancel_with_token(&run_id, None).await;
    let cancel_forbidden = app.cancel_with_token(&run_id, Some(BOT_TOKEN)).await;
    let cancel = app.cancel(&run_id).await;

    // Assert
    assert_unauthorized(&anonymous);
    forbidden.assert_error(403, "forbidden");
    unknown_job.assert_error(404, "job_not_found");
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(replay.status, StatusCode::OK);
    assert_unauthorized(&cancel_anonymous);
    cancel_forbidden.assert_error(403, "forbidden");
    assert_eq!(cancel.status, StatusCode::ACCEPTED, "{}", cancel.body);
    assert_eq!(app.db.count("ci_audit").await, 9, "one row per attempt");

    let rows = app.audit("").await;
    let summary: Vec<(String, String, String, String)> = rows
        .iter()
        .map(|r| {
            let s = |v: &Value| v.as_str().unwrap_or("-").to_owned();
            (
                s(&r["action"]),
                s(&r["caller"]["subject"]),
                s(&r["decision"]),
                s(if r["reason"].is_null() {
                    &r["outcome"]
                } else {
                    &r["reason"]
                }),
            )
        })
        .collect();
    let row = |a: &str, c: &str, d: &str, o: &str| {
        (a.to_owned(), c.to_owned(), d.to_owned(), o.to_owned())
    };
    assert_eq!(
        summary,
        [
            row("trigger", CALLER, "allowed", "triggered"),
            row("trigger", "anonymous", "denied", "unauthorized"),
            row("trigger", "reader", "denied", "forbidden"),
            row("trigger", CALLER, "denied", "job_not_found"),
            row("trigger", CALLER, "allowed", "triggered"),
            row("trigger", CALLER, "allowed", "replayed"),
            row("cancel", "anonymous", "denied", "unauthorized"),
            row("cancel", "reader", "denied", "forbidden"),
            row("cancel", CALLER, "allowed", "cancel_requested"),
        ]
    );
    assert_eq!(rows[0]["run_id"], run_id.as_str());
    assert_eq!(rows[0]["caller"]["auth_method"], "api_token");
    assert_eq!(rows[1]["parameters"], json!({"api_token": "[REDACTED]"}));
    assert_eq!(rows[4]["idempotency_key"], "k-1");
    assert!(
        rows.iter()
            .all(|r| r["request_id"].as_str().is_some_and(|id| id.len() == 26))
    );
    assert!(rows.iter().all(|r| {
        r["source_addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:"))
    }));
    let leaked = app
        .db
        .count("ci_audit WHERE parameters LIKE '%s3cr3t-canary%'")
        .await;
    assert_eq!(leaked, 0, "secret parameter values are redacted");
}

#[tokio::test]
async fn the_audit_log_filters_and_pages_with_a_cursor() {
    let app = spawn_app().await;
    for _ in 0..3 {
        app.trigger_ok(JOB_OK).await;
    }
    let _ = app.trigger("job_nope", &json!({})).await;

    let page1 = app.get("/v1/audit?limit=2").await.json();
    let cursor = page1["next_cursor"].as_str().unwrap().to_owned();
    let page2 = app
        .get(&format!("/v1/audit?limit=2&cursor={cursor}"))
        .await
        .json();
    let by_job = app.audit("?job_id=job_nope").await;
    let cancels = app.audit("?action=cancel").await;
    let by_caller = app.audit(&format!("?caller={CALLER}")).await;
    let future = app.audit("?since=2999-01-01T00:00:00Z").await;
    let past = app.audit("?until=2000-01-01T00:00:00Z").await;
    let bad = app.get("/v1/audit?since=yesterday").await;

    assert_eq!(page1["entries"].as_array().unwrap().len(), 2);
    assert_eq!(page2["entries"].as_array().unwrap().len(), 2);
    assert_eq!(page2["entries"][0]["seq"], 3);
    assert_eq!(by_job.len(), 1);
    assert!(cancels.is_empty());
    assert_eq!(by_caller.len(), 4);
    assert!(future.is_empty() && past.is_empty());
    bad.assert_error(400, "invalid_request");
}

#[tokio::test]
async fn with_the_audit_log_unwritable_a_trigger_is_refused_and_no_build_is_created() {
    // Arrange
    let app = spawn_app().await;
    let run_id = app.trigger_ok(JOB_SLOW).await;
    let builds_before = app.sim.builds().len();
    if app.db.is_postgres() {
        app.db
            .execute(
                "CREATE FUNCTION ci_audit_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ \
                 BEGIN RAISE EXCEPTION 'audit log unwritable'; END $$; \
                 CREATE TRIGGER ci_audit_refuse BEFORE INSERT ON ci_audit \
                 FOR EACH ROW EXECUTE FUNCTION ci_audit_refuse();",
            )
            .await;
    } else {
        app.db
            .execute(
                "CREATE TRIGGER ci_audit_refuse BEFORE INSERT ON ci_audit \
                 BEGIN SELECT RAISE(ABORT, 'audit log unwritable'); END;",
            )
            .await;
    }

    // Act
    let trigger = app.trigger(JOB_OK, &json!({})).await;
    let cancel = app.cancel(&run_id).await;

    // Assert
    trigger.assert_error(503, "store_unavailable");
    cancel.assert_error(503, "store_unavailable");
    assert_eq!(
        app.sim.builds().len(),
        builds_before,
        "no new build upstream"
    );
    assert_eq!(app.db.count("ci_run").await, 1, "no run row either");
    assert_ne!(app.run(&run_id).await["status"], "canceled");
    assert!(app.sim.builds().iter().all(|b| b.status != "aborted"));
    assert_eq!(app.db.count("ci_audit").await, 1);
}

#[tokio::test]
async fn with_the_audit_log_unwritable_from_the_start_no_build_is_ever_created() {
    let app = spawn_app().await;
    app.db.execute("DROP TABLE ci_audit").await;

    let trigger = app.trigger(JOB_OK, &json!({})).await;

    trigger.assert_error(503, "store_unavailable");
    assert!(app.sim.builds().is_empty());
}

#[tokio::test]
async fn a_tampered_audit_row_is_named_by_audit_verify() {
    // Arrange
    let app = spawn_app().await;
    for _ in 0..3 {
        app.trigger_ok(JOB_OK).await;
    }
    let verify = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_ci-gateway"))
            .args(["audit", "verify", "--database-url", &app.db.url])
            .output()
            .expect("run ci-gateway audit verify")
    };
    let intact = verify();
    assert!(
        intact.status.success(),
        "{}",
        String::from_utf8_lossy(&intact.stderr)
    );
    assert!(String::from_utf8_lossy(&intact.stdout).contains("intact: 3 row(s)"));

    // Act: someone rewrites who did it (the outcome column is not chained, the rest is).
    app.db
        .execute("UPDATE ci_audit SET caller = 'mallory' WHERE seq = 2")
        .await;
    let tampered = verify();

    // Assert
    assert!(!tampered.status.success());
    let stderr = String::from_utf8_lossy(&tampered.stderr);
    assert!(stderr.contains("broken at row 2"), "{stderr}");
}

/// mTLS material: a CA, a server certificate for localhost, a client certificate from the CA
/// and one from another CA.
struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
    good_client: String,
    foreign_client: String,
}

const CLIENT_ID: &str = "spiffe://ci.test/deployer";

fn new_ca(name: &str) -> (Issuer<'static, KeyPair>, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (Issuer::new(params, key), cert.pem())
}

fn leaf(issuer: &Issuer<'_, KeyPair>, sans: Vec<SanType>) -> (String, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = sans;
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let (ca, ca_pem) = new_ca("test CA");
    let (other, _) = new_ca("other CA");
    let (server_cert, server_key) =
        leaf(&ca, vec![SanType::DnsName("localhost".try_into().unwrap())]);
    let uri = SanType::URI(CLIENT_ID.try_into().unwrap());
    let (good_cert, good_key) = leaf(&ca, vec![uri.clone()]);
    let (bad_cert, bad_key) = leaf(&other, vec![uri]);
    std::fs::write(dir.path().join("ca.pem"), &ca_pem).unwrap();
    std::fs::write(dir.path().join("server.pem"), server_cert).unwrap();
    std::fs::write(dir.path().join("server.key"), server_key).unwrap();
    Pki {
        dir,
        ca_pem,
        good_client: format!("{good_cert}{good_key}"),
        foreign_client: format!("{bad_cert}{bad_key}"),
    }
}

fn tls_client(pki: &Pki, identity: Option<&str>) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap();
    let mut builder = reqwest::Client::builder().tls_certs_only([ca]);
    if let Some(pem) = identity {
        builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

async fn spawn_mtls_app(pki: &Pki, client: reqwest::Client) -> TestApp {
    let auth = AuthSettings {
        mtls: vec![CertIdentitySettings {
            identity: CLIENT_ID.to_owned(),
            scopes: vec!["runs:trigger".into(), "runs:read".into()],
            projects: Some(vec!["payments".into()]),
        }],
        ..auth_with(Vec::new())
    };
    let tls = TlsSettings {
        cert_file: pki.dir.path().join("server.pem"),
        key_file: pki.dir.path().join("server.key"),
        client_ca_file: Some(pki.dir.path().join("ca.pem")),
        require_client_cert: false,
    };
    spawn_app_with(
        world(),
        Options {
            auth,
            tls: Some(tls),
            client: Some(client),
            token: None,
            ..Options::default()
        },
    )
    .await
}

#[tokio::test]
async fn a_client_certificate_from_the_ca_authenticates_and_names_the_audit_row() {
    let pki = pki();
    let app = spawn_mtls_app(&pki, tls_client(&pki, Some(&pki.good_client))).await;

    let run_id = app.trigger_ok(JOB_OK).await;

    assert_eq!(app.sim.builds().len(), 1);
    let rows = app
        .send(
            app.client
                .get(app.url("/v1/audit"))
                .bearer_auth(CALLER_TOKEN),
        )
        .await
        .json();
    let row = &rows["entries"][0];
    assert_eq!(row["caller"]["subject"], CLIENT_ID);
    assert_eq!(row["caller"]["auth_method"], "mtls");
    assert_eq!(row["run_id"], run_id.as_str());
}

#[tokio::test]
async fn without_a_client_certificate_or_with_one_from_another_ca_the_caller_is_refused() {
    let pki = pki();
    let app = spawn_mtls_app(&pki, tls_client(&pki, None)).await;

    let no_cert = app.trigger(JOB_OK, &json!({})).await;
    let foreign = tls_client(&pki, Some(&pki.foreign_client))
        .post(app.url(&format!("/v1/jobs/{JOB_OK}/runs")))
        .json(&json!({}))
        .send()
        .await;
    // A bearer token still works over TLS without a client certificate.
    let with_token = app.get_with_token("/v1/jobs", CALLER_TOKEN).await;

    assert_unauthorized(&no_cert);
    assert!(foreign.is_err(), "handshake must fail: {foreign:?}");
    assert_eq!(with_token.status, StatusCode::OK);
    assert!(app.sim.builds().is_empty());
}

#[tokio::test]
async fn health_readiness_and_metrics_stay_open() {
    let app = spawn_app().await;
    for path in ["/healthz", "/readyz", "/metrics"] {
        let reply = app.send_anonymous(app.client.get(app.url(path))).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn no_log_line_carries_the_concourse_password_or_a_caller_token() {
    // Arrange: the suite's global log capture (helpers::LOGS) at debug; every `send` of every
    // test also fails on a leak as soon as one is logged.
    let idp = Idp::new().await;
    let app = spawn_jwt_app(&idp).await;
    let jwt = idp.es256("jwks-ec", &idp.claims());
    for canary in [jwt.as_str(), "cigw_wrong-canary-77", "param-canary-9"] {
        log_canary(canary);
    }

    // Act
    let run_id = app.trigger_ok(JOB_SLOW).await;
    app.cancel(&run_id).await;
    app.get_with_token("/v1/jobs", &jwt).await;
    app.get_with_token("/v1/jobs", "cigw_wrong-canary-77").await;
    app.get_with_token("/v1/jobs", &format!("{jwt}x")).await;
    let _ = app
        .trigger(
            JOB_OK,
            &json!({"parameters": {"password": "param-canary-9"}}),
        )
        .await;

    // Assert
    let logs = LOGS.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(logs.contains("authentication failed"), "logs were captured");
    for canary in [
        PASSWORD,
        CALLER_TOKEN,
        "cigw_wrong-canary-77",
        jwt.as_str(),
        "param-canary-9",
    ] {
        assert!(!logs.contains(canary), "a log line carries {canary:?}");
    }
    assert_no_log_leak();
}

#[tokio::test]
async fn concurrent_triggers_and_refusals_keep_the_audit_chain_intact() {
    let app = spawn_app().await;

    let attempts = (0..12).map(|i| {
        let app = &app;
        async move {
            if i % 3 == 0 {
                app.trigger("job_nope", &json!({})).await
            } else {
                app.trigger(JOB_OK, &json!({})).await
            }
        }
    });
    let replies = futures_util::future::join_all(attempts).await;

    assert!(replies.iter().all(|r| r.status.as_u16() < 500));
    let store = ci_gateway::store::connect(&app.db.url, 2).await.unwrap();
    let verdict = ci_gateway::audit::verify(store.as_ref()).await.unwrap();
    assert_eq!(
        verdict,
        ci_gateway::audit::Verification::Intact { rows: 12 }
    );
}
