//! The `ci-gateway` binary itself: `dev`, `check-config`, signals.

use std::process::Stdio;

use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::helpers::PATIENCE;

const BIN: &str = env!("CARGO_BIN_EXE_ci-gateway");

fn example_config() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/ci-gateway.toml")
}

#[tokio::test]
async fn dev_mode_serves_example_jobs_end_to_end_and_stops_on_sigterm() {
    let mut child = Command::new(BIN)
        .args(["dev", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start ci-gateway dev");
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let (url, token) = tokio::time::timeout(PATIENCE, async {
        let mut url = None;
        while let Some(line) = stdout.next_line().await.unwrap() {
            if let Some(rest) = line.split("running at ").nth(1) {
                url = Some(rest.trim().to_owned());
            }
            if let Some(token) = line.split("export CI_GATEWAY_TOKEN=").nth(1) {
                return (url.expect("URL before the token"), token.trim().to_owned());
            }
        }
        panic!("dev exited without printing its URL and token");
    })
    .await
    .expect("URL in time");
    let client = reqwest::Client::builder()
        .default_headers(
            [(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {token}").parse().unwrap(),
            )]
            .into_iter()
            .collect(),
        )
        .build()
        .unwrap();
    let anonymous = reqwest::Client::new()
        .get(format!("{url}/v1/jobs"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    let ready = client.get(format!("{url}/readyz")).send().await.unwrap();
    let jobs: serde_json::Value = client
        .get(format!("{url}/v1/jobs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let run: serde_json::Value = client
        .post(format!("{url}/v1/jobs/job_payments_build_test/runs"))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let run_id = run["run"]["run_id"].as_str().unwrap();
    let body = client
        .get(format!("{url}/v1/runs/{run_id}/events"))
        .send()
        .await
        .unwrap();
    let text = tokio::time::timeout(PATIENCE, body.text())
        .await
        .unwrap()
        .unwrap();

    assert_eq!(ready.status(), StatusCode::OK);
    assert!(
        jobs["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["job_id"] == "job_payments_build_test")
    );
    assert!(
        text.contains("event: end\ndata: {\"status\":\"succeeded\"}"),
        "{text}"
    );
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("exit in time")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn check_config_accepts_the_example_and_names_what_is_wrong() {
    let ok = Command::new(BIN)
        .args(["check-config"])
        .arg(example_config())
        .env("CONCOURSE_PASSWORD", "example")
        .output()
        .await
        .unwrap();
    let missing_secret = Command::new(BIN)
        .args(["check-config"])
        .arg(example_config())
        .env_remove("CONCOURSE_PASSWORD")
        .output()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(example_config()).unwrap().replace(
        "provider = \"ci-main\"\nbinding = { pipeline = \"payments\"",
        "provider = \"elsewhere\"\nbinding = { pipeline = \"payments\"",
    );
    std::fs::write(&bad, text).unwrap();
    let unknown_provider = Command::new(BIN)
        .args(["check-config"])
        .arg(&bad)
        .env("CONCOURSE_PASSWORD", "x")
        .output()
        .await
        .unwrap();

    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        String::from_utf8_lossy(&ok.stdout)
            .contains("OK (1 provider(s), 2 job(s); auth: 1 API token(s)")
    );
    assert!(!missing_secret.status.success());
    assert!(
        String::from_utf8_lossy(&missing_secret.stderr).contains("CONCOURSE_PASSWORD is not set")
    );
    assert!(!unknown_provider.status.success());
    let err = String::from_utf8_lossy(&unknown_provider.stderr);
    assert!(
        err.contains("job_payments_build_test") && err.contains("allowlist"),
        "{err}"
    );
}

/// Runs `ci-gateway serve` on a config whose database URL is `url`; returns (success, stderr).
async fn serve_with_database(url: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gw.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\n[database]\nurl = \"{url}\"\n[providers.ci]\nkind = \"concourse\"\n\
             url = \"http://127.0.0.1:9\"\nteam = \"main\"\nusername = \"gw\"\npassword_env = \"GW_TEST_PW\"\n\
             [auth]\nmode = \"none\"\n"
        ),
    )
    .unwrap();
    let out = tokio::time::timeout(
        PATIENCE,
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config)
            .env("GW_TEST_PW", "pw")
            .output(),
    )
    .await
    .expect("exits in time")
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn bad_unreachable_or_newer_databases_stop_start_up_with_a_clear_message() {
    let (ok, bad_url) = serve_with_database("mysql://nope").await;
    assert!(
        !ok && bad_url.contains("must start with sqlite: or postgres:"),
        "{bad_url}"
    );

    let (ok, unreachable) = serve_with_database("postgres://gw:s3cret-canary@127.0.0.1:1/gw").await;
    assert!(
        !ok && unreachable.contains("cannot connect to PostgreSQL"),
        "{unreachable}"
    );
    assert!(
        !unreachable.contains("s3cret-canary"),
        "the URL's password leaked: {unreachable}"
    );
    assert!(!unreachable.contains("panicked"), "{unreachable}");

    let db = crate::helpers::TestDb::new().await;
    ci_gateway::store::connect(&db.url, 1)
        .await
        .expect("create the schema");
    let checksum = if db.url.starts_with("sqlite:") {
        "x'00'"
    } else {
        "decode('00', 'hex')"
    };
    db.execute(&format!(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99991231000000, 'from the future', TRUE, {checksum}, 0)"
    ))
    .await;
    let (ok, newer) = serve_with_database(&db.url).await;
    assert!(!ok && newer.contains("newer than this binary"), "{newer}");
}
