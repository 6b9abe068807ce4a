//! Adapter tests against a wiremock ATC. End-to-end runs against the simulator live elsewhere.

use std::time::Duration;

use futures_util::StreamExt;
use secrecy::SecretString;
use serde_json::{Value, json};
use time::OffsetDateTime;
use wiremock::matchers::{body_string, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::*;
use crate::domain::{LogStream, RunStatus};
use crate::provider::{EventBatch, ProviderEvent};

const PASSWORD: &str = "p@ss w+rd&=";
const TOKEN: &str = "tok-1";

fn settings(url: &str) -> ConcourseSettings {
    ConcourseSettings {
        url: url.to_owned(),
        team: "main".to_owned(),
        username: "gw".to_owned(),
        password: SecretString::from(PASSWORD),
        client_id: DEFAULT_CLIENT_ID.to_owned(),
        client_secret: SecretString::from(DEFAULT_CLIENT_SECRET),
        request_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
    }
}

fn provider(server: &MockServer) -> ConcourseProvider {
    ConcourseProvider::new(settings(&server.uri())).expect("valid settings")
}

fn token_answer(token: &str, expires_in: u64) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "access_token": token,
        "token_type": "bearer",
        "expires_in": expires_in,
        "id_token": "eyJ.not.used",
    }))
}

/// A token endpoint handing out `TOKEN` for a day, expected `times` times.
async fn mount_token(server: &MockServer, times: u64) {
    Mock::given(method("POST"))
        .and(path("/sky/issuer/token"))
        .respond_with(token_answer(TOKEN, 86_399))
        .expect(times)
        .named("token endpoint")
        .mount(server)
        .await;
}

fn build(id: i64, name: &str, status: &str) -> Value {
    json!({
        "id": id,
        "team_name": "main",
        "name": name,
        "status": status,
        "api_url": format!("/api/v1/builds/{id}"),
        "job_name": "unit",
        "pipeline_name": "app",
    })
}

fn job_ref(pipeline: &str, job: &str) -> Value {
    json!({"team": "main", "pipeline": pipeline, "job": job})
}

fn run_ref(id: i64) -> Value {
    json!({"build_id": id, "build_name": "1", "team": "main"})
}

fn trigger_path(pipeline: &str, job: &str) -> String {
    format!("/api/v1/teams/main/pipelines/{pipeline}/jobs/{job}/builds")
}

// ---------------------------------------------------------------- settings, refs

#[test]
fn settings_debug_hides_the_secrets() {
    let mut s = settings("http://user:urlpass@ci.example:8080/");
    s.client_secret = SecretString::from("client-secret-value");
    let text = format!("{s:?}");
    assert!(!text.contains(PASSWORD), "{text}");
    assert!(!text.contains("client-secret-value"), "{text}");
    assert!(!text.contains("urlpass"), "{text}");
    assert!(text.contains("REDACTED"), "{text}");
}

#[test]
fn new_rejects_unusable_urls() {
    for url in ["ftp://ci", "not a url", "http://ci/?x=1", "http://u:p@ci/"] {
        let err = ConcourseProvider::new(settings(url)).unwrap_err();
        assert!(
            matches!(err, ProviderError::InvalidRef(_)),
            "{url}: {err:?}"
        );
        assert!(!err.to_string().contains(":p@"), "{err}");
    }
}

#[test]
fn job_ref_validates_the_binding_and_adds_the_team() {
    let p = ConcourseProvider::new(settings("http://ci:8080/")).unwrap();
    let stored = p
        .job_ref(&json!({"pipeline": "app", "job": "unit", "instance_vars": {"branch": "main"}}))
        .unwrap();
    assert_eq!(
        stored,
        json!({"team": "main", "pipeline": "app", "job": "unit", "instance_vars": {"branch": "main"}})
    );
    let plain = p
        .job_ref(&json!({"pipeline": "app", "job": "unit"}))
        .unwrap();
    assert_eq!(plain, job_ref("app", "unit"));
    let empty_vars = p
        .job_ref(&json!({"pipeline": "app", "job": "unit", "instance_vars": {}}))
        .unwrap();
    assert_eq!(empty_vars, job_ref("app", "unit"));

    for bad in [
        json!({"pipeline": "app"}),
        json!({"pipeline": "", "job": "unit"}),
        json!({"pipeline": "app", "job": ".."}),
        json!({"pipeline": "app", "job": 3}),
        json!({"pipeline": "app", "job": "unit", "instance_vars": "branch=main"}),
        json!({"pipeline": "app", "job": "unit", "team": "other"}),
        json!(["app", "unit"]),
    ] {
        let err = p.job_ref(&bad).unwrap_err();
        assert!(
            matches!(err, ProviderError::InvalidRef(_)),
            "{bad}: {err:?}"
        );
    }
    assert_eq!(p.kind(), "concourse");
}

// ---------------------------------------------------------------- auth

#[tokio::test]
async fn login_posts_the_password_grant_with_basic_client_auth_and_the_fly_scope() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/sky/issuer/token"))
        .and(header("authorization", "Basic Zmx5OlpteDU="))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .and(body_string(
            "grant_type=password&username=gw&password=p%40ss+w%2Brd%26%3D\
             &scope=openid+profile+email+federated%3Aid+groups",
        ))
        .respond_with(token_answer(TOKEN, 86_399))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v1/builds/7"))
        .and(header("authorization", "Bearer tok-1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(build(7, "1", "started")))
        .expect(1)
        .mount(&server)
        .await;

    let run = provider(&server).get_run(&run_ref(7)).await.unwrap();

    assert_eq!(run.status, RunStatus::Running);
    let requests = server.received_requests().await.unwrap();
    assert!(
        requests.iter().all(|r| r.headers.get("cookie").is_none()),
        "no cookies are sent"
    );
}

#[tokio::test]
async fn the_token_is_cached_across_calls() {
    let server = MockServer::start().await;
    mount_token(&server, 1).await;
    Mock::given(method("GET"))
        .and(path("/api/v1/builds/7"))
        .and(header("authorization", "Bearer tok-1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(build(7, "1", "pending")))
        .expect(3)
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path("/api/v1/builds/7/abort"))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let p = provider(&server);

    for _ in 0..3 {
        p.get_run(&run_ref(7)).await.unwrap();
    }
    p.cancel(&run_ref(7)).await.unwrap();
}

#[tokio::test]
async fn concurrent_callers_share_one_login() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/sky/issuer/token"))
        .respond_with(token_answer(TOKEN, 86_399).set_delay(Duration::from_millis(200)))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v1/builds/7"))
        .respond_with(ResponseTemplate::new(200).set_body_json(build(7, "1", "pending")))
        .expect(6)
        .mount(&server)
        .await;
    let p = provider(&server);

    let reference = run_ref(7);
    let calls = (0..6).map(|_| p.get_run(&reference));
    let results = futures_util::future::join_all(calls).await;

    assert!(results.iter().all(Result::is_ok), "{results:?}");
}

#[tokio::test]
async fn a_short_lived_token_is_renewed_before_it_expires() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/sky/issuer/token"))
        .respond_with(token_answer(TOKEN, 2))
        .expect(2)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v1/builds/7"))
        .respond_with(ResponseTemplate::new(200).set_body_json(build(7, "1", "pending")))
        .expect(3)
        .mount(&server)
        .await;
    let p = provider(&server);

    p.get_run(&run_ref(7)).await.unwrap();
    p.get_run(&run_ref(7)).await.unwrap(); // still fresh: cached
    // 1.6 s in, the 2 s token has not expired yet, but is too close to expiry to start a call.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    p.get_run(&run_ref(7)).await.unwrap();
}

/// Two token mocks: the first login gets `tok-old`, later ones `tok-new`.
async fn mount_rotating_tokens(server: &MockServer) {
    Mock::given(method("POST"))
        .and(path("/sky/issuer/token"))
        .respond_with(token_answer("tok-old", 86_399))
        .up_to_n_times(1)
        .with_priority(1)
        .expect(1)
        .mount(server)
        .await;
    Mock::given(method("POST"))
        .and(path("/sky/issuer/token"))
        .respond_with(token_answer("tok-new", 86_399))
        .with_priority(2)
        .expect(1)
        .mount(server)
        .await;
}

#[tokio::test]
async fn a_401_on_a_get_logs_in_again_and_retries_once() {
    let server = MockServer::start().await;
    mount_rotating_tokens(&server).await;
    Mock::given(method("GET"))
        .and(path("/api/v1/builds/7"))
        .and(header("authorization", "Bearer tok-old"))
        .respond_with(ResponseTemplate::new(401).set_body_string("not authorized"))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v1/builds/7"))
        .and(header("authorization", "Bearer tok-new"))
        .respond_with(ResponseTemplate::new(200).set_body_json(build(7, "1", "succeeded")))
        .expect(1)
        .mount(&server)
        .await;

    let run = provider(&server).get_run(&run_ref(7)).await.unwrap();

    assert_eq!(run.status, RunStatus::Succeeded);
}

#[tokio::test]
async fn a_second_401_is_unavailable_after_exactly_one_retry() {
    let server = MockServer::start().await;
    mount_token(&server, 2).await;
    Mock::given(method("PUT"))
        .and(path("/api/v1/builds/7/abort"))
        .respond_with(ResponseTemplate::new(401).set_body_string("not authorized"))
        .expect(2)
        .mount(&server)
        .await;

    let err = provider(&server).cancel(&run_ref(7)).await.unwrap_err();

    assert!(matches!(err, ProviderError::Unavailable(_)), "{err:?}");
}

#[tokio::test]
async fn a_401_on_trigger_is_not_replayed_and_drops_the_token() {
    let server = MockServer::start().await;
    mount_rotating_tokens(&server).await;
    Mock::given(method("POST"))
        .and(path(trigger_path("app", "unit")))
        .respond_with(ResponseTemplate::new(401).set_body_string("not authorized"))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v1/builds/7"))
        .and(header("authorization", "Bearer tok-new"))
        .respond_with(ResponseTemplate::new(200).set_body_json(build(7, "1", "pending")))
        .expect(1)
        .mount(&server)
        .await;
    let p = provider(&server);

    let err = p.trigger(&job_ref("app", "unit")).await.unwrap_err();
    assert!(matches!(err, ProviderError::Unavailable(_)), "{err:?}");
    // The next call logs in again instead of reusing the rejected token.
    p.get_run(&run_ref(7)).await.unwrap();
}

#[tokio::test]
async fn refused_credentials_are_unavailable_without_the_password_in_the_message() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/sky/issuer/token"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({
            "error": "access_denied",
            "error_description": format!("Invalid username or password {PASSWORD}"),
        })))
        .expect(1)
        .mount(&server)
        .await;

    let err = provider(&server).check().await.unwrap_err();

    let text = err.to_string();
    assert!(matches!(err, ProviderError::Unavailable(_)), "{err:?}");
    assert!(text.contains("wrong username or password"), "{text}");
    assert!(!text.contains(PASSWORD), "{text}");
}

// ---------------------------------------------------------------- check

async fn check_with_teams(teams: Value) -> Result<(), ProviderError> {
    let server = MockServer::start().await;
    mount_token(&server, 1).await;
    Mock::given(method("GET"))
        .and(path("/api/v1/user"))
        .and(header("authorization", "Bearer tok-1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "sub": "Cg...", "name": "gw", "user_id": "gw", "user_name": "gw",
            "email": "", "is_admin": false, "is_system": false,
            "teams": teams, "display_user_id": "gw",
        })))
        .expect(1)
        .mount(&server)
        .await;
    provider(&server).check().await
}

#[tokio::test]
async fn check_accepts_a_role_that_can_trigger() {
    check_with_teams(json!({"main": ["member"], "other": ["viewer"]}))
        .await
        .unwrap();
    check_with_teams(json!({"main": ["pipeline-operator"]}))
        .await
        .unwrap();
}

#[tokio::test]
async fn check_rejects_a_user_without_a_role_on_the_team() {
    let err = check_with_teams(json!({"other": ["owner"]}))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("user \"gw\" has no role on team \"main\""),
        "{text}"
    );
    let err = check_with_teams(Value::Null).await.unwrap_err();
    assert!(err.to_string().contains("no role"), "{err}");
}

#[tokio::test]
async fn check_rejects_a_viewer() {
    let err = check_with_teams(json!({"main": ["viewer"]}))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ProviderError::Unavailable(_)), "{err:?}");
    assert!(text.contains("only the viewer role"), "{text}");
}

// ---------------------------------------------------------------- trigger, get_run, cancel

#[tokio::test]
async fn trigger_returns_a_run_ref_with_an_i64_id_and_a_string_name() {
    let server = MockServer::start().await;
    mount_token(&server, 1).await;
    let id = i64::from(i32::MAX) + 10;
    Mock::given(method("POST"))
        .and(path(trigger_path("app", "unit")))
        .and(header("authorization", "Bearer tok-1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(build(id, "42.1", "pending")))
        .expect(1)
        .mount(&server)
        .await;

    let run = provider(&server)
        .trigger(&job_ref("app", "unit"))
        .await
        .unwrap();

    assert_eq!(
        run.run_ref,
        json!({"build_id": id, "build_name": "42.1", "team": "main"})
    );
    assert_eq!(run.status, RunStatus::Queued);
    assert_eq!((run.started_at, run.finished_at), (None, None));
}

#[tokio::test]
async fn trigger_maps_upstream_failures() {
    let server = MockServer::start().await;
    mount_token(&server, 1).await;
    let answers = [
        ("missing", ResponseTemplate::new(404)),
        (
            "manual-off",
            ResponseTemplate::new(409).set_body_raw("", "application/json"),
        ),
        (
            "archived",
            ResponseTemplate::new(409)
                .set_body_string("action not allowed for an archived pipeline"),
        ),
        (
            "forbidden",
            ResponseTemplate::new(403).set_body_string("forbidden"),
        ),
        ("broken", ResponseTemplate::new(500)),
        ("busy", ResponseTemplate::new(503)),
        (
            "garbled",
            ResponseTemplate::new(200).set_body_string("{not json"),
        ),
        (
            "wrong-shape",
            ResponseTemplate::new(200).set_body_json(json!({"id": "x"})),
        ),
    ];
    for (job, answer) in answers {
        Mock::given(method("POST"))
            .and(path(trigger_path("app", job)))
            .respond_with(answer)
            .expect(1)
            .mount(&server)
            .await;
    }
    let p = provider(&server);
    let trigger = |job: &'static str| {
        let p = &p;
        async move { p.trigger(&job_ref("app", job)).await.unwrap_err() }
    };

    assert!(matches!(
        trigger("missing").await,
        ProviderError::NotFound(_)
    ));
    let manual = trigger("manual-off").await;
    assert!(
        matches!(&manual, ProviderError::Refused(m) if m.contains("manual triggering is disabled")),
        "{manual:?}"
    );
    let archived = trigger("archived").await;
    assert!(
        matches!(&archived, ProviderError::Refused(m) if m.contains("archived")),
        "{archived:?}"
    );
    let forbidden = trigger("forbidden").await;
    assert!(
        matches!(&forbidden, ProviderError::Unavailable(m) if m.contains("role")),
        "{forbidden:?}"
    );
    assert!(matches!(
        trigger("broken").await,
        ProviderError::Unavailable(_)
    ));
    assert!(matches!(
        trigger("busy").await,
        ProviderError::Unavailable(_)
    ));
    assert!(matches!(
        trigger("garbled").await,
        ProviderError::BadResponse(_)
    ));
    assert!(matches!(
        trigger("wrong-shape").await,
        ProviderError::BadResponse(_)
    ));
}

#[tokio::test]
async fn a_slow_answer_is_a_timeout() {
    let server = MockServer::start().await;
    mount_token(&server, 1).await;
    Mock::given(method("GET"))
        .and(path("/api/v1/builds/7"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(build(7, "1", "started"))
                .set_delay(Duration::from_secs(3)),
        )
        .mount(&server)
        .await;
    let mut s = settings(&server.uri());
    s.request_timeout = Duration::from_millis(300);
    let p = ConcourseProvider::new(s).unwrap();

    let err = p.get_run(&run_ref(7)).await.unwrap_err();

    assert!(matches!(err, ProviderError::Timeout(_)), "{err:?}");
}

#[tokio::test]
async fn an_unreachable_atc_is_unavailable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let p = ConcourseProvider::new(settings(&url)).unwrap();

    let err = p.trigger(&job_ref("app", "unit")).await.unwrap_err();

    assert!(matches!(err, ProviderError::Unavailable(_)), "{err:?}");
    assert!(!err.to_string().contains(PASSWORD));
}

#[tokio::test]
async fn path_segments_and_instance_vars_are_percent_encoded() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/ci/sky/issuer/token"))
        .respond_with(token_answer(TOKEN, 86_399))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(
            "/ci/api/v1/teams/main/pipelines/a%20b%2Bc%25d%2F%C3%A9/jobs/unit%20%26%20it%3F%23/builds",
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(build(9, "3", "pending")))
        .expect(1)
        .mount(&server)
        .await;
    let p = ConcourseProvider::new(settings(&format!("{}/ci/", server.uri()))).unwrap();
    let stored = p
        .job_ref(&json!({
            "pipeline": "a b+c%d/é",
            "job": "unit & it?#",
            "instance_vars": {"branch": "main", "n": 2},
        }))
        .unwrap();

    p.trigger(&stored).await.unwrap();

    let requests = server.received_requests().await.unwrap();
    let trigger = requests
        .iter()
        .find(|r| r.method.as_str() == "POST" && r.url.path().starts_with("/ci/api"))
        .expect("trigger request");
    assert_eq!(trigger.url.query(), Some("vars.branch=%22main%22&vars.n=2"));
}

#[tokio::test]
async fn get_run_maps_states_and_omits_zero_times() {
    let server = MockServer::start().await;
    mount_token(&server, 1).await;
    let cases = [
        (1, "pending", RunStatus::Queued),
        (2, "started", RunStatus::Running),
        (3, "succeeded", RunStatus::Succeeded),
        (4, "failed", RunStatus::Failed),
        (5, "errored", RunStatus::Errored),
        (6, "aborted", RunStatus::Canceled),
        (7, "paused-by-aliens", RunStatus::Unknown),
    ];
    for (id, status, _) in cases {
        let mut body = build(id, "1", status);
        body["start_time"] = json!(1_786_037_157);
        body["end_time"] = json!(0);
        Mock::given(method("GET"))
            .and(path(format!("/api/v1/builds/{id}")))
            .respond_with(ResponseTemplate::new(200).set_body_json(body))
            .mount(&server)
            .await;
    }
    Mock::given(method("GET"))
        .and(path("/api/v1/builds/404"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&server)
        .await;
    let p = provider(&server);

    for (id, _, expected) in cases {
        let run = p.get_run(&run_ref(id)).await.unwrap();
        assert_eq!(run.status, expected, "build {id}");
        assert_eq!(
            run.started_at,
            Some(OffsetDateTime::from_unix_timestamp(1_786_037_157).unwrap())
        );
        assert_eq!(run.finished_at, None);
    }
    let err = p.get_run(&run_ref(404)).await.unwrap_err();
    assert!(matches!(err, ProviderError::NotFound(_)), "{err:?}");
    let err = p.get_run(&json!({"build_id": "7"})).await.unwrap_err();
    assert!(matches!(err, ProviderError::InvalidRef(_)), "{err:?}");
}

#[tokio::test]
async fn cancel_puts_abort_and_maps_404() {
    let server = MockServer::start().await;
    mount_token(&server, 1).await;
    Mock::given(method("PUT"))
        .and(path("/api/v1/builds/7/abort"))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path("/api/v1/builds/8/abort"))
        .respond_with(ResponseTemplate::new(404))
        .expect(1)
        .mount(&server)
        .await;
    let p = provider(&server);

    p.cancel(&run_ref(7)).await.unwrap();
    let err = p.cancel(&run_ref(8)).await.unwrap_err();
    assert!(matches!(err, ProviderError::NotFound(_)), "{err:?}");
}

// ---------------------------------------------------------------- event stream

fn frame(id: i64, kind: &str, version: &str, data: Value) -> String {
    let envelope =
        json!({"data": data, "event": kind, "version": version, "event_id": id.to_string()});
    format!("id: {id}\nevent: event\ndata: {envelope}\n\n")
}

fn end_frame(id: i64) -> String {
    format!("id: {id}\nevent: end\ndata\n\n")
}

fn log(origin: &str, source: &str, payload: &str) -> Value {
    json!({"time": 1_786_037_158, "origin": {"id": origin, "source": source}, "payload": payload})
}

/// The frames of one build, in Concourse's framing (without `end`).
fn build_frames() -> Vec<String> {
    vec![
        frame(
            0,
            "status",
            "1.0",
            json!({"status": "started", "time": 1_786_037_157}),
        ),
        frame(1, "log", "5.1", log("a", "stdout", "hel")),
        frame(2, "log", "5.1", log("a", "stderr", "warn: \u{1b}[31mred")),
        frame(3, "log", "5.1", log("a", "stdout", "lo\r\nwor")),
        frame(4, "log", "5.1", log("b", "stdout", "é ünï 🚀\n")),
        frame(
            5,
            "initialize-task",
            "4.0",
            json!({"time": 1, "origin": {"id": "a"}, "config": {"platform": "linux"}}),
        ),
        frame(6, "log", "9.0", log("a", "stdout", "from the future\n")),
        frame(7, "log", "5.1", log("a", "stderr", "\u{1b}[0m done\n")),
        frame(
            8,
            "error",
            "4.1",
            json!({"message": "interrupted", "origin": {"id": "a"}, "time": 1}),
        ),
        frame(9, "log", "5.1", log("b", "stdout", "tail without newline")),
        frame(10, "log", "5.1", log("a", "stdout", "ld")),
        frame(
            11,
            "status",
            "1.0",
            json!({"status": "succeeded", "time": 1_786_037_200}),
        ),
    ]
}

fn sse(frames: &[String], end: Option<i64>) -> ResponseTemplate {
    let mut body: String = frames.concat();
    if let Some(id) = end {
        body.push_str(&end_frame(id));
    }
    ResponseTemplate::new(200)
        .insert_header("X-ATC-Stream-Version", "2.0")
        .set_body_raw(body, "text/event-stream; charset=utf-8")
}

fn line(stream: LogStream, text: &str) -> ProviderEvent {
    ProviderEvent::Log {
        stream,
        line: text.to_owned(),
    }
}

fn status(status: RunStatus, at: i64) -> ProviderEvent {
    ProviderEvent::Status {
        status,
        at: Some(OffsetDateTime::from_unix_timestamp(at).unwrap()),
    }
}

fn expected_events() -> Vec<ProviderEvent> {
    use LogStream::{Stderr, Stdout};
    vec![
        status(RunStatus::Running, 1_786_037_157),
        line(Stdout, "hello\r"),
        line(Stdout, "é ünï 🚀"),
        line(Stderr, "warn: \u{1b}[31mred\u{1b}[0m done"),
        line(Stderr, "interrupted"),
        status(RunStatus::Succeeded, 1_786_037_200),
        // Flushed at `end`, in the order the origins first wrote.
        line(Stdout, "world"),
        line(Stdout, "tail without newline"),
    ]
}

async fn mount_events(server: &MockServer, build_id: i64, response: ResponseTemplate) {
    Mock::given(method("GET"))
        .and(path(format!("/api/v1/builds/{build_id}/events")))
        .respond_with(response)
        .mount(server)
        .await;
}

async fn collect(stream: EventStream) -> Vec<Result<EventBatch, ProviderError>> {
    stream.collect().await
}

#[tokio::test]
async fn the_event_stream_joins_log_chunks_into_lines_and_flushes_at_end() {
    let server = MockServer::start().await;
    mount_token(&server, 1).await;
    mount_events(&server, 7, sse(&build_frames(), Some(12))).await;
    let p = provider(&server);

    let batches = collect(p.stream_events(&run_ref(7), None).await.unwrap()).await;

    let batches: Vec<EventBatch> = batches.into_iter().map(Result::unwrap).collect();
    assert_eq!(batches.len(), 13, "one batch per upstream event, plus end");
    assert!(batches[..12].iter().all(|b| !b.end));
    assert!(batches[12].end);
    for ignored in [5, 6] {
        assert!(batches[ignored].events.is_empty(), "batch {ignored}");
    }
    let events: Vec<ProviderEvent> = batches.iter().flat_map(|b| b.events.clone()).collect();
    assert_eq!(events, expected_events());
    assert_eq!(
        batches[3].resume,
        json!({
            "last_event_id": 3,
            "partial_lines": [
                {"origin_id": "a", "source": "stdout", "text": "wor"},
                {"origin_id": "a", "source": "stderr", "text": "warn: \u{1b}[31mred"},
            ],
        })
    );
    assert_eq!(
        batches[12].resume,
        json!({"last_event_id": 11, "partial_lines": []})
    );
    let requests = server.received_requests().await.unwrap();
    let events_request = requests
        .iter()
        .find(|r| r.url.path().ends_with("/events"))
        .unwrap();
    assert!(events_request.headers.get("last-event-id").is_none());
    assert_eq!(
        events_request.headers.get("authorization").unwrap(),
        "Bearer tok-1"
    );
}

#[tokio::test]
async fn resuming_continues_the_text_exactly() {
    let frames = build_frames();
    for stop_after in [0_usize, 1, 3, 8, 9, 11] {
        // First connection: consume up to and including event `stop_after`, then drop it.
        let first = MockServer::start().await;
        mount_token(&first, 1).await;
        mount_events(&first, 7, sse(&frames, Some(12))).await;
        let mut stream = provider(&first)
            .stream_events(&run_ref(7), None)
            .await
            .unwrap();
        let mut events = Vec::new();
        let mut resume = Value::Null;
        for _ in 0..=stop_after {
            let batch = stream.next().await.unwrap().unwrap();
            events.extend(batch.events);
            resume = batch.resume;
        }
        drop(stream);

        // Second connection: the ATC resumes after Last-Event-ID.
        let second = MockServer::start().await;
        mount_token(&second, 1).await;
        Mock::given(method("GET"))
            .and(path("/api/v1/builds/7/events"))
            .and(header("last-event-id", stop_after.to_string().as_str()))
            .respond_with(sse(&frames[stop_after + 1..], Some(12)))
            .expect(1)
            .mount(&second)
            .await;
        let rest = collect(
            provider(&second)
                .stream_events(&run_ref(7), Some(resume))
                .await
                .unwrap(),
        )
        .await;
        for batch in rest {
            events.extend(batch.unwrap().events);
        }

        assert_eq!(
            events,
            expected_events(),
            "resumed after event {stop_after}"
        );
    }
}

#[tokio::test]
async fn a_body_ending_before_end_is_an_error_that_ends_the_stream() {
    let server = MockServer::start().await;
    mount_token(&server, 1).await;
    mount_events(&server, 7, sse(&build_frames()[..3], None)).await;
    let p = provider(&server);

    let items = collect(p.stream_events(&run_ref(7), None).await.unwrap()).await;

    assert_eq!(items.len(), 4, "{items:?}");
    assert!(items[..3].iter().all(Result::is_ok));
    assert!(
        matches!(&items[3], Err(ProviderError::Unavailable(m)) if m.contains("before its end")),
        "{:?}",
        items[3]
    );
}

#[tokio::test]
async fn the_event_stream_maps_404_and_retries_a_401_once() {
    let server = MockServer::start().await;
    mount_rotating_tokens(&server).await;
    Mock::given(method("GET"))
        .and(path("/api/v1/builds/7/events"))
        .and(header("authorization", "Bearer tok-old"))
        .respond_with(ResponseTemplate::new(401).set_body_string("not authorized"))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v1/builds/7/events"))
        .and(header("authorization", "Bearer tok-new"))
        .respond_with(sse(&build_frames()[..1], Some(1)))
        .expect(1)
        .mount(&server)
        .await;
    mount_events(&server, 8, ResponseTemplate::new(404)).await;
    let p = provider(&server);

    let items = collect(p.stream_events(&run_ref(7), None).await.unwrap()).await;
    assert_eq!(items.len(), 2);
    assert!(items[1].as_ref().unwrap().end);
    let err = match p.stream_events(&run_ref(8), None).await {
        Ok(_) => panic!("a missing build must fail"),
        Err(e) => e,
    };
    assert!(matches!(err, ProviderError::NotFound(_)), "{err:?}");
}

#[tokio::test]
async fn the_event_stream_is_not_bound_by_the_request_timeout() {
    let server = MockServer::start().await;
    mount_token(&server, 1).await;
    // A pending build: no headers until the first event, which here comes after 3x the deadline.
    mount_events(
        &server,
        7,
        sse(&build_frames()[..1], Some(1)).set_delay(Duration::from_millis(900)),
    )
    .await;
    let mut s = settings(&server.uri());
    s.request_timeout = Duration::from_millis(300);
    let p = ConcourseProvider::new(s).unwrap();

    let items = collect(p.stream_events(&run_ref(7), None).await.unwrap()).await;

    assert_eq!(items.len(), 2, "{items:?}");
    assert!(items.iter().all(Result::is_ok));
}

#[tokio::test]
async fn a_5xx_on_the_event_stream_is_unavailable() {
    let server = MockServer::start().await;
    mount_token(&server, 1).await;
    mount_events(&server, 7, ResponseTemplate::new(502)).await;

    let err = match provider(&server).stream_events(&run_ref(7), None).await {
        Ok(_) => panic!("a 502 must fail"),
        Err(e) => e,
    };

    assert!(matches!(err, ProviderError::Unavailable(_)), "{err:?}");
}
