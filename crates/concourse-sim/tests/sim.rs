//! End-to-end tests: real HTTP against a started simulator.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use concourse_sim::{Job, Pipeline, Role, Script, Simulator, Source, Team, User, World};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

const FULL_SCOPE: &str = "openid profile email federated:id groups";
/// Generous bound for things that should happen within milliseconds.
const PATIENCE: Duration = Duration::from_secs(10);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A short script with several origins, stdout and stderr, chunks that split lines, characters
/// Go escapes, and an event type no client knows.
fn quick_script() -> Script {
    Script::new()
        .start_task("b1c2d3e4")
        .log_out("Compil")
        .log_out("ing x\n<tag> & done\n")
        .log_err("warn: \u{1b}[33mcareful\u{1b}[0m\n")
        .raw("future-event", "9.9", json!({"anything": [1, 2]}))
        .sleep(ms(20))
        .log("f00dcafe", Source::Stdout, "other origin\n")
        .finish_task(0)
        .succeed()
}

/// A build that logs, then works for a minute (long enough to abort).
fn slow_script() -> Script {
    Script::new()
        .start_task("aaaa0001")
        .log_out("working")
        .sleep(Duration::from_secs(60))
        .log_out("never printed\n")
        .succeed()
}

fn test_world() -> World {
    World::new()
        .scheduler_tick(ms(10))
        .abort_delay(ms(20))
        .user(User::new("viewer", "viewer-pw").role("main", Role::Viewer))
        .user(User::new("operator", "operator-pw").role("main", Role::PipelineOperator))
        .user(User::new("outsider", "outsider-pw"))
        .client("gw", "gw-secret")
        .pipeline(
            Pipeline::new("app")
                .job(Job::new("quick", quick_script()))
                .job(Job::new("slow", slow_script()))
                .job(Job::new("held", Script::new().log_out("ran\n")).paused(true))
                .job(Job::new("manual-off", Script::new()).disable_manual_trigger(true))
                .job(Job::new("c++", Script::new())),
        )
        .pipeline(
            Pipeline::new("old")
                .archived(true)
                .job(Job::new("j", Script::new())),
        )
        .pipeline(
            Pipeline::new("branch")
                .instance_var("branch", json!("main"))
                .job(Job::new("smoke", Script::new().log_out("ok\n"))),
        )
        .pipeline(
            Pipeline::new("site")
                .public(true)
                .job(Job::new("publish", Script::new())),
        )
        .pipeline(Pipeline::new("a b").job(Job::new("j", Script::new())))
        .pipeline(Pipeline::new("a+b").job(Job::new("j", Script::new())))
        .team(
            Team::new("other").pipeline(Pipeline::new("secret").job(Job::new("j", Script::new()))),
        )
}

fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                utf8_percent_encode(k, NON_ALPHANUMERIC),
                utf8_percent_encode(v, NON_ALPHANUMERIC)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// A started simulator plus an HTTP client with one helper per endpoint.
struct Harness {
    sim: Simulator,
    http: reqwest::Client,
}

impl Harness {
    async fn start(world: World) -> Harness {
        let sim = Simulator::start(world).await.expect("simulator starts");
        Harness {
            sim,
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sim.url())
    }

    /// A token request with Basic `fly:Zmx5` and the given form fields.
    async fn token_request(&self, fields: &[(&str, &str)]) -> Response {
        self.http
            .post(self.url("/sky/issuer/token"))
            .basic_auth("fly", Some("Zmx5"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(fields))
            .send()
            .await
            .expect("token request")
    }

    async fn login_with_scope(&self, user: &str, password: &str, scope: &str) -> String {
        let response = self
            .token_request(&[
                ("grant_type", "password"),
                ("username", user),
                ("password", password),
                ("scope", scope),
            ])
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.expect("token json");
        body["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    async fn login(&self, user: &str, password: &str) -> String {
        self.login_with_scope(user, password, FULL_SCOPE).await
    }

    async fn admin(&self) -> String {
        self.login(World::ADMIN_USERNAME, World::ADMIN_PASSWORD)
            .await
    }

    async fn call(&self, method: Method, path: &str, token: Option<&str>) -> Response {
        let mut request = self.http.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("request")
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Response {
        self.call(Method::GET, path, token).await
    }

    async fn trigger(&self, pipeline_and_job: &str, token: Option<&str>) -> Response {
        let (pipeline, job) = pipeline_and_job.split_once('/').expect("p/j");
        let path = format!("/api/v1/teams/main/pipelines/{pipeline}/jobs/{job}/builds");
        self.call(Method::POST, &path, token).await
    }

    /// Triggers and returns the build id.
    async fn trigger_ok(&self, pipeline_and_job: &str, token: &str) -> i64 {
        let response = self.trigger(pipeline_and_job, Some(token)).await;
        assert_eq!(response.status(), StatusCode::OK);
        let build: Value = response.json().await.expect("build json");
        build["id"].as_i64().expect("id")
    }

    async fn abort(&self, id: &str, token: Option<&str>) -> Response {
        self.call(Method::PUT, &format!("/api/v1/builds/{id}/abort"), token)
            .await
    }

    fn events_request(&self, id: i64, token: &str) -> reqwest::RequestBuilder {
        self.http
            .get(self.url(&format!("/api/v1/builds/{id}/events")))
            .bearer_auth(token)
    }

    async fn events(&self, id: i64, token: &str) -> Response {
        self.events_request(id, token)
            .send()
            .await
            .expect("events request")
    }
}

/// Reads raw body bytes until `needle` has arrived.
async fn read_until(response: &mut Response, buffer: &mut Vec<u8>, needle: &str) {
    while !String::from_utf8_lossy(buffer).contains(needle) {
        let chunk = tokio::time::timeout(PATIENCE, response.chunk())
            .await
            .expect("stream stalled")
            .expect("stream failed")
            .expect("stream ended early");
        buffer.extend_from_slice(&chunk);
    }
}

/// Splits a raw SSE body into frames (without their terminating blank line).
fn frames(raw: &str) -> Vec<&str> {
    raw.split_terminator("\n\n").collect()
}

/// The JSON envelope of an `event: event` frame.
fn envelope(frame: &str) -> Value {
    let data = frame
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("data line");
    serde_json::from_str(data).expect("envelope json")
}

#[tokio::test]
async fn token_grant_returns_an_opaque_expiring_token() {
    let h = Harness::start(test_world()).await;

    let response = h
        .token_request(&[
            ("grant_type", "password"),
            ("username", "admin"),
            ("password", "admin-password"),
            ("scope", FULL_SCOPE),
        ])
        .await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert_eq!(response.headers()["pragma"], "no-cache");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 86400);
    assert_eq!(
        body["id_token"]
            .as_str()
            .expect("id_token")
            .split('.')
            .count(),
        3
    );
    let token = body["access_token"].as_str().expect("token");
    assert_eq!(token.len(), 38);
    let bytes = STANDARD_NO_PAD
        .decode(token)
        .expect("base64 without padding");
    assert_eq!(bytes.len(), 28);
    let exp = i64::from_le_bytes(bytes[20..28].try_into().expect("8 bytes"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    assert!((exp - now - 86400).abs() <= 5, "exp {exp} now {now}");
    assert_eq!(h.sim.logins(), 1);
}

#[tokio::test]
async fn token_grant_accepts_form_and_extra_clients() {
    let h = Harness::start(test_world()).await;
    let fields = [
        ("grant_type", "password"),
        ("username", "admin"),
        ("password", "admin-password"),
        ("scope", FULL_SCOPE),
    ];

    let mut with_form_client = fields.to_vec();
    with_form_client.extend([("client_id", "fly"), ("client_secret", "Zmx5")]);
    let form_client = h
        .http
        .post(h.url("/sky/issuer/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&with_form_client))
        .send()
        .await
        .expect("request");
    let extra_client = h
        .http
        .post(h.url("/sky/issuer/token"))
        .basic_auth("gw", Some("gw-secret"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&fields))
        .send()
        .await
        .expect("request");

    assert_eq!(form_client.status(), StatusCode::OK);
    assert_eq!(extra_client.status(), StatusCode::OK);
    assert_eq!(h.sim.logins(), 2);
}

#[tokio::test]
async fn token_grant_errors_are_oauth_json() {
    let h = Harness::start(test_world()).await;
    let good = |overrides: &[(&'static str, &'static str)]| {
        let mut fields = vec![
            ("grant_type", "password"),
            ("username", "admin"),
            ("password", "admin-password"),
            ("scope", FULL_SCOPE),
        ];
        for (k, v) in overrides {
            fields.retain(|(key, _)| key != k);
            fields.push((k, v));
        }
        fields
    };
    async fn error_of(response: Response) -> (StatusCode, Value) {
        let status = response.status();
        (status, response.json().await.expect("oauth json"))
    }

    let bad_client = h
        .http
        .post(h.url("/sky/issuer/token"))
        .basic_auth("fly", Some("wrong"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&good(&[])))
        .send()
        .await
        .expect("request");
    let (status, body) = error_of(bad_client).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_client");

    let (status, body) = error_of(h.token_request(&good(&[("password", "nope")])).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "access_denied");
    assert_eq!(body["error_description"], "Invalid username or password");

    let (status, body) = error_of(
        h.token_request(&good(&[("grant_type", "client_credentials")]))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "unsupported_grant_type");

    let (status, body) =
        error_of(h.token_request(&good(&[("scope", "profile groups")])).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_request");
    assert_eq!(
        body["error_description"],
        r#"Missing required scope(s) ["openid"]"#
    );

    let (status, body) = error_of(h.get("/sky/issuer/token", None).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_request");

    assert_eq!(h.sim.logins(), 0);
}

#[tokio::test]
async fn tokens_stop_working_after_their_ttl() {
    let h = Harness::start(test_world().token_ttl(Duration::from_secs(1))).await;
    let response = h
        .token_request(&[
            ("grant_type", "password"),
            ("username", "admin"),
            ("password", "admin-password"),
            ("scope", FULL_SCOPE),
        ])
        .await;
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["expires_in"], 1, "whole seconds, at least 1");
    let token = body["access_token"].as_str().expect("token").to_owned();
    assert_eq!(h.get("/api/v1/user", Some(&token)).await.status(), 200);

    // Nothing to await here: expiry is a deadline.
    tokio::time::sleep(ms(1100)).await;

    let user = h.get("/api/v1/user", Some(&token)).await;
    assert_eq!(user.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(user.text().await.expect("body"), "not authorized");
    let info = h.get("/api/v1/info", Some(&token)).await;
    assert_eq!(info.status(), StatusCode::UNAUTHORIZED);
    let fresh = h.admin().await;
    assert_eq!(h.get("/api/v1/user", Some(&fresh)).await.status(), 200);
}

#[tokio::test]
async fn missing_or_invalid_tokens_get_401_and_missing_roles_get_403() {
    let h = Harness::start(test_world()).await;
    let admin = h.admin().await;
    let viewer = h.login("viewer", "viewer-pw").await;
    let outsider = h.login("outsider", "outsider-pw").await;
    let no_groups = h
        .login_with_scope("admin", "admin-password", "openid profile email")
        .await;
    let job = "/api/v1/teams/main/pipelines/app/jobs/quick";

    let anonymous = h.get("/api/v1/user", None).await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(anonymous.headers()["x-concourse-version"], "8.2.5");
    assert!(
        anonymous.headers()["content-type"]
            .to_str()
            .unwrap_or("")
            .starts_with("text/plain")
    );
    assert_eq!(anonymous.text().await.expect("body"), "not authorized");
    assert_eq!(h.get("/api/v1/user", Some("garbage")).await.status(), 401);
    assert_eq!(h.get("/api/v1/info", Some("garbage")).await.status(), 401);
    assert_eq!(h.get(job, None).await.status(), 401);

    let lower_case_scheme = h
        .http
        .get(h.url("/api/v1/user"))
        .header("authorization", format!("bearer {admin}"))
        .send()
        .await
        .expect("request");
    assert_eq!(lower_case_scheme.status(), 200);

    let forbidden = h.get(job, Some(&outsider)).await;
    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
    assert_eq!(forbidden.text().await.expect("body"), "forbidden");
    assert_eq!(h.get(job, Some(&no_groups)).await.status(), 403);
    assert_eq!(h.trigger("app/quick", Some(&no_groups)).await.status(), 403);
    let user: Value = h
        .get("/api/v1/user", Some(&no_groups))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(user["teams"], json!({}));
    assert_eq!(user["is_admin"], false);

    assert_eq!(h.get(job, Some(&viewer)).await.status(), 200);
    let refused = h.trigger("app/quick", Some(&viewer)).await;
    assert_eq!(refused.status(), 403);
    assert_eq!(refused.text().await.expect("body"), "forbidden");
    let operator = h.login("operator", "operator-pw").await;
    assert_eq!(h.trigger("app/quick", Some(&operator)).await.status(), 200);
    assert_eq!(
        h.get("/api/v1/teams/other/pipelines/secret", Some(&admin))
            .await
            .status(),
        403
    );
}

#[tokio::test]
async fn info_user_pipelines_and_jobs_have_the_atc_shapes() {
    let h = Harness::start(test_world()).await;
    let admin = h.admin().await;

    let info: Value = h
        .get("/api/v1/info", None)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(info["version"], "8.2.5");
    assert_eq!(info["worker_version"], "3.0");
    assert!(info["feature_flags"].is_object());

    let user: Value = h
        .get("/api/v1/user", Some(&admin))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(user["user_name"], "admin");
    assert_eq!(user["is_admin"], true);
    assert_eq!(user["teams"], json!({"main": ["owner"]}));

    let public_only: Value = h
        .get("/api/v1/teams/main/pipelines", None)
        .await
        .json()
        .await
        .expect("json");
    let names: Vec<&str> = public_only
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["site"]);
    let all: Value = h
        .get("/api/v1/teams/main/pipelines", Some(&admin))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(all.as_array().map(Vec::len), Some(6));
    assert_eq!(all[0]["paused"], false);
    assert_eq!(all[0]["archived"], false);
    assert_eq!(all[0]["team_name"], "main");
    assert_eq!(
        h.get("/api/v1/teams/nope/pipelines", Some(&admin))
            .await
            .status(),
        404
    );

    let jobs: Value = h
        .get("/api/v1/teams/main/pipelines/app/jobs", Some(&admin))
        .await
        .json()
        .await
        .expect("json");
    for job in jobs.as_array().expect("array") {
        assert!(job.get("disable_manual_trigger").is_none(), "{job}");
    }
    let job: Value = h
        .get("/api/v1/teams/main/pipelines/app/jobs/quick", Some(&admin))
        .await
        .json()
        .await
        .expect("json");
    assert!(job.get("paused").is_none());
    assert!(job.get("disable_manual_trigger").is_none());
    assert_eq!(job["next_build"], Value::Null);
    assert_eq!(job["finished_build"], Value::Null);
    assert_eq!(job["pipeline_name"], "app");
    let held: Value = h
        .get("/api/v1/teams/main/pipelines/app/jobs/held", Some(&admin))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(held["paused"], true);
    let off: Value = h
        .get(
            "/api/v1/teams/main/pipelines/app/jobs/manual-off",
            Some(&admin),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(off["disable_manual_trigger"], true);
    assert_eq!(
        h.get("/api/v1/teams/main/pipelines/app/jobs/nope", Some(&admin))
            .await
            .status(),
        404
    );
}

#[tokio::test]
async fn a_triggered_build_runs_and_streams_events_in_the_atc_framing() {
    let h = Harness::start(test_world()).await;
    let token = h.admin().await;

    // Trigger: 200 with a pending build.
    let response = h.trigger("app/quick", Some(&token)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    let build: Value = response.json().await.expect("json");
    assert_eq!(build["status"], "pending");
    assert_eq!(build["name"], "1");
    assert_eq!(build["created_by"], "admin");
    assert_eq!(build["job_name"], "quick");
    assert!(build.get("start_time").is_none());
    let id = build["id"].as_i64().expect("id");
    assert_eq!(build["api_url"], format!("/api/v1/builds/{id}"));

    // Events: exact frames up to `end`.
    let mut events = h.events(id, &token).await;
    assert_eq!(events.status(), StatusCode::OK);
    let headers = events.headers().clone();
    assert_eq!(headers["content-type"], "text/event-stream; charset=utf-8");
    assert_eq!(
        headers["cache-control"],
        "no-cache, no-store, must-revalidate"
    );
    assert_eq!(headers["x-accel-buffering"], "no");
    assert_eq!(headers["x-atc-stream-version"], "2.0");
    assert!(headers.get("content-encoding").is_none());
    let mut raw = Vec::new();
    read_until(&mut events, &mut raw, "event: end\n").await;
    let text = String::from_utf8(raw.clone()).expect("utf-8");
    assert!(text.ends_with("id: 10\nevent: end\ndata\n\n"), "{text}");
    let frames = frames(&text);
    assert_eq!(frames.len(), 11);
    for (i, frame) in frames.iter().take(10).enumerate() {
        assert!(
            frame.starts_with(&format!("id: {i}\nevent: event\ndata: {{\"data\":")),
            "{frame}"
        );
        assert_eq!(envelope(frame)["event_id"], i.to_string());
    }
    let kinds: Vec<(String, String)> = frames[..10]
        .iter()
        .map(|f| {
            let e = envelope(f);
            (
                e["event"].as_str().unwrap_or("").to_owned(),
                e["version"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let expected = [
        ("status", "1.0"),
        ("initialize-task", "4.0"),
        ("start-task", "5.0"),
        ("log", "5.1"),
        ("log", "5.1"),
        ("log", "5.1"),
        ("future-event", "9.9"),
        ("log", "5.1"),
        ("finish-task", "4.0"),
        ("status", "1.0"),
    ];
    assert_eq!(
        kinds,
        expected.map(|(a, b)| (a.to_owned(), b.to_owned())).to_vec()
    );
    assert_eq!(envelope(frames[0])["data"]["status"], "started");
    assert!(frames[3].contains(
        r#""origin":{"id":"b1c2d3e4","source":"stdout"},"payload":"Compil"},"event":"log","version":"5.1","event_id":"3"}"#
    ));
    assert!(
        frames[4].contains(r"\u003ctag\u003e \u0026 done\n"),
        "Go-style escaping"
    );
    assert_eq!(envelope(frames[5])["data"]["origin"]["source"], "stderr");
    assert_eq!(envelope(frames[7])["data"]["origin"]["id"], "f00dcafe");
    assert!(envelope(frames[8])["data"]["time"].is_i64());
    assert_eq!(envelope(frames[9])["data"]["status"], "succeeded");

    // The same bytes parse as SSE.
    let parsed: Vec<_> = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(raw)])
        .eventsource()
        .collect()
        .await;
    let last = parsed.last().expect("events").as_ref().expect("parsed");
    assert_eq!(last.event, "end");
    assert_eq!(last.id, "10");
    assert_eq!(parsed.len(), 11);

    // After `end` the connection stays open.
    assert!(
        tokio::time::timeout(ms(200), events.chunk()).await.is_err(),
        "the stream must not close after end"
    );

    let done: Value = h
        .get(&format!("/api/v1/builds/{id}"), Some(&token))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(done["status"], "succeeded");
    assert!(done["start_time"].is_i64());
    assert!(done["end_time"].is_i64());
    assert_eq!(done["team_name"], "main");
    assert_eq!(done["pipeline_name"], "app");
    let job: Value = h
        .get("/api/v1/teams/main/pipelines/app/jobs/quick", Some(&token))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(job["finished_build"]["id"], id);
    assert_eq!(h.sim.builds()[0].status, "succeeded");
}

#[tokio::test]
async fn events_of_a_paused_job_send_no_headers_until_it_starts() {
    let h = Harness::start(test_world()).await;
    let token = h.admin().await;
    let id = h.trigger_ok("app/held", &token).await;
    let request = h.events_request(id, &token);
    let mut pending = tokio::spawn(async move { request.send().await });

    let early = tokio::time::timeout(ms(300), &mut pending).await;
    assert!(early.is_err(), "headers arrived before any event");
    assert_eq!(
        h.sim.build(id).map(|b| b.status).as_deref(),
        Some("pending")
    );
    let job: Value = h
        .get("/api/v1/teams/main/pipelines/app/jobs/held", Some(&token))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(job["next_build"]["status"], "pending");

    let unpaused = h
        .call(
            Method::PUT,
            "/api/v1/teams/main/pipelines/app/jobs/held/unpause",
            Some(&token),
        )
        .await;
    assert_eq!(unpaused.status(), 200);

    let mut events = tokio::time::timeout(PATIENCE, pending)
        .await
        .expect("events arrive after unpause")
        .expect("task")
        .expect("response");
    assert_eq!(events.status(), StatusCode::OK);
    let mut raw = Vec::new();
    read_until(&mut events, &mut raw, "event: end\n").await;
    let text = String::from_utf8(raw).expect("utf-8");
    assert!(text.starts_with("id: 0\nevent: event\ndata: {\"data\":{\"status\":\"started\""));
    assert_eq!(
        h.sim
            .wait_for_completion(id)
            .await
            .map(|b| b.status)
            .as_deref(),
        Some("succeeded")
    );
}

#[tokio::test]
async fn last_event_id_resumes_after_the_given_event() {
    let h = Harness::start(test_world()).await;
    let token = h.admin().await;
    let id = h.trigger_ok("app/quick", &token).await;
    h.sim.wait_for_completion(id).await.expect("completes");

    let mut resumed = h
        .events_request(id, &token)
        .header("last-event-id", "4")
        .send()
        .await
        .expect("request");
    let mut raw = Vec::new();
    read_until(&mut resumed, &mut raw, "event: end\n").await;
    let text = String::from_utf8(raw).expect("utf-8");
    assert!(text.starts_with("id: 5\nevent: event\n"), "{text}");
    assert_eq!(frames(&text).len(), 6);

    let bad = h
        .events_request(id, &token)
        .header("last-event-id", "four")
        .send()
        .await
        .expect("request");
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn events_are_gzipped_and_flushed_per_event_on_request() {
    let h = Harness::start(test_world()).await;
    let token = h.admin().await;
    let id = h.trigger_ok("app/slow", &token).await;

    let mut events = h
        .events_request(id, &token)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .expect("request");
    assert_eq!(events.headers()["content-encoding"], "gzip");

    use std::io::Write;
    let mut decoder = flate2::write::GzDecoder::new(Vec::new());
    let mut read_until_decoded = async |decoder: &mut flate2::write::GzDecoder<Vec<u8>>,
                                        needle: &str| {
        while !String::from_utf8_lossy(decoder.get_ref()).contains(needle) {
            let chunk = tokio::time::timeout(PATIENCE, events.chunk())
                .await
                .expect("stream stalled")
                .expect("stream failed")
                .expect("stream ended");
            decoder.write_all(&chunk).expect("gunzip");
            decoder.flush().expect("gunzip flush");
        }
    };
    // The build now sleeps for a minute: the log is only readable if the server flushed.
    read_until_decoded(&mut decoder, "\"payload\":\"working\"").await;
    assert_eq!(h.abort(&id.to_string(), Some(&token)).await.status(), 204);
    read_until_decoded(&mut decoder, "event: end\ndata\n\n").await;
    let text = String::from_utf8(decoder.get_ref().clone()).expect("utf-8");
    assert!(text.starts_with("id: 0\nevent: event\n"));
    assert!(text.contains(r#""message":"interrupted""#));
}

#[tokio::test]
async fn aborting_a_started_build_interrupts_it() {
    let h = Harness::start(test_world()).await;
    let token = h.admin().await;
    let id = h.trigger_ok("app/slow", &token).await;
    let mut stream = h.events(id, &token).await.bytes_stream().eventsource();
    loop {
        let event = tokio::time::timeout(PATIENCE, stream.next())
            .await
            .expect("stalled")
            .expect("ended")
            .expect("parse");
        if event.data.contains("\"payload\":\"working\"") {
            break;
        }
    }

    let aborted = h.abort(&id.to_string(), Some(&token)).await;
    assert_eq!(aborted.status(), StatusCode::NO_CONTENT);
    assert_eq!(aborted.text().await.expect("body"), "");

    let mut rest = Vec::new();
    while let Some(event) = tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("stalled")
    {
        let event = event.expect("parse");
        let end = event.event == "end";
        rest.push(event);
        if end {
            break;
        }
    }
    assert_eq!(rest.len(), 3, "{rest:?}");
    let error: Value = serde_json::from_str(&rest[0].data).expect("json");
    assert_eq!(error["event"], "error");
    assert_eq!(error["version"], "4.1");
    assert_eq!(error["data"]["message"], "interrupted");
    assert_eq!(error["data"]["origin"]["id"], "aaaa0001");
    let status: Value = serde_json::from_str(&rest[1].data).expect("json");
    assert_eq!(status["data"]["status"], "aborted");
    assert_eq!(rest[2].event, "end");
    assert_eq!(rest[2].data, "");

    let info = h.sim.build(id).expect("build");
    assert_eq!(info.status, "aborted");
    assert!(info.aborted);
    // Aborting a finished build still answers 204.
    assert_eq!(h.abort(&id.to_string(), Some(&token)).await.status(), 204);
}

#[tokio::test]
async fn aborting_a_pending_build_finishes_it_on_the_next_tick() {
    let h = Harness::start(test_world()).await;
    let token = h.admin().await;
    let id = h.trigger_ok("app/held", &token).await;

    assert_eq!(h.abort(&id.to_string(), Some(&token)).await.status(), 204);

    let mut events = h.events(id, &token).await;
    let mut raw = Vec::new();
    read_until(&mut events, &mut raw, "event: end\n").await;
    let text = String::from_utf8(raw).expect("utf-8");
    let frames = frames(&text);
    assert_eq!(frames.len(), 2, "{text}");
    assert_eq!(envelope(frames[0])["data"]["status"], "aborted");
    assert_eq!(frames[1], "id: 1\nevent: end\ndata");
    let build: Value = h
        .get(&format!("/api/v1/builds/{id}"), Some(&token))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(build["status"], "aborted");
    assert!(build.get("start_time").is_none());
    assert!(build["end_time"].is_i64());
}

#[tokio::test]
async fn abort_refusals() {
    let h = Harness::start(test_world()).await;
    let token = h.admin().await;
    let viewer = h.login("viewer", "viewer-pw").await;
    let id = h.trigger_ok("app/held", &token).await.to_string();

    assert_eq!(h.abort("abc", Some(&token)).await.status(), 400);
    assert_eq!(h.abort("987654321", Some(&token)).await.status(), 404);
    assert_eq!(h.abort(&id, None).await.status(), 401);
    let forbidden = h.abort(&id, Some(&viewer)).await;
    assert_eq!(forbidden.status(), 403);
    assert_eq!(forbidden.text().await.expect("body"), "forbidden");
    assert_eq!(
        h.get(&format!("/api/v1/builds/{id}"), Some(&viewer))
            .await
            .status(),
        200
    );
    assert_eq!(
        h.get(&format!("/api/v1/builds/{id}/events"), None)
            .await
            .status(),
        401
    );
    assert_eq!(
        h.get("/api/v1/builds/abc", Some(&token)).await.status(),
        400
    );
    let unknown = h.get("/api/v1/builds/987654321", Some(&token)).await;
    assert_eq!(unknown.status(), 404);
    assert_eq!(unknown.text().await.expect("body"), "");
}

#[tokio::test]
async fn trigger_refusals_match_the_atc() {
    let h = Harness::start(test_world()).await;
    let token = h.admin().await;

    let disabled = h.trigger("app/manual-off", Some(&token)).await;
    assert_eq!(disabled.status(), StatusCode::CONFLICT);
    assert_eq!(disabled.headers()["content-type"], "application/json");
    assert_eq!(disabled.text().await.expect("body"), "");

    // Archived and unknown pipelines are refused before authentication.
    let archived = h.trigger("old/j", None).await;
    assert_eq!(archived.status(), StatusCode::CONFLICT);
    assert_eq!(
        archived.text().await.expect("body"),
        "action not allowed for an archived pipeline\n"
    );
    let unknown = h.trigger("nope/j", None).await;
    assert_eq!(unknown.status(), 404);
    assert_eq!(unknown.text().await.expect("body"), "");
    let unknown_team = h
        .call(
            Method::POST,
            "/api/v1/teams/nope/pipelines/app/jobs/quick/builds",
            None,
        )
        .await;
    assert_eq!(unknown_team.status(), 404);
    // The job is looked up after authentication.
    assert_eq!(h.trigger("app/nope", None).await.status(), 401);
    assert_eq!(h.trigger("app/nope", Some(&token)).await.status(), 404);
    assert_eq!(h.trigger("app/quick", Some("garbage")).await.status(), 401);

    assert_eq!(h.sim.trigger_requests(), 7);
    assert!(h.sim.builds().is_empty());
}

#[tokio::test]
async fn pipeline_instances_are_selected_with_json_vars() {
    let h = Harness::start(test_world()).await;
    let token = h.admin().await;
    let base = "/api/v1/teams/main/pipelines/branch";

    let found = h
        .get(&format!("{base}?vars.branch=%22main%22"), Some(&token))
        .await;
    assert_eq!(found.status(), 200);
    let pipeline: Value = found.json().await.expect("json");
    assert_eq!(pipeline["instance_vars"], json!({"branch": "main"}));
    let whole = h
        .get(
            &format!("{base}?vars=%7B%22branch%22%3A%22main%22%7D"),
            Some(&token),
        )
        .await;
    assert_eq!(whole.status(), 200);
    assert_eq!(h.get(base, Some(&token)).await.status(), 404);
    assert_eq!(
        h.get(&format!("{base}?vars.branch=%22dev%22"), Some(&token))
            .await
            .status(),
        404
    );
    let unquoted = h
        .get(&format!("{base}?vars.branch=main"), Some(&token))
        .await;
    assert_eq!(unquoted.status(), 400);
    assert_eq!(unquoted.text().await.expect("body"), "");

    let triggered = h
        .call(
            Method::POST,
            &format!("{base}/jobs/smoke/builds?vars.branch=%22main%22"),
            Some(&token),
        )
        .await;
    assert_eq!(triggered.status(), 200);
    let build: Value = triggered.json().await.expect("json");
    assert_eq!(build["pipeline_instance_vars"], json!({"branch": "main"}));

    let paused = h
        .call(
            Method::PUT,
            &format!("{base}/pause?vars.branch=%22main%22"),
            Some(&token),
        )
        .await;
    assert_eq!(paused.status(), 200);
    let pipeline: Value = h
        .get(&format!("{base}?vars.branch=%22main%22"), Some(&token))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(pipeline["paused"], true);
    h.sim.set_job_paused("main", "branch", "smoke", true);
    let job: Value = h
        .get(
            &format!("{base}/jobs/smoke?vars.branch=%22main%22"),
            Some(&token),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(job["paused"], true);
    let archived_pause = h
        .call(
            Method::PUT,
            "/api/v1/teams/main/pipelines/old/unpause",
            None,
        )
        .await;
    assert_eq!(archived_pause.status(), 409);
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_like_concourses_router() {
    let h = Harness::start(test_world()).await;
    let token = h.admin().await;

    let legacy = h.get("/api/v1/teams/main/auth/token", Some(&token)).await;
    assert_eq!(legacy.status(), 404);
    assert!(legacy.headers().get("x-concourse-version").is_none());
    assert_eq!(legacy.text().await.expect("body"), "404 page not found\n");
    assert_eq!(h.call(Method::POST, "/sky/token", None).await.status(), 404);

    let wrong_method = h
        .call(Method::DELETE, "/api/v1/builds/1", Some(&token))
        .await;
    assert_eq!(wrong_method.status(), 405);
    assert!(wrong_method.headers().get("x-concourse-version").is_none());
    let allow = wrong_method.headers()["allow"]
        .to_str()
        .unwrap_or("")
        .to_owned();
    assert!(allow.contains("GET"), "{allow}");
    assert_eq!(
        wrong_method.text().await.expect("body"),
        "Method Not Allowed\n"
    );
    let wrong_abort = h.get("/api/v1/builds/1/abort", Some(&token)).await;
    assert_eq!(wrong_abort.status(), 405);
    assert!(
        wrong_abort.headers()["allow"]
            .to_str()
            .unwrap_or("")
            .contains("PUT")
    );

    let info = h.get("/api/v1/info", None).await;
    assert_eq!(info.headers()["x-concourse-version"], "8.2.5");
}

#[tokio::test]
async fn a_plus_in_a_path_is_a_space_and_percent_2b_is_a_plus() {
    let h = Harness::start(test_world()).await;
    let token = h.admin().await;

    let spaced: Value = h
        .get("/api/v1/teams/main/pipelines/a+b", Some(&token))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(spaced["name"], "a b");
    let plus: Value = h
        .get("/api/v1/teams/main/pipelines/a%2Bb", Some(&token))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(plus["name"], "a+b");

    assert_eq!(h.trigger("app/c++", Some(&token)).await.status(), 404);
    let encoded = h.trigger("app/c%2B%2B", Some(&token)).await;
    assert_eq!(encoded.status(), 200);
    let build: Value = encoded.json().await.expect("json");
    assert_eq!(build["job_name"], "c++");
}

#[tokio::test]
async fn build_ids_above_i32_max_work_everywhere() {
    let first = i64::from(i32::MAX) + 100;
    let h = Harness::start(test_world().first_build_id(first)).await;
    let token = h.admin().await;

    let id = h.trigger_ok("app/quick", &token).await;
    let second = h.trigger_ok("app/quick", &token).await;

    assert_eq!(id, first);
    assert_eq!(second, first + 1);
    let build: Value = h
        .get(&format!("/api/v1/builds/{second}"), Some(&token))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(build["id"], second);
    assert_eq!(build["name"], "2");
    let mut events = h.events(second, &token).await;
    let mut raw = Vec::new();
    read_until(&mut events, &mut raw, "event: end\n").await;
    assert_eq!(h.sim.builds().len(), 2);
    assert_eq!(h.sim.builds()[1].id, second);
}

#[tokio::test]
async fn the_example_world_builds_succeed_and_fail_realistically() {
    let h = Harness::start(World::example()).await;
    let token = h
        .login(World::EXAMPLE_USERNAME, World::EXAMPLE_PASSWORD)
        .await;

    let build_test = h.trigger_ok("payments/build-test", &token).await;
    let deploy = h.trigger_ok("payments/deploy", &token).await;
    assert_eq!(
        h.trigger("payments/release", Some(&token)).await.status(),
        409
    );
    assert_eq!(
        h.trigger("legacy-monolith/build", Some(&token))
            .await
            .status(),
        409
    );

    let (built, deployed) = tokio::join!(
        h.sim.wait_for_completion(build_test),
        h.sim.wait_for_completion(deploy)
    );
    assert_eq!(built.map(|b| b.status).as_deref(), Some("succeeded"));
    assert_eq!(deployed.map(|b| b.status).as_deref(), Some("failed"));
    let mut events = h.events(build_test, &token).await;
    let mut raw = Vec::new();
    read_until(&mut events, &mut raw, "event: end\n").await;
    let text = String::from_utf8(raw).expect("utf-8");
    assert!(text.contains("test result:"));
    assert!(text.contains("\"source\":\"stderr\""));
    h.sim.shutdown().await;
}
