//! The test harness: a real gateway on port 0 in front of a real simulator over HTTP.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ci_gateway::Application;
use ci_gateway::config::{
    ApiTokenSettings, AuthSettings, ClusterSettings, ConcourseProviderSettings, DatabaseSettings,
    JobSettings, ProviderSettings, ServerSettings, Settings, TlsSettings,
};
use concourse_sim::{Job, Pipeline, Role, Script, Simulator, Team, User, World};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// Distinctive upstream names: no response may ever contain them.
pub const TEAM: &str = "team-canary-7f3a";
pub const PIPELINE: &str = "pipeline-canary-payments";
pub const USERNAME: &str = "gw-canary-user";
pub const PASSWORD: &str = "pw-canary-Z9qLk2";

/// The caller token every request of the suite carries unless a test says otherwise: a canary
/// too, so no response may contain it.
pub const CALLER_TOKEN: &str = "cigw_caller-canary-Hq7Wm3pX";
/// The name it is configured under.
pub const CALLER: &str = "test-operator";

/// `[auth]` with the suite's operator token (every scope) and `extra` tokens.
pub fn auth_with(extra: Vec<ApiTokenSettings>) -> AuthSettings {
    let mut tokens = vec![token_settings(
        CALLER,
        CALLER_TOKEN,
        &[
            "jobs:read",
            "runs:read",
            "runs:trigger",
            "runs:cancel",
            "audit:read",
        ],
        None,
    )];
    tokens.extend(extra);
    AuthSettings {
        tokens,
        ..AuthSettings::default()
    }
}

/// An API token entry holding only the token's digest.
pub fn token_settings(
    name: &str,
    token: &str,
    scopes: &[&str],
    projects: Option<&[&str]>,
) -> ApiTokenSettings {
    ApiTokenSettings {
        name: name.to_owned(),
        sha256: Some(ci_gateway::auth::token_digest(token)),
        token_env: None,
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        projects: projects.map(|p| p.iter().map(|s| (*s).to_owned()).collect()),
    }
}

/// The job ids of [`world`], bound to jobs of [`PIPELINE`].
pub const JOB_OK: &str = "job_payments_build_test";
pub const JOB_FAIL: &str = "job_payments_deploy";
pub const JOB_SLOW: &str = "job_payments_integration";
pub const JOB_PAUSED: &str = "job_payments_docs";
pub const JOB_DISABLED: &str = "job_payments_release";
pub const JOB_LONG: &str = "job_payments_long";

/// The log of the succeeding job, in chunks that ignore line boundaries, and its lines.
pub const OK_CHUNKS: [&str; 6] = [
    "Compiling payments v1.2.0\n   Compil",
    "ing ledger v0.4.1\n\x1b[32mFinished\x1b[0m dev [unoptimized] in 3.2s\nrunning 3 tests\r\n",
    "test ledger::balances ... ok\ntest ✓ ünïcödé ... ok\n",
    "progress 10%\rprogress 100%\n",
    "",
    "test result: ok. 3 passed; 0 failed (no trailing newline)",
];
pub const OK_STDERR: &str = "warning: unused variable `x`\n";

/// The lines the succeeding job's log must produce, in order, per stream.
pub fn ok_stdout_lines() -> Vec<String> {
    OK_CHUNKS.concat().split('\n').map(str::to_owned).collect()
}

/// The simulated Concourse of most tests.
pub fn world() -> World {
    let ok = Script::new()
        .log_out(OK_CHUNKS[0])
        .log_out(OK_CHUNKS[1])
        .log_err(OK_STDERR)
        .raw(
            "mystery-event",
            "9.9",
            serde_json::json!({"whatever": true}),
        )
        .log_out(OK_CHUNKS[2])
        .log_out(OK_CHUNKS[3])
        .log_out(OK_CHUNKS[4])
        .log_out(OK_CHUNKS[5])
        .succeed();
    let fail = Script::new()
        .log_out("deploying\n")
        .log_err("error: connection refused\n")
        .fail();
    let slow = Script::new()
        .log_out("started\n")
        .sleep(Duration::from_secs(120))
        .succeed();
    let long = Script::new()
        .log_out("step 1\n")
        .sleep(Duration::from_millis(1500))
        .log_out("step 2\n")
        .sleep(Duration::from_millis(1500))
        .log_out("step 3\n")
        .sleep(Duration::from_millis(1500))
        .log_out("step 4\n")
        .succeed();
    World::new()
        .first_build_id(i64::from(i32::MAX) + 10)
        .user(User::new(USERNAME, PASSWORD).role(TEAM, Role::PipelineOperator))
        .team(
            Team::new(TEAM).pipeline(
                Pipeline::new(PIPELINE)
                    .job(Job::new("build-test", ok))
                    .job(Job::new("deploy", fail))
                    .job(Job::new("integration", slow.clone()))
                    .job(Job::new("docs", slow.clone()).paused(true))
                    .job(Job::new("release", slow).disable_manual_trigger(true))
                    .job(Job::new("long", long)),
            ),
        )
}

/// The catalog for [`world`].
pub fn jobs() -> Vec<JobSettings> {
    [
        (JOB_OK, "build-test"),
        (JOB_FAIL, "deploy"),
        (JOB_SLOW, "integration"),
        (JOB_PAUSED, "docs"),
        (JOB_DISABLED, "release"),
        (JOB_LONG, "long"),
    ]
    .into_iter()
    .map(|(id, job)| job_settings(id, PIPELINE, job))
    .collect()
}

pub fn job_settings(job_id: &str, pipeline: &str, job: &str) -> JobSettings {
    let mut binding = toml::Table::new();
    binding.insert("pipeline".into(), pipeline.into());
    binding.insert("job".into(), job.into());
    JobSettings {
        job_id: job_id.to_owned(),
        project: "payments".to_owned(),
        display_name: format!("Payments {job}"),
        environment: Some("test".to_owned()),
        provider: "ci".to_owned(),
        binding,
    }
}

/// Evaluates `$body` with `$pool` bound to a fresh pool on the test database, whichever the
/// backend, and closes the pool after.
macro_rules! on_db {
    ($db:expr, |$pool:ident| $body:expr) => {{
        if $db.url.starts_with("sqlite:") {
            let $pool = sqlx::SqlitePool::connect(&$db.url)
                .await
                .expect("open sqlite");
            let out = $body;
            $pool.close().await;
            out
        } else {
            let $pool = sqlx::PgPool::connect(&$db.url)
                .await
                .expect("open postgres");
            let out = $body;
            $pool.close().await;
            out
        }
    }};
}

/// A database for one test: a fresh SQLite file, or a fresh PostgreSQL database when
/// `CI_GATEWAY_TEST_PG_URL` names a server.
pub struct TestDb {
    pub url: String,
    pub dir: tempfile::TempDir,
    /// The server's admin URL, for a PostgreSQL database (dropped with the `TestDb`).
    admin: Option<String>,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(admin) = self.admin.take() else {
            return;
        };
        let Some((_, name)) = self.url.rsplit_once('/') else {
            return;
        };
        let name = name.to_owned();
        // Drop cannot await: a short-lived runtime on its own thread does the clean-up. FORCE
        // ends the connections a gateway of the test may still hold.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let pool = sqlx::PgPool::connect(&admin).await?;
                let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await?;
                pool.close().await;
                anyhow::Ok(())
            })
        })
        .join();
    }
}

impl TestDb {
    pub async fn new() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        match std::env::var("CI_GATEWAY_TEST_PG_URL") {
            Ok(admin) if !admin.is_empty() => TestDb {
                url: create_pg_database(&admin).await,
                dir,
                admin: Some(admin),
            },
            _ => TestDb {
                url: format!("sqlite://{}", dir.path().join("gateway.db").display()),
                dir,
                admin: None,
            },
        }
    }

    /// Whether this is a PostgreSQL database.
    pub fn is_postgres(&self) -> bool {
        !self.url.starts_with("sqlite:")
    }

    /// Counts the rows of a table, straight from the database.
    pub async fn count(&self, table: &str) -> i64 {
        let sql = sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}"));
        on_db!(self, |pool| sqlx::query_scalar(sql)
            .fetch_one(&pool)
            .await
            .expect("count"))
    }

    /// Runs statements straight on the database (fault injection, tampering).
    pub async fn execute(&self, sql: &str) {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        on_db!(self, |pool| {
            sqlx::raw_sql(sql).execute(&pool).await.expect("statement");
        });
    }

    /// The holder of a named lease, straight from the database.
    pub async fn lease_holder(&self, name: &str) -> Option<String> {
        let sql = "SELECT holder FROM ci_lease WHERE name = $1";
        on_db!(self, |pool| sqlx::query_scalar(sql)
            .bind(name)
            .fetch_optional(&pool)
            .await
            .expect("lease holder"))
    }
}

async fn create_pg_database(admin_url: &str) -> String {
    let name = format!(
        "gw_test_{}",
        ulid::Ulid::generate().to_string().to_lowercase()
    );
    let pool = sqlx::PgPool::connect(admin_url)
        .await
        .expect("connect to the test PostgreSQL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&pool)
        .await
        .expect("create test database");
    pool.close().await;
    let (base, _) = admin_url
        .rsplit_once('/')
        .expect("PG URL with a database name");
    format!("{base}/{name}")
}

/// Options for [`spawn_app_with`].
pub struct Options {
    pub jobs: Vec<JobSettings>,
    pub heartbeat_secs: u64,
    pub password: String,
    pub lease_ttl_secs: u64,
    pub auth: AuthSettings,
    pub tls: Option<TlsSettings>,
    /// The client requests go through (e.g. one trusting a test CA).
    pub client: Option<reqwest::Client>,
    /// The token `send` adds to requests without an Authorization header.
    pub token: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            jobs: jobs(),
            heartbeat_secs: 15,
            password: PASSWORD.to_owned(),
            lease_ttl_secs: 15,
            auth: auth_with(Vec::new()),
            tls: None,
            client: None,
            token: Some(CALLER_TOKEN.to_owned()),
        }
    }
}

/// A running gateway and the simulator behind it.
pub struct TestApp {
    pub addr: String,
    pub sim: Arc<Simulator>,
    pub db: Arc<TestDb>,
    pub client: reqwest::Client,
    pub shutdown: CancellationToken,
    pub server: tokio::task::JoinHandle<()>,
    /// Strings no response may contain.
    pub secrets: Vec<String>,
    /// Added as a bearer token to requests that carry no Authorization header.
    pub token: Option<String>,
    /// The paths the gateway's router serves, read from the router itself.
    pub route_paths: Vec<String>,
}

/// A response, read whole.
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// Asserts the standard error shape with `code`.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        let body = self.json();
        assert_eq!(body["error"]["code"], code, "body: {}", self.body);
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        let ct = self
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(ct.starts_with("application/json"), "content-type {ct}");
    }
}

/// One SSE event as a client sees it.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: String,
    pub event: String,
    pub data: Value,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(world(), Options::default()).await
}

/// Every log line of the suite, from every test (one global subscriber, at debug unless
/// `RUST_LOG` says otherwise), so leaks can be looked for across the whole run.
pub static LOGS: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

/// Strings no log line may contain; tests add their own (e.g. a JWT they sent).
pub static LOG_CANARIES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Canaries found in a log line so far: any entry fails every later `send` of the suite.
pub static LOG_LEAKS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Registers a string that must never be logged.
pub fn log_canary(canary: &str) {
    LOG_CANARIES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(canary.to_owned());
}

/// Appends log output to [`LOGS`] and checks each write against the canaries.
struct LogSink {
    echo: bool,
}

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let found: Vec<String> = LOG_CANARIES
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|c| text.contains(c.as_str()))
            .cloned()
            .collect();
        if !found.is_empty() {
            LOG_LEAKS
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(found);
        }
        LOGS.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_str(&text);
        if self.echo {
            eprint!("{text}");
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the suite's log capture once. Logs go to the test output too when `RUST_LOG` is
/// set.
pub fn init_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for canary in [PASSWORD, CALLER_TOKEN] {
            log_canary(canary);
        }
        let echo = std::env::var_os("RUST_LOG").is_some();
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("debug"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(move || LogSink { echo })
            .try_init();
    });
}

/// Fails the test if any log line of the suite so far carried a canary.
pub fn assert_no_log_leak() {
    let leaks = LOG_LEAKS.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(leaks.is_empty(), "log lines carry {leaks:?}");
}

pub async fn spawn_app_with(world: World, options: Options) -> TestApp {
    init_logs();
    let sim = Arc::new(Simulator::start(world).await.expect("start simulator"));
    let db = Arc::new(TestDb::new().await);
    start_gateway(sim, db, options)
        .await
        .expect("start gateway")
}

/// Settings for a gateway in front of `sim` on `db`.
pub fn settings(sim: &Simulator, db: &TestDb, options: &Options) -> Settings {
    let password_file: PathBuf = db.dir.path().join("password");
    std::fs::write(&password_file, format!("{}\n", options.password)).expect("password file");
    let mut providers = BTreeMap::new();
    providers.insert(
        "ci".to_owned(),
        ProviderSettings::Concourse(ConcourseProviderSettings::with_password_file(
            sim.url(),
            TEAM.to_owned(),
            USERNAME.to_owned(),
            password_file,
        )),
    );
    Settings {
        listen: "127.0.0.1:0".parse().expect("addr"),
        database: DatabaseSettings {
            url: db.url.clone(),
            max_connections: 5,
        },
        server: ServerSettings {
            sse_heartbeat_secs: options.heartbeat_secs,
            tls: options.tls.clone(),
            ..Default::default()
        },
        cluster: ClusterSettings {
            lease_ttl_secs: options.lease_ttl_secs,
            event_retention_days: 0,
        },
        providers,
        jobs: options.jobs.clone(),
        auth: options.auth.clone(),
    }
}

/// The strings no response may contain: the simulator's address and every upstream name.
fn secrets(sim: &Simulator) -> Vec<String> {
    vec![
        sim.url(),
        sim.addr().to_string(),
        TEAM.to_owned(),
        PIPELINE.to_owned(),
        PASSWORD.to_owned(),
        USERNAME.to_owned(),
        CALLER_TOKEN.to_owned(),
    ]
}

/// Starts a gateway on an existing simulator and database (for restarts).
pub async fn start_gateway(
    sim: Arc<Simulator>,
    db: Arc<TestDb>,
    options: Options,
) -> anyhow::Result<TestApp> {
    let app = Application::build(settings(&sim, &db, &options)).await?;
    // The test server certificate is issued to `localhost`.
    let addr = if options.tls.is_some() {
        format!("https://localhost:{}", app.local_addr().port())
    } else {
        format!("http://{}", app.local_addr())
    };
    let route_paths = route_paths(&app.router());
    let shutdown = app.shutdown_token();
    let server = tokio::spawn(async move {
        app.run_until_stopped(std::future::pending())
            .await
            .expect("server failed");
    });
    let secrets = secrets(&sim);
    Ok(TestApp {
        addr,
        sim,
        db,
        client: options.client.unwrap_or_default(),
        shutdown,
        server,
        secrets,
        token: options.token,
        route_paths,
    })
}

/// The paths an axum router serves. axum has no API to list them, but its `Debug` output prints
/// the path router's `paths` map before the fallback router (whose catch-all paths are not
/// routes); every quoted string there that starts with `/` is a path.
pub fn route_paths(router: &axum::Router) -> Vec<String> {
    let debug = format!("{router:?}");
    let (routes, _fallback) = debug
        .split_once("fallback_router")
        .expect("axum's Router Debug names its fallback_router");
    let mut paths: Vec<String> = routes
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with('/'))
        .map(str::to_owned)
        .collect();
    paths.sort();
    paths.dedup();
    assert!(!paths.is_empty(), "no routes found in {debug}");
    paths
}

impl TestApp {
    /// A client of a gateway running in another process.
    pub fn remote(addr: String, sim: Arc<Simulator>, db: Arc<TestDb>) -> TestApp {
        let secrets = secrets(&sim);
        TestApp {
            addr,
            sim,
            db,
            client: reqwest::Client::new(),
            shutdown: CancellationToken::new(),
            server: tokio::spawn(async {}),
            secrets,
            token: Some(CALLER_TOKEN.to_owned()),
            route_paths: Vec::new(),
        }
    }

    /// Stops the gateway and waits until it has.
    pub async fn stop(self) -> (Arc<Simulator>, Arc<TestDb>) {
        self.shutdown.cancel();
        self.server.await.expect("server task");
        (self.sim, self.db)
    }

    /// Fails the test if a response carries an upstream name or credential.
    pub fn assert_no_leak(&self, what: &str, text: &str) {
        for secret in &self.secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{what} leaks {secret:?}: {text}"
            );
        }
    }

    /// Sends a request with the suite's caller token (unless it carries its own credential),
    /// and checks the response for leaks.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let mut request = request.build().expect("request");
        if let Some(token) = &self.token
            && !request.headers().contains_key("authorization")
        {
            let value = format!("Bearer {token}").parse().expect("header value");
            request.headers_mut().insert("authorization", value);
        }
        self.send_raw(request).await
    }

    /// Sends a request exactly as built: no credential is added.
    pub async fn send_anonymous(&self, request: reqwest::RequestBuilder) -> Reply {
        self.send_raw(request.build().expect("request")).await
    }

    async fn send_raw(&self, request: reqwest::Request) -> Reply {
        let response = self.client.execute(request).await.expect("request");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.text().await.expect("body");
        for (name, value) in &headers {
            self.assert_no_leak(
                &format!("header {name}"),
                value.to_str().unwrap_or_default(),
            );
        }
        self.assert_no_leak("body", &body);
        assert_no_log_leak();
        assert!(
            !body.is_empty() || status == StatusCode::NO_CONTENT,
            "empty body, {status}"
        );
        Reply {
            status,
            headers,
            body,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.addr)
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.client.get(self.url(path))).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Reply {
        self.send(self.client.post(self.url(path)).json(body)).await
    }

    pub async fn trigger(&self, job_id: &str, body: &Value) -> Reply {
        self.post_json(&format!("/v1/jobs/{job_id}/runs"), body)
            .await
    }

    /// Triggers a run and returns its id, asserting 201.
    pub async fn trigger_ok(&self, job_id: &str) -> String {
        let reply = self.trigger(job_id, &serde_json::json!({})).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        reply.json()["run"]["run_id"]
            .as_str()
            .expect("run_id")
            .to_owned()
    }

    pub async fn run(&self, run_id: &str) -> Value {
        let reply = self.get(&format!("/v1/runs/{run_id}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        reply.json()["run"].clone()
    }

    pub async fn cancel(&self, run_id: &str) -> Reply {
        self.send(
            self.client
                .post(self.url(&format!("/v1/runs/{run_id}/cancel"))),
        )
        .await
    }

    /// Opens the run's event stream.
    pub async fn open_events(&self, run_id: &str, last_event_id: Option<&str>) -> EventReader {
        let mut request = self
            .client
            .get(self.url(&format!("/v1/runs/{run_id}/events")));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("events request");
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers().clone();
        EventReader {
            headers,
            stream: Box::pin(response.bytes_stream().eventsource()),
            secrets: self.secrets.clone(),
        }
    }

    /// Reads the whole event stream of a run until `end`, and checks that the server closes it.
    pub async fn events_until_end(&self, run_id: &str) -> Vec<SseEvent> {
        let mut reader = self.open_events(run_id, None).await;
        let events = reader.until_end().await;
        reader.assert_closed().await;
        events
    }
}

type EventStream = std::pin::Pin<
    Box<
        dyn futures_util::Stream<
                Item = Result<
                    eventsource_stream::Event,
                    eventsource_stream::EventStreamError<reqwest::Error>,
                >,
            > + Send,
    >,
>;

/// A client of one event stream.
pub struct EventReader {
    pub headers: reqwest::header::HeaderMap,
    stream: EventStream,
    secrets: Vec<String>,
}

/// Upper bound for anything a test awaits, so a bug fails the test instead of hanging it.
pub const PATIENCE: Duration = Duration::from_secs(60);

impl EventReader {
    /// The next event.
    pub async fn next(&mut self) -> Option<SseEvent> {
        let item = tokio::time::timeout(PATIENCE, self.stream.next())
            .await
            .expect("event in time")?;
        let e = item.expect("well-formed SSE");
        for secret in &self.secrets {
            assert!(
                !e.data.contains(secret.as_str()),
                "event leaks {secret}: {}",
                e.data
            );
        }
        let data = serde_json::from_str(&e.data).expect("event data is JSON");
        Some(SseEvent {
            id: e.id,
            event: e.event,
            data,
        })
    }

    /// Events until (and with) the first matching one.
    pub async fn until(&mut self, mut stop: impl FnMut(&SseEvent) -> bool) -> Vec<SseEvent> {
        let mut events = Vec::new();
        while let Some(e) = self.next().await {
            let done = stop(&e);
            events.push(e);
            if done {
                return events;
            }
        }
        panic!("stream closed early after {events:?}");
    }

    pub async fn until_end(&mut self) -> Vec<SseEvent> {
        self.until(|e| e.event == "end").await
    }

    /// Asserts that the server ends the stream.
    pub async fn assert_closed(&mut self) {
        let next = tokio::time::timeout(PATIENCE, self.stream.next())
            .await
            .expect("close in time");
        assert!(next.is_none(), "stream not closed after end: {next:?}");
    }
}

/// The statuses a stream carried, in order.
pub fn statuses(events: &[SseEvent]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.event == "status")
        .map(|e| e.data["status"].as_str().expect("status").to_owned())
        .collect()
}

/// The log lines of one stream, in order.
pub fn lines(events: &[SseEvent], stream: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.event == "log" && e.data["stream"] == stream)
        .map(|e| e.data["line"].as_str().expect("line").to_owned())
        .collect()
}

/// Asserts that ids are 0, 1, 2, … in order.
pub fn assert_contiguous_ids(events: &[SseEvent]) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.id, i.to_string(), "event {i}: {e:?}");
    }
}

/// Asserts that the events of a run of [`JOB_LONG`], read in pieces, make its whole history:
/// ids 0, 1, 2, … and every line and status exactly once.
pub fn assert_whole_long_run(all: Vec<SseEvent>) {
    assert_contiguous_ids(&all);
    assert_eq!(
        lines(&all, "stdout"),
        ["step 1", "step 2", "step 3", "step 4"]
    );
    assert_eq!(statuses(&all), ["queued", "running", "succeeded"]);
}
