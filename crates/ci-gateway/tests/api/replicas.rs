//! Two gateway processes on one database and one simulator.

use std::process::Stdio;
use std::sync::Arc;

use concourse_sim::Simulator;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::helpers::*;

/// A `ci-gateway serve` process.
struct Replica {
    child: Child,
    /// The replica's name in leases.
    id: String,
    app: TestApp,
}

/// Writes a config for `sim` and `db` and starts `ci-gateway serve` on it.
async fn start_replica(sim: &Arc<Simulator>, db: &Arc<TestDb>) -> Replica {
    let password_file = db.dir.path().join("password");
    std::fs::write(&password_file, PASSWORD).unwrap();
    let mut config = format!(
        "listen = \"127.0.0.1:0\"\n[database]\nurl = \"{}\"\n[cluster]\nlease_ttl_secs = 2\n\
         [providers.ci]\nkind = \"concourse\"\nurl = \"{}\"\nteam = \"{TEAM}\"\nusername = \"{USERNAME}\"\n\
         password_file = \"{}\"\n\
         [[auth.tokens]]\nname = \"{CALLER}\"\nsha256 = \"{}\"\n\
         scopes = [\"jobs:read\", \"runs:read\", \"runs:trigger\", \"runs:cancel\"]\n",
        db.url,
        sim.url(),
        password_file.display(),
        ci_gateway::auth::token_digest(CALLER_TOKEN),
    );
    for (id, job) in [(JOB_LONG, "long"), (JOB_SLOW, "integration")] {
        config.push_str(&format!(
            "[[jobs]]\njob_id = \"{id}\"\nproject = \"payments\"\ndisplay_name = \"{job}\"\n\
             provider = \"ci\"\nbinding = {{ pipeline = \"{PIPELINE}\", job = \"{job}\" }}\n"
        ));
    }
    let path = db
        .dir
        .path()
        .join(format!("replica-{}.toml", ulid::Ulid::generate()));
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ci-gateway"))
        .args(["serve", "--config"])
        .arg(&path)
        .env("CI_GATEWAY_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start ci-gateway serve");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let ready: Value = tokio::time::timeout(PATIENCE, async {
        let mut seen = Vec::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && v["message"] == "gateway ready"
            {
                return v;
            }
            seen.push(line);
        }
        panic!(
            "the replica exited before it was ready:\n{}",
            seen.join("\n")
        );
    })
    .await
    .expect("replica ready in time");
    // Keep draining its log so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let addr = format!("http://{}", ready["addr"].as_str().unwrap());
    let app = TestApp::remote(addr, Arc::clone(sim), Arc::clone(db));
    Replica {
        child,
        id: ready["replica"].as_str().unwrap().to_owned(),
        app,
    }
}

async fn two_replicas() -> (Replica, Replica) {
    init_logs();
    let sim = Arc::new(
        Simulator::start(world().token_ttl(std::time::Duration::from_secs(60)))
            .await
            .unwrap(),
    );
    let db = Arc::new(TestDb::new().await);
    // Both start at the same moment on an empty database: both migrate it, safely.
    tokio::join!(start_replica(&sim, &db), start_replica(&sim, &db))
}

fn id_and_data(events: &[SseEvent]) -> Vec<(String, String, Value)> {
    events
        .iter()
        .map(|e| (e.id.clone(), e.event.clone(), e.data.clone()))
        .collect()
}

#[tokio::test]
async fn a_run_triggered_on_one_replica_is_watched_and_canceled_on_the_other() {
    let (a, b) = two_replicas().await;

    let run_id = a.app.trigger_ok(JOB_LONG).await;
    let on_b = b.app.events_until_end(&run_id);
    let on_a = a.app.events_until_end(&run_id);
    let (on_a, on_b) = tokio::join!(on_a, on_b);
    let slow = a.app.trigger_ok(JOB_SLOW).await;
    let mut watcher = a.app.open_events(&slow, None).await;
    watcher.until(|e| e.event == "log").await;
    let cancel = b.app.cancel(&slow).await;
    let rest = watcher.until_end().await;

    assert_eq!(id_and_data(&on_a), id_and_data(&on_b));
    assert_contiguous_ids(&on_a);
    assert_eq!(
        lines(&on_a, "stdout"),
        ["step 1", "step 2", "step 3", "step 4"]
    );
    assert_eq!(b.app.run(&run_id).await["status"], "succeeded");
    assert_eq!(cancel.status.as_u16(), 202, "{}", cancel.body);
    assert_eq!(statuses(&rest), ["canceled"]);
}

#[tokio::test]
async fn one_idempotency_key_sent_to_both_replicas_at_once_makes_one_build() {
    let (a, b) = two_replicas().await;
    let body = json!({"idempotency_key": "both-at-once"});

    let (ra, rb) = tokio::join!(
        a.app.trigger(JOB_LONG, &body),
        b.app.trigger(JOB_LONG, &body)
    );

    let id = |r: &Reply| r.json()["run"]["run_id"].as_str().unwrap().to_owned();
    assert_eq!(id(&ra), id(&rb));
    let mut codes = [ra.status.as_u16(), rb.status.as_u16()];
    codes.sort_unstable();
    assert_eq!(codes, [200, 201]);
    assert_eq!(a.app.sim.builds().len(), 1);
}

#[tokio::test]
async fn when_the_lease_holder_dies_the_other_replica_takes_its_runs_and_the_lease() {
    let (a, b) = two_replicas().await;
    let (mut holder, survivor) = {
        // The first replica to renew holds the maintenance lease; find out which.
        let lease_holder = wait_for_lease_holder(&a.app.db, None).await;
        if lease_holder == a.id { (a, b) } else { (b, a) }
    };
    let run_id = holder.app.trigger_ok(JOB_LONG).await;
    let mut watcher = survivor.app.open_events(&run_id, None).await;
    let before = watcher.until(|e| e.data["line"] == "step 1").await;

    holder.child.kill().await.expect("kill the lease holder");
    let after = watcher.until_end().await;
    let new_holder = wait_for_lease_holder(&survivor.app.db, Some(&holder.id)).await;

    assert_whole_long_run(before.into_iter().chain(after).collect());
    assert_eq!(new_holder, survivor.id);
    assert_eq!(survivor.app.sim.trigger_requests(), 1);
}

/// Waits until the maintenance lease has a holder other than `not`, and returns it.
async fn wait_for_lease_holder(db: &TestDb, not: Option<&str>) -> String {
    tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(holder) = db.lease_holder("maintenance").await
                && Some(holder.as_str()) != not
            {
                return holder;
            }
            // The lease is renewed every ttl/3 (under a second here); look again shortly.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("a lease holder in time")
}
