//! The command-line client (`ci-gateway jobs …`, `ci-gateway runs …`): the real binary driven
//! against a real gateway, checking its output and exit codes.

use std::process::{ExitStatus, Stdio};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::*;

const FAILED: i32 = 10;
const CANCELED: i32 = 12;
const API_ERROR: i32 = 3;
const USAGE: i32 = 2;
const INTERRUPTED: i32 = 130;

/// The binary with `args` and `--server`, the suite's token, no client setting inherited from
/// the environment, and no colours.
fn cli(server: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ci-gateway"));
    command
        .args(args)
        .args(["--server", server])
        .env_remove("CI_GATEWAY_URL")
        // The suite's caller token; a test that sets its own overrides it.
        .env("CI_GATEWAY_TOKEN", CALLER_TOKEN)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// What a finished command printed.
struct Finished {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs the binary to its end.
async fn run_cli(server: &str, args: &[&str]) -> Finished {
    let output = tokio::time::timeout(PATIENCE, cli(server, args).output())
        .await
        .expect("the command finishes in time")
        .expect("the command starts");
    Finished {
        code: output.status.code().expect("exited, not killed"),
        stdout: String::from_utf8(output.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(output.stderr).expect("UTF-8 stderr"),
    }
}

/// A running command whose stdout is read line by line.
struct Running {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Running {
    fn spawn(server: &str, args: &[&str]) -> Running {
        let mut child = cli(server, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the command starts");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        Running { child, stdout }
    }

    /// The next stdout line, as JSON.
    async fn next_json(&mut self) -> Value {
        let line = tokio::time::timeout(PATIENCE, self.stdout.next_line())
            .await
            .expect("a line in time")
            .expect("readable stdout")
            .expect("a line before the end of stdout");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// JSON lines until (and with) the first matching one.
    async fn json_until(&mut self, stop: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut lines = Vec::new();
        loop {
            let line = self.next_json().await;
            let done = stop(&line);
            lines.push(line);
            if done {
                return lines;
            }
        }
    }

    /// Sends SIGINT, as Ctrl-C does.
    fn interrupt(&self) {
        let pid = self.child.id().expect("running");
        let status = std::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// The rest of stdout, and the exit status.
    async fn finish(mut self) -> (Vec<Value>, ExitStatus) {
        let mut rest = Vec::new();
        while let Some(line) = tokio::time::timeout(PATIENCE, self.stdout.next_line())
            .await
            .expect("stdout closes in time")
            .expect("readable stdout")
        {
            rest.push(serde_json::from_str(&line).expect("JSON line"));
        }
        let status = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("exit in time")
            .expect("exit status");
        (rest, status)
    }
}

/// Starts following a new run of the slow job as JSON lines, and waits until its first log
/// line: the run is running. Returns the follower and the run id.
async fn follow_slow_run(app: &TestApp, extra: &[&str]) -> (Running, String) {
    let mut args = vec!["runs", "trigger", JOB_SLOW, "--follow", "--output", "json"];
    args.extend_from_slice(extra);
    let mut follower = Running::spawn(&app.addr, &args);
    let first = follower.next_json().await;
    assert_eq!(first["event"], "run", "{first}");
    let run_id = first["data"]["run_id"].as_str().expect("run id").to_owned();
    follower
        .json_until(|l| l["event"] == "log" && l["data"]["line"] == "started")
        .await;
    (follower, run_id)
}

#[tokio::test]
async fn following_a_succeeding_run_prints_its_log_lines_and_exits_0() {
    let app = spawn_app().await;

    let out = run_cli(&app.addr, &["runs", "trigger", JOB_OK, "--follow"]).await;

    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    let mut expected = ok_stdout_lines().join("\n");
    expected.push('\n');
    assert_eq!(out.stdout, expected, "stdout is exactly the stdout log");
    assert!(out.stderr.contains(OK_STDERR), "{}", out.stderr);
    assert!(out.stderr.contains("run succeeded"), "{}", out.stderr);
}

#[tokio::test]
async fn following_a_failing_run_exits_with_the_failed_code() {
    let app = spawn_app().await;

    let out = run_cli(&app.addr, &["runs", "trigger", JOB_FAIL, "--follow"]).await;

    assert_eq!(out.code, FAILED, "stderr: {}", out.stderr);
    assert_eq!(out.stdout, "deploying\n");
    assert!(
        out.stderr.contains("error: connection refused\n"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("run failed"), "{}", out.stderr);
}

#[tokio::test]
async fn a_json_follower_exits_with_the_canceled_code_when_the_run_is_canceled() {
    // Arrange
    let app = spawn_app().await;
    let (follower, run_id) = follow_slow_run(&app, &[]).await;

    // Act
    let cancel = run_cli(&app.addr, &["runs", "cancel", &run_id, "--output", "json"]).await;
    let (rest, status) = follower.finish().await;

    // Assert
    assert_eq!(cancel.code, 0, "stderr: {}", cancel.stderr);
    assert_eq!(
        serde_json::from_str::<Value>(&cancel.stdout).expect("one JSON document")["run"]["run_id"],
        run_id.as_str()
    );
    assert_eq!(status.code(), Some(CANCELED));
    let last = rest.last().expect("an end line");
    assert_eq!(last["event"], "end");
    assert_eq!(last["data"], json!({"status": "canceled"}));
    assert!(last["id"].is_string(), "{last}");
}

#[tokio::test]
async fn runs_get_and_jobs_list_print_for_people_and_for_scripts() {
    let app = spawn_app().await;
    let run_id = app.trigger_ok(JOB_OK).await;
    app.events_until_end(&run_id).await;

    let get = run_cli(&app.addr, &["runs", "get", &run_id]).await;
    let get_json = run_cli(&app.addr, &["runs", "get", &run_id, "--output", "json"]).await;
    let listing = run_cli(&app.addr, &["jobs", "list"]).await;
    let jobs_json = run_cli(&app.addr, &["jobs", "list", "--output", "json"]).await;

    assert_eq!(
        (get.code, get_json.code, listing.code, jobs_json.code),
        (0, 0, 0, 0)
    );
    assert!(
        get.stdout.contains(&format!("run_id:      {run_id}\n")),
        "{}",
        get.stdout
    );
    assert!(
        get.stdout.contains("status:      succeeded\n"),
        "{}",
        get.stdout
    );
    assert!(!get.stdout.contains('\x1b'), "no colour off a terminal");
    let run: Value = serde_json::from_str(&get_json.stdout).expect("one JSON document");
    assert_eq!(run["run"]["status"], "succeeded");
    assert_eq!(run["run"]["run_id"], run_id.as_str());

    let table: Vec<&str> = listing.stdout.lines().collect();
    assert!(table[0].starts_with("JOB ID"), "{}", listing.stdout);
    assert_eq!(table.len(), 1 + jobs().len(), "{}", listing.stdout);
    assert!(
        table
            .iter()
            .any(|l| l.starts_with(JOB_OK) && l.contains("Payments build-test")),
        "{}",
        listing.stdout
    );
    let listed: Value = serde_json::from_str(&jobs_json.stdout).expect("one JSON document");
    assert_eq!(listed["jobs"].as_array().expect("jobs").len(), jobs().len());
}

#[tokio::test]
async fn runs_logs_of_a_finished_run_prints_its_log() {
    let app = spawn_app().await;
    let run_id = app.trigger_ok(JOB_OK).await;
    app.events_until_end(&run_id).await;

    let logs = run_cli(&app.addr, &["runs", "logs", &run_id]).await;
    let logs_json = run_cli(&app.addr, &["runs", "logs", &run_id, "--output", "json"]).await;
    let follow = run_cli(&app.addr, &["runs", "logs", &run_id, "--follow"]).await;

    assert_eq!(logs.code, 0, "stderr: {}", logs.stderr);
    let mut expected = ok_stdout_lines().join("\n");
    expected.push('\n');
    assert_eq!(logs.stdout, expected);
    assert_eq!(logs.stderr, OK_STDERR);
    let doc: Value = serde_json::from_str(&logs_json.stdout).expect("one JSON document");
    let events = doc["events"].as_array().expect("events");
    assert_eq!(events.last().expect("end")["event"], "end");
    assert_eq!(follow.code, 0, "a succeeded run, followed");
    assert_eq!(follow.stdout, expected);
}

#[tokio::test]
async fn ctrl_c_with_cancel_on_interrupt_cancels_the_run() {
    let app = spawn_app().await;
    let (follower, run_id) = follow_slow_run(&app, &["--cancel-on-interrupt"]).await;

    follower.interrupt();
    let (_, status) = follower.finish().await;

    assert_eq!(status.code(), Some(INTERRUPTED));
    let events = app.events_until_end(&run_id).await;
    assert_eq!(statuses(&events).last().expect("final"), "canceled");
}

#[tokio::test]
async fn ctrl_c_without_cancel_on_interrupt_leaves_the_run_running() {
    let app = spawn_app().await;
    let (follower, run_id) = follow_slow_run(&app, &[]).await;

    follower.interrupt();
    let (_, status) = follower.finish().await;

    assert_eq!(status.code(), Some(INTERRUPTED));
    assert_eq!(app.run(&run_id).await["status"], "running");
}

#[tokio::test]
async fn an_unknown_job_exits_3_with_the_error_code() {
    let app = spawn_app().await;

    let out = run_cli(&app.addr, &["runs", "trigger", "job_nope", "--follow"]).await;

    assert_eq!(out.code, API_ERROR);
    assert_eq!(out.stdout, "");
    assert_eq!(out.stderr, "error: job not found (job_not_found)\n");
}

#[tokio::test]
async fn a_repeated_parameter_key_is_a_usage_error() {
    let app = spawn_app().await;

    let out = run_cli(
        &app.addr,
        &["runs", "trigger", JOB_OK, "-p", "a=1", "-p", "a=2"],
    )
    .await;

    assert_eq!(out.code, USAGE);
    assert!(out.stderr.contains("`a`"), "{}", out.stderr);
    assert!(app.sim.builds().is_empty(), "nothing triggered");
}

#[tokio::test]
async fn the_token_is_sent_as_a_bearer_header_and_never_printed() {
    // Arrange: a stand-in gateway that only accepts the token.
    let server = MockServer::start().await;
    let token = "tok-canary-5d1e";
    Mock::given(method("GET"))
        .and(path("/v1/jobs"))
        .and(header("authorization", format!("Bearer {token}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"jobs": []})))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/jobs"))
        .respond_with(ResponseTemplate::new(401).set_body_json(
            json!({"error": {"code": "unauthorized", "message": "missing or invalid token"}}),
        ))
        .with_priority(10)
        .mount(&server)
        .await;

    // Act
    let with_env = cli(&server.uri(), &["jobs", "list"])
        .env("CI_GATEWAY_TOKEN", token)
        .output()
        .await
        .expect("runs");
    let wrong = run_cli(&server.uri(), &["jobs", "list", "--token", "tok-wrong-77"]).await;
    let help = cli(&server.uri(), &["runs", "--help"])
        .env("CI_GATEWAY_TOKEN", token)
        .output()
        .await
        .expect("runs");

    // Assert
    assert_eq!(with_env.status.code(), Some(0));
    assert_eq!(wrong.code, API_ERROR);
    assert_eq!(
        wrong.stderr,
        "error: missing or invalid token (unauthorized)\n"
    );
    for text in [
        &with_env.stdout,
        &with_env.stderr,
        &help.stdout,
        &help.stderr,
    ] {
        let text = String::from_utf8_lossy(text);
        assert!(!text.contains(token), "token printed: {text}");
    }
    assert!(!wrong.stderr.contains("tok-wrong-77"));
}

#[tokio::test]
async fn runs_list_sends_the_filters_and_prints_a_table() {
    // The listing endpoint comes with another change: a stand-in serves its documented shape.
    let server = MockServer::start().await;
    let run = json!({
        "run_id": "run_01J0000000000000000000000A", "job_id": JOB_FAIL, "status": "failed",
        "created_at": "2026-01-08T18:22:11Z", "started_at": "2026-01-08T18:22:12Z",
        "finished_at": "2026-01-08T18:23:00Z", "parameters": {}, "terminal": true,
        "links": {"self": "/v1/runs/run_01J0000000000000000000000A",
                  "events": "/v1/runs/run_01J0000000000000000000000A/events"}
    });
    Mock::given(method("GET"))
        .and(path("/v1/runs"))
        .and(query_param("job_id", JOB_FAIL))
        .and(query_param("status", "failed"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"runs": [run], "next_cursor": "page-2"})),
        )
        .expect(2)
        .mount(&server)
        .await;

    let args = ["runs", "list", "--job", JOB_FAIL, "--status", "failed"];
    let human = run_cli(&server.uri(), &args).await;
    let mut json_args = args.to_vec();
    json_args.extend(["--output", "json"]);
    let as_json = run_cli(&server.uri(), &json_args).await;

    assert_eq!((human.code, as_json.code), (0, 0), "{}", human.stderr);
    let table: Vec<&str> = human.stdout.lines().collect();
    assert!(table[0].starts_with("RUN ID"), "{}", human.stdout);
    assert!(
        table[1].starts_with("run_01J0000000000000000000000A") && table[1].contains(" failed "),
        "{}",
        human.stdout
    );
    assert_eq!(human.stderr, "more: --cursor page-2\n");
    let page: Value = serde_json::from_str(&as_json.stdout).expect("one JSON document");
    assert_eq!(page["next_cursor"], "page-2");
}

#[tokio::test]
async fn a_follower_resumes_across_a_gateway_restart_without_repeating_an_event() {
    // Arrange: follow a run that logs a line every 1.5 s.
    let app = spawn_app().await;
    let addr: std::net::SocketAddr = app
        .addr
        .trim_start_matches("http://")
        .parse()
        .expect("socket address");
    let mut follower = Running::spawn(
        &app.addr,
        &["runs", "trigger", JOB_LONG, "--follow", "--output", "json"],
    );
    let mut lines = follower.json_until(|l| l["data"]["line"] == "step 1").await;

    // Act: stop the gateway (its streams end) and start it again on the same port.
    let (sim, db) = app.stop().await;
    let mut settings = settings(&sim, &db, &Options::default());
    settings.listen = addr;
    let gateway = ci_gateway::Application::build(settings)
        .await
        .expect("restart on the same port");
    let shutdown = gateway.shutdown_token();
    let server =
        tokio::spawn(async move { gateway.run_until_stopped(std::future::pending()).await });
    let (rest, status) = follower.finish().await;
    lines.extend(rest);
    shutdown.cancel();
    let _ = server.await;

    // Assert: every event once, in order, through to the end.
    assert_eq!(status.code(), Some(0), "{lines:?}");
    let ids: Vec<String> = lines[1..]
        .iter()
        .map(|l| l["id"].as_str().expect("id").to_owned())
        .collect();
    let expected: Vec<String> = (0..ids.len()).map(|i| i.to_string()).collect();
    assert_eq!(ids, expected, "contiguous ids, no repeats");
    let logged: Vec<&str> = lines
        .iter()
        .filter(|l| l["event"] == "log")
        .map(|l| l["data"]["line"].as_str().expect("line"))
        .collect();
    assert_eq!(logged, ["step 1", "step 2", "step 3", "step 4"]);
}
