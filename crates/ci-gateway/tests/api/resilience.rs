//! Expiring tokens, an unreachable Concourse, restarts, and catalog changes.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn runs_complete_while_the_concourse_token_expires_every_two_seconds() {
    let app = spawn_app_with(
        world().token_ttl(Duration::from_secs(2)),
        Options::default(),
    )
    .await;
    let logins_at_start = app.sim.logins();

    let first = app.trigger_ok(JOB_LONG).await;
    let mut reader = app.open_events(&first, None).await;
    // "step 3" is written about 3 s after the start: the first token has expired by then.
    reader.until(|e| e.data["line"] == "step 3").await;
    let ready = app.get("/readyz").await;
    let second = app.trigger_ok(JOB_OK).await;
    let first_events = reader.until_end().await;
    let second_events = app.events_until_end(&second).await;

    assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);
    assert_eq!(statuses(&first_events).last().unwrap(), "succeeded");
    assert_eq!(statuses(&second_events).last().unwrap(), "succeeded");
    assert_eq!(app.sim.trigger_requests(), 2, "no trigger sent twice");
    assert_eq!(app.sim.builds().len(), 2);
    assert!(
        app.sim.logins() > logins_at_start,
        "the gateway logged in again"
    );
}

#[tokio::test]
async fn an_unreachable_concourse_gives_503_and_stores_nothing() {
    let app = spawn_app().await;
    let done = app.trigger_ok(JOB_OK).await;
    app.events_until_end(&done).await;
    let runs_before = app.db.count("ci_run").await;
    // Stop the simulator: its port now refuses connections.
    app.sim.stop();

    let reply = app
        .trigger(JOB_OK, &json!({"idempotency_key": "while-down"}))
        .await;
    let ready = app.get("/readyz").await;

    reply.assert_error(503, "provider_unavailable");
    ready.assert_error(503, "not_ready");
    assert_eq!(app.db.count("ci_run").await, runs_before);
    assert_eq!(
        app.run(&done).await["status"],
        "succeeded",
        "finished runs stay readable"
    );
}

#[tokio::test]
async fn a_run_in_flight_survives_a_gateway_restart_without_lost_or_repeated_events() {
    let app = spawn_app().await;
    let run_id = app.trigger_ok(JOB_LONG).await;
    let mut reader = app.open_events(&run_id, None).await;
    let before = reader.until(|e| e.data["line"] == "step 2").await;
    let (sim, db) = app.stop().await;

    let app = start_gateway(sim, db, Options::default())
        .await
        .expect("restart");
    let mut reader = app
        .open_events(&run_id, Some(&before.last().unwrap().id))
        .await;
    let after = reader.until_end().await;

    assert_whole_long_run(before.into_iter().chain(after).collect());
    assert_eq!(app.sim.trigger_requests(), 1);
}

#[tokio::test]
async fn a_job_removed_from_the_catalog_is_hidden_but_its_runs_stay_readable() {
    let app = spawn_app().await;
    let run_id = app.trigger_ok(JOB_FAIL).await;
    app.events_until_end(&run_id).await;
    let (sim, db) = app.stop().await;
    let jobs: Vec<_> = jobs()
        .into_iter()
        .filter(|j| j.job_id != JOB_FAIL)
        .collect();

    let app = start_gateway(
        sim,
        db,
        Options {
            jobs,
            ..Options::default()
        },
    )
    .await
    .expect("restart");

    let listed = app.get("/v1/jobs").await.json();
    assert!(
        listed["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["job_id"] != JOB_FAIL)
    );
    app.trigger(JOB_FAIL, &json!({}))
        .await
        .assert_error(404, "job_not_found");
    assert_eq!(app.run(&run_id).await["status"], "failed");
    assert_eq!(
        statuses(&app.events_until_end(&run_id).await),
        ["queued", "running", "failed"]
    );
}

#[tokio::test]
async fn start_up_fails_fast_with_a_clear_message_on_bad_credentials() {
    let sim = std::sync::Arc::new(concourse_sim::Simulator::start(world()).await.unwrap());
    let db = std::sync::Arc::new(TestDb::new().await);

    let err = start_gateway(
        sim,
        db,
        Options {
            password: "wrong-canary-pw".into(),
            ..Options::default()
        },
    )
    .await
    .err()
    .expect("must not start");

    let message = format!("{err:#}");
    assert!(message.contains("provider ci"), "{message}");
    assert!(!message.contains("wrong-canary-pw"), "{message}");
}

#[tokio::test]
async fn start_up_refuses_a_user_without_a_role_that_can_trigger() {
    use concourse_sim::{Pipeline, Role, Team, User, World};
    let world = World::new()
        .user(User::new(USERNAME, PASSWORD).role(TEAM, Role::Viewer))
        .team(Team::new(TEAM).pipeline(Pipeline::new(PIPELINE)));
    let sim = std::sync::Arc::new(concourse_sim::Simulator::start(world).await.unwrap());
    let db = std::sync::Arc::new(TestDb::new().await);

    let err = start_gateway(
        sim,
        db,
        Options {
            jobs: Vec::new(),
            ..Options::default()
        },
    )
    .await
    .err()
    .expect("must not start");

    let message = format!("{err:#}");
    assert!(message.contains("viewer"), "{message}");
}

#[tokio::test]
async fn names_with_reserved_characters_reach_the_right_upstream_job() {
    use concourse_sim::{Job, Pipeline, Script, Team};
    const ODD_PIPELINE: &str = "pay ments+v2 %?#&é";
    const ODD_JOB: &str = "build+test/ü";
    let world = world().team(
        Team::new(TEAM).pipeline(
            Pipeline::new(ODD_PIPELINE)
                .job(Job::new(ODD_JOB, Script::new().log_out("odd\n").succeed())),
        ),
    );
    let mut jobs = jobs();
    jobs.push(job_settings("job_odd", ODD_PIPELINE, ODD_JOB));

    let app = spawn_app_with(
        world,
        Options {
            jobs,
            ..Options::default()
        },
    )
    .await;
    let run_id = app.trigger_ok("job_odd").await;
    let events = app.events_until_end(&run_id).await;

    assert_eq!(lines(&events, "stdout"), ["odd"]);
    let builds = app.sim.builds();
    assert_eq!(
        (builds[0].pipeline.as_str(), builds[0].job.as_str()),
        (ODD_PIPELINE, ODD_JOB)
    );
}

#[tokio::test]
async fn racing_triggers_of_a_job_concourse_refuses_all_get_the_refusal() {
    let app = spawn_app().await;
    let body = json!({"idempotency_key": "refused-race"});

    let replies =
        futures_util::future::join_all((0..30).map(|_| app.trigger(JOB_DISABLED, &body))).await;

    for reply in &replies {
        reply.assert_error(409, "job_not_triggerable");
    }
    assert_eq!(app.db.count("ci_run").await, 0);
    assert!(app.sim.builds().is_empty());
}

#[tokio::test]
async fn a_run_whose_build_vanished_upstream_ends_unknown_and_cannot_be_canceled() {
    let app = spawn_app().await;
    let run_id = app.trigger_ok(JOB_SLOW).await;
    let mut reader = app.open_events(&run_id, None).await;
    reader.until(|e| e.event == "log").await;

    // The ATC comes back on the same address without the build (say, a fresh database).
    app.sim.stop();
    let addr = app.sim.addr();
    let mut restarted = None;
    for _ in 0..100 {
        match concourse_sim::Simulator::start_on(addr, world()).await {
            Ok(sim) => {
                restarted = Some(sim);
                break;
            }
            // The old listener closes asynchronously.
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let _sim = restarted.expect("the simulator restarts on its address");
    let rest = reader.until_end().await;

    assert_eq!(rest.last().unwrap().data, json!({"status": "unknown"}));
    let run = app.run(&run_id).await;
    assert_eq!(
        (run["status"].as_str(), run["terminal"].as_bool()),
        (Some("unknown"), Some(true))
    );
    app.cancel(&run_id)
        .await
        .assert_error(409, "run_already_finished");
}
