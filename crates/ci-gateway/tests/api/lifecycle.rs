//! The happy paths: list, trigger, follow, finish, cancel, idempotency.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn jobs_are_listed_from_the_catalog_with_generic_fields_only() {
    let app = spawn_app().await;
    let reply = app.get("/v1/jobs").await;
    assert_eq!(reply.status, StatusCode::OK);
    let jobs = reply.json()["jobs"].as_array().expect("jobs").clone();
    let ids: Vec<&str> = jobs.iter().map(|j| j["job_id"].as_str().unwrap()).collect();
    let mut expected = [
        JOB_OK,
        JOB_FAIL,
        JOB_SLOW,
        JOB_PAUSED,
        JOB_DISABLED,
        JOB_LONG,
    ];
    expected.sort_unstable();
    assert_eq!(ids, expected, "sorted by id");
    let ok = jobs.iter().find(|j| j["job_id"] == JOB_OK).unwrap();
    assert_eq!(
        ok,
        &json!({"job_id": JOB_OK, "project": "payments", "display_name": "Payments build-test", "environment": "test"})
    );
}

#[tokio::test]
async fn a_triggered_run_goes_queued_running_succeeded_with_every_log_line_in_order() {
    let app = spawn_app().await;

    let reply = app.trigger(JOB_OK, &json!({})).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let run = reply.json()["run"].clone();
    let run_id = run["run_id"].as_str().unwrap().to_owned();
    assert!(run_id.starts_with("run_") && run_id.len() == 30, "{run_id}");
    assert_eq!(run["job_id"], JOB_OK);
    assert_eq!(run["status"], "queued");
    assert!(run["finished_at"].is_null());
    assert_eq!(app.sim.builds().len(), 1, "one build upstream");
    assert_eq!(app.sim.builds()[0].job, "build-test");

    let events = app.events_until_end(&run_id).await;

    assert_contiguous_ids(&events);
    assert_eq!(statuses(&events), ["queued", "running", "succeeded"]);
    assert_eq!(lines(&events, "stdout"), ok_stdout_lines());
    assert_eq!(lines(&events, "stderr"), [OK_STDERR.trim_end_matches('\n')]);
    let last = events.last().unwrap();
    assert_eq!(
        (last.event.as_str(), &last.data),
        ("end", &json!({"status": "succeeded"}))
    );
    // Logs come between running and the final status.
    let pos = |pred: &dyn Fn(&SseEvent) -> bool| events.iter().position(pred).unwrap();
    let running = pos(&|e| e.data["status"] == "running");
    let first_log = pos(&|e| e.event == "log");
    let done = pos(&|e| e.data["status"] == "succeeded");
    assert!(running < first_log && first_log < done);

    let run = app.run(&run_id).await;
    assert_eq!(run["status"], "succeeded");
    assert_eq!(run["terminal"], true);
    for field in ["created_at", "started_at", "finished_at"] {
        let t = run[field].as_str().unwrap();
        assert!(t.ends_with('Z') && t.len() == 20, "{field}: {t}");
    }
}

#[tokio::test]
async fn a_failing_job_ends_failed_and_a_finished_run_replays_its_history() {
    let app = spawn_app().await;
    let run_id = app.trigger_ok(JOB_FAIL).await;

    let first = app.events_until_end(&run_id).await;
    let again = app.events_until_end(&run_id).await;

    assert_eq!(statuses(&first), ["queued", "running", "failed"]);
    assert_eq!(lines(&first, "stderr"), ["error: connection refused"]);
    assert_eq!(app.run(&run_id).await["status"], "failed");
    let ids = |v: &[SseEvent]| {
        v.iter()
            .map(|e| (e.id.clone(), e.data.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&first), ids(&again));
}

#[tokio::test]
async fn the_event_stream_has_sse_headers_and_resumes_after_last_event_id() {
    let app = spawn_app().await;
    let run_id = app.trigger_ok(JOB_OK).await;
    let all = app.events_until_end(&run_id).await;

    let mut reader = app.open_events(&run_id, Some("3")).await;
    let rest = reader.until_end().await;

    let h = |n: &str| {
        reader
            .headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    assert!(h("content-type").starts_with("text/event-stream"));
    assert_eq!(h("cache-control"), "no-cache");
    assert_eq!(h("x-accel-buffering"), "no");
    let tail: Vec<_> = all[4..]
        .iter()
        .map(|e| (e.id.clone(), e.data.clone()))
        .collect();
    let got: Vec<_> = rest
        .iter()
        .map(|e| (e.id.clone(), e.data.clone()))
        .collect();
    assert_eq!(got, tail);

    // Resuming after the end repeats only the end, then closes.
    let end_id = all.last().unwrap().id.clone();
    let mut reader = app.open_events(&run_id, Some(&end_id)).await;
    let only = reader.until_end().await;
    assert_eq!(only.len(), 1);
    reader.assert_closed().await;
}

#[tokio::test]
async fn canceling_a_running_run_ends_it_canceled_and_canceling_again_is_a_conflict() {
    let app = spawn_app().await;
    let run_id = app.trigger_ok(JOB_SLOW).await;
    let mut reader = app.open_events(&run_id, None).await;
    reader.until(|e| e.event == "log").await;

    let reply = app.cancel(&run_id).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    assert_eq!(reply.json()["run"]["run_id"], run_id.as_str());
    let rest = reader.until_end().await;

    assert_eq!(statuses(&rest), ["canceled"]);
    assert_eq!(rest.last().unwrap().data, json!({"status": "canceled"}));
    assert_eq!(lines(&rest, "stderr"), ["interrupted"]);
    assert_eq!(app.run(&run_id).await["status"], "canceled");
    assert!(app.sim.builds()[0].aborted);
    let again = app.cancel(&run_id).await;
    again.assert_error(409, "run_already_finished");
    assert_eq!(again.json()["run"]["status"], "canceled");
}

#[tokio::test]
async fn a_queued_run_can_be_canceled_and_a_finished_one_cannot() {
    let app = spawn_app().await;
    let queued = app.trigger_ok(JOB_PAUSED).await;
    let done = app.trigger_ok(JOB_OK).await;
    app.events_until_end(&done).await;

    assert_eq!(app.cancel(&queued).await.status, StatusCode::ACCEPTED);
    let events = app.events_until_end(&queued).await;
    app.cancel(&done)
        .await
        .assert_error(409, "run_already_finished");

    assert_eq!(statuses(&events), ["queued", "canceled"]);
    assert!(app.run(&queued).await["started_at"].is_null());
}

#[tokio::test]
async fn the_same_idempotency_key_gives_the_same_run_and_one_upstream_build() {
    let app = spawn_app().await;
    let body = json!({"idempotency_key": "deploy-42"});

    let first = app.trigger(JOB_OK, &body).await;
    let second = app.trigger(JOB_OK, &body).await;
    let by_header = app
        .send(
            app.client
                .post(app.url(&format!("/v1/jobs/{JOB_OK}/runs")))
                .header("Idempotency-Key", "deploy-42"),
        )
        .await;
    let other_params = app
        .trigger(
            JOB_OK,
            &json!({"idempotency_key": "deploy-42", "parameters": {"git_sha": "abc"}}),
        )
        .await;
    let other_key = app
        .trigger(JOB_OK, &json!({"idempotency_key": "deploy-43"}))
        .await;

    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(by_header.status, StatusCode::OK);
    let id = |r: &Reply| r.json()["run"]["run_id"].as_str().unwrap().to_owned();
    assert_eq!(id(&first), id(&second));
    assert_eq!(id(&first), id(&by_header));
    other_params.assert_error(422, "idempotency_key_reused");
    assert_eq!(other_key.status, StatusCode::CREATED);
    assert_ne!(id(&other_key), id(&first));
    assert_eq!(app.sim.builds().len(), 2);
    assert_eq!(app.sim.trigger_requests(), 2);
}

#[tokio::test]
async fn concurrent_triggers_with_one_key_make_one_build() {
    let app = spawn_app().await;
    let body = json!({"idempotency_key": "race-1"});

    let replies = futures_util::future::join_all((0..8).map(|_| app.trigger(JOB_OK, &body))).await;

    let ids: std::collections::BTreeSet<String> = replies
        .iter()
        .map(|r| {
            assert!(
                r.status == StatusCode::CREATED || r.status == StatusCode::OK,
                "{}",
                r.body
            );
            r.json()["run"]["run_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(
        replies
            .iter()
            .filter(|r| r.status == StatusCode::CREATED)
            .count(),
        1
    );
    assert_eq!(app.sim.builds().len(), 1);
}

#[tokio::test]
async fn an_idle_stream_gets_heartbeat_comments() {
    let app = spawn_app_with(
        world(),
        Options {
            heartbeat_secs: 1,
            ..Options::default()
        },
    )
    .await;
    let run_id = app.trigger_ok(JOB_PAUSED).await;

    // Read raw bytes: the SSE parser hides comments.
    let mut response = app
        .client
        .get(app.url(&format!("/v1/runs/{run_id}/events")))
        .bearer_auth(CALLER_TOKEN)
        .send()
        .await
        .unwrap();
    let mut seen = String::new();
    while !seen.contains("\n:") && !seen.starts_with(':') {
        let chunk = tokio::time::timeout(PATIENCE, response.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }

    assert!(seen.contains("event: status"), "{seen}");
    assert_eq!(app.run(&run_id).await["status"], "queued");
}

#[tokio::test]
async fn many_watchers_share_one_upstream_event_stream() {
    let app = spawn_app().await;
    let run_id = app.trigger_ok(JOB_LONG).await;

    let watchers = (0..25).map(|_| app.events_until_end(&run_id));
    let seen = futures_util::future::join_all(watchers).await;

    for events in &seen {
        assert_whole_long_run(events.clone());
    }
    assert_eq!(
        app.sim.event_stream_requests(),
        1,
        "one upstream stream for 25 watchers"
    );
}
