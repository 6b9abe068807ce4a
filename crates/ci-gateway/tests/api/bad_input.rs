//! Bad input gets the JSON error shape, the right status, and writes nothing.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn bad_requests_get_the_error_shape_and_write_nothing() {
    let app = spawn_app().await;
    let runs = format!("/v1/jobs/{JOB_OK}/runs");
    let post = |body: Vec<u8>, ct: &'static str| {
        app.send(
            app.client
                .post(app.url(&runs))
                .header("content-type", ct)
                .body(body),
        )
    };

    post(b"{\"parameters\":".to_vec(), "application/json")
        .await
        .assert_error(400, "invalid_json");
    post(b"not json".to_vec(), "application/json")
        .await
        .assert_error(400, "invalid_json");
    post(
        b"{\"idempotency_key\":\"a\xff\xfe\"}".to_vec(),
        "application/json",
    )
    .await
    .assert_error(400, "invalid_json");
    post(b"{\"paramaters\":{}}".to_vec(), "application/json")
        .await
        .assert_error(400, "invalid_request");
    post(b"{\"parameters\":[1,2]}".to_vec(), "application/json")
        .await
        .assert_error(400, "invalid_request");
    post(b"[]".to_vec(), "application/json")
        .await
        .assert_error(400, "invalid_request");
    post(b"{\"idempotency_key\":\"\"}".to_vec(), "application/json")
        .await
        .assert_error(400, "invalid_request");
    post(b"{}".to_vec(), "text/plain")
        .await
        .assert_error(415, "unsupported_media_type");
    let big = format!("{{\"idempotency_key\":\"{}\"}}", "k".repeat(200 * 1024));
    post(big.into_bytes(), "application/json")
        .await
        .assert_error(413, "payload_too_large");
    let reply = app
        .trigger(
            JOB_OK,
            &json!({"parameters": {"git_sha": "abc", "env": "prod"}}),
        )
        .await;
    reply.assert_error(422, "invalid_parameters");
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("git_sha")
    );
    app.trigger("job_nope", &json!({}))
        .await
        .assert_error(404, "job_not_found");
    app.trigger("bad%20id", &json!({}))
        .await
        .assert_error(404, "job_not_found");
    let mismatched = app
        .send(
            app.client
                .post(app.url(&runs))
                .header("idempotency-key", "a")
                .json(&json!({"idempotency_key": "b"})),
        )
        .await;
    mismatched.assert_error(400, "invalid_request");
    let two_keys = app
        .send(
            app.client
                .post(app.url(&runs))
                .header("idempotency-key", "a")
                .header("idempotency-key", "a"),
        )
        .await;
    two_keys.assert_error(400, "invalid_request");

    assert_eq!(app.db.count("ci_run").await, 0);
    assert_eq!(app.db.count("ci_run_event").await, 0);
    assert_eq!(app.sim.trigger_requests(), 0);
}

#[tokio::test]
async fn unknown_runs_routes_and_methods_get_the_error_shape() {
    let app = spawn_app().await;
    let unknown_run = "run_01JAAAAAAAAAAAAAAAAAAAAAAA";

    app.get(&format!("/v1/runs/{unknown_run}"))
        .await
        .assert_error(404, "run_not_found");
    app.get("/v1/runs/run_nope")
        .await
        .assert_error(404, "run_not_found");
    app.get("/v1/runs/%FF%FE")
        .await
        .assert_error(404, "run_not_found");
    app.get(&format!("/v1/runs/{unknown_run}/events"))
        .await
        .assert_error(404, "run_not_found");
    app.cancel(unknown_run)
        .await
        .assert_error(404, "run_not_found");
    app.get("/v1/nothing").await.assert_error(404, "not_found");
    app.get("/").await.assert_error(404, "not_found");
    app.send(app.client.delete(app.url("/v1/jobs")))
        .await
        .assert_error(405, "method_not_allowed");
    app.send(app.client.get(app.url(&format!("/v1/jobs/{JOB_OK}/runs"))))
        .await
        .assert_error(405, "method_not_allowed");
    app.send(
        app.client
            .put(app.url(&format!("/v1/runs/{unknown_run}/cancel"))),
    )
    .await
    .assert_error(405, "method_not_allowed");
    let run_id = app.trigger_ok(JOB_OK).await;
    let bad_cursor = app
        .send(
            app.client
                .get(app.url(&format!("/v1/runs/{run_id}/events")))
                .header("last-event-id", "abc"),
        )
        .await;
    bad_cursor.assert_error(400, "invalid_request");
}

#[tokio::test]
async fn a_job_disabled_upstream_is_refused_and_leaves_no_run() {
    let app = spawn_app().await;

    let reply = app
        .trigger(JOB_DISABLED, &json!({"idempotency_key": "k1"}))
        .await;

    reply.assert_error(409, "job_not_triggerable");
    assert_eq!(app.db.count("ci_run").await, 0);
    assert_eq!(app.sim.builds().len(), 0);
}

#[tokio::test]
async fn health_and_readiness_answer() {
    let app = spawn_app().await;
    assert_eq!(app.get("/healthz").await.status, StatusCode::OK);
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);
    let metrics = app.get("/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
}

#[tokio::test]
async fn an_oversized_or_odd_request_id_is_replaced_not_echoed() {
    let app = spawn_app().await;
    let huge = "r".repeat(30 * 1024);

    let long = app
        .send(
            app.client
                .get(app.url("/v1/jobs"))
                .header("x-request-id", &huge),
        )
        .await;
    let odd = app
        .send(
            app.client
                .get(app.url("/v1/jobs"))
                .header("x-request-id", "a b<c>"),
        )
        .await;
    let fine = app
        .send(
            app.client
                .get(app.url("/v1/jobs"))
                .header("x-request-id", "req-42.a:b_c"),
        )
        .await;

    let id = |r: &Reply| {
        r.headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    assert_eq!(id(&long).len(), 26, "a fresh ULID");
    assert_eq!(id(&odd).len(), 26, "a fresh ULID");
    assert_eq!(id(&fine), "req-42.a:b_c");
}
