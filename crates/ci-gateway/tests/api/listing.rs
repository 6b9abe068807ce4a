//! Listing runs (filters, keyset paging under concurrent inserts), long-polling a run until it
//! is terminal, and the run's `reason`.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::helpers::*;

impl TestApp {
    /// `GET /v1/runs` with a query, asserting 200; returns the body.
    async fn list_runs(&self, query: &[(&str, &str)]) -> Value {
        let reply = self
            .send(self.client.get(self.url(&format!("/v1/runs{}", qs(query)))))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{query:?}: {}", reply.body);
        reply.json()
    }

    /// `GET /v1/runs/{run_id}` with a query.
    async fn get_run_with(&self, run_id: &str, query: &[(&str, &str)]) -> Reply {
        self.get(&format!("/v1/runs/{run_id}{}", qs(query))).await
    }
}

/// A query string (`?a=1&b=2`), percent-encoded; empty for no pairs.
fn qs(query: &[(&str, &str)]) -> String {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    let pairs: Vec<String> = query
        .iter()
        .map(|(k, v)| format!("{k}={}", utf8_percent_encode(v, NON_ALPHANUMERIC)))
        .collect();
    if pairs.is_empty() {
        String::new()
    } else {
        format!("?{}", pairs.join("&"))
    }
}

fn ids(body: &Value) -> Vec<String> {
    body["runs"]
        .as_array()
        .expect("runs array")
        .iter()
        .map(|r| r["run_id"].as_str().expect("run_id").to_owned())
        .collect()
}

fn now_rfc3339() -> String {
    OffsetDateTime::now_utc().format(&Rfc3339).expect("format")
}

#[tokio::test]
async fn runs_are_listed_newest_first_with_the_default_page() {
    // Arrange
    let app = spawn_app().await;
    let a = app.trigger_ok(JOB_PAUSED).await;
    let b = app.trigger_ok(JOB_PAUSED).await;
    let c = app.trigger_ok(JOB_SLOW).await;

    // Act
    let body = app.list_runs(&[]).await;

    // Assert
    assert_eq!(ids(&body), [c.clone(), b, a]);
    assert_eq!(body["next_cursor"], Value::Null);
    let first = &body["runs"][0];
    assert_eq!(first["job_id"], JOB_SLOW);
    assert_eq!(first["links"]["self"], format!("/v1/runs/{c}"));
    assert!(first.get("reason").is_some(), "{first}");
}

#[tokio::test]
async fn paging_skips_and_repeats_no_run_while_runs_are_created_concurrently() {
    // Arrange: runs that exist before the listing starts.
    let app = Arc::new(spawn_app().await);
    let mut before = Vec::new();
    for i in 0..10 {
        let job = if i % 2 == 0 { JOB_PAUSED } else { JOB_SLOW };
        before.push(app.trigger_ok(job).await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (app, stop) = (Arc::clone(&app), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut made = 0;
            while !stop.load(Ordering::Relaxed) && made < 30 {
                app.trigger_ok(JOB_PAUSED).await;
                made += 1;
            }
            made
        })
    };

    // Act: page through with a small limit, creating a run between every two pages as well.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut query = vec![("limit", "3")];
        if let Some(c) = &cursor {
            query.push(("cursor", c.as_str()));
        }
        let body = app.list_runs(&query).await;
        let page = ids(&body);
        assert!(page.len() <= 3, "{body}");
        seen.extend(page);
        pages += 1;
        app.trigger_ok(JOB_PAUSED).await;
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        assert!(pages < 100, "paging does not end");
    }
    stop.store(true, Ordering::Relaxed);
    let made = writer.await.expect("writer task");

    // Assert
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a run was listed twice: {seen:?}");
    for id in &before {
        assert!(unique.contains(id), "{id} was skipped: {seen:?}");
    }
    assert!(pages >= 4, "{pages} pages");
    assert!(
        made > 0 || pages > 4,
        "no run was created during the listing"
    );
}

#[tokio::test]
async fn runs_can_be_filtered_by_job_status_and_creation_time() {
    // Arrange
    let app = spawn_app().await;
    let done = app.trigger_ok(JOB_OK).await;
    let finished = app
        .get_run_with(&done, &[("wait_for", "terminal"), ("timeout", "60s")])
        .await;
    assert_eq!(finished.json()["run"]["status"], "succeeded");
    tokio::time::sleep(Duration::from_millis(30)).await;
    let middle = now_rfc3339();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let q1 = app.trigger_ok(JOB_PAUSED).await;
    let q2 = app.trigger_ok(JOB_PAUSED).await;
    let past = "2000-01-01T00:00:00Z";
    let future = "2999-01-01T00:00:00+02:00";

    // Act + Assert
    let by_job = app.list_runs(&[("job_id", JOB_PAUSED)]).await;
    assert_eq!(ids(&by_job), [q2.clone(), q1.clone()]);
    let by_status = app.list_runs(&[("status", "succeeded")]).await;
    assert_eq!(ids(&by_status), vec![done.clone()]);
    let both = app
        .list_runs(&[("status", "queued"), ("job_id", JOB_OK)])
        .await;
    assert!(ids(&both).is_empty());
    let after = app.list_runs(&[("created_after", middle.as_str())]).await;
    assert_eq!(ids(&after), [q2.clone(), q1.clone()]);
    let before = app.list_runs(&[("created_before", middle.as_str())]).await;
    assert_eq!(ids(&before), vec![done.clone()]);
    let window = app
        .list_runs(&[("created_after", past), ("created_before", future)])
        .await;
    assert_eq!(ids(&window), [q2, q1, done]);
    assert!(ids(&app.list_runs(&[("created_after", future)]).await).is_empty());
    assert!(ids(&app.list_runs(&[("created_before", past)]).await).is_empty());
    assert!(ids(&app.list_runs(&[("job_id", "job_nope")]).await).is_empty());
}

#[tokio::test]
async fn bad_listing_queries_get_400_invalid_request() {
    let app = spawn_app().await;
    app.trigger_ok(JOB_PAUSED).await;
    let garbage_cursor = "bm90IGEgY3Vyc29y";
    for query in [
        "status=pending",
        "status=",
        "created_after=yesterday",
        "created_before=2026-13-01T00:00:00Z",
        "created_after=2026-12-03",
        "cursor=!!!",
        &format!("cursor={garbage_cursor}"),
        "limit=0",
        "limit=201",
        "limit=-1",
        "limit=ten",
        "limit=1&limit=2",
        "colour=blue",
    ] {
        let reply = app.get(&format!("/v1/runs?{query}")).await;
        reply.assert_error(400, "invalid_request");
    }
    // The bounds themselves are fine.
    assert_eq!(ids(&app.list_runs(&[("limit", "200")]).await).len(), 1);
    assert_eq!(ids(&app.list_runs(&[("limit", "1")]).await).len(), 1);
}

#[tokio::test]
async fn a_long_poll_returns_as_soon_as_the_run_is_terminal() {
    // Arrange
    let app = spawn_app().await;
    let run_id = app.trigger_ok(JOB_OK).await;
    let started = Instant::now();

    // Act
    let reply = app
        .get_run_with(&run_id, &[("wait_for", "terminal"), ("timeout", "60s")])
        .await;

    // Assert: it answered because the run ended, long before the timeout.
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let run = &reply.json()["run"];
    assert_eq!(run["terminal"], true, "{run}");
    assert_eq!(run["status"], "succeeded");
    assert_eq!(run["reason"], Value::Null);
    assert!(started.elapsed() < Duration::from_secs(45));
}

#[tokio::test]
async fn a_long_poll_on_a_run_that_stays_queued_returns_it_at_the_timeout() {
    // Arrange
    let app = spawn_app().await;
    let run_id = app.trigger_ok(JOB_PAUSED).await;
    let started = Instant::now();

    // Act
    let reply = app
        .get_run_with(&run_id, &[("wait_for", "terminal"), ("timeout", "1s")])
        .await;

    // Assert
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let run = &reply.json()["run"];
    assert_eq!(run["status"], "queued", "{run}");
    assert_eq!(run["terminal"], false);
    assert_eq!(run["reason"], "awaiting_start");
    assert!(started.elapsed() >= Duration::from_millis(900));
    // Other spellings of a short wait.
    for timeout in ["200ms", "0", "1"] {
        let reply = app
            .get_run_with(&run_id, &[("wait_for", "terminal"), ("timeout", timeout)])
            .await;
        assert_eq!(reply.json()["run"]["status"], "queued", "{timeout}");
    }
}

#[tokio::test]
async fn bad_long_poll_queries_get_400_and_unknown_runs_404() {
    let app = spawn_app().await;
    let run_id = app.trigger_ok(JOB_PAUSED).await;
    for query in [
        vec![("wait_for", "forever")],
        vec![("timeout", "5s")],
        vec![("wait_for", "terminal"), ("timeout", "abc")],
        vec![("wait_for", "terminal"), ("timeout", "-1s")],
        vec![("wait_for", "terminal"), ("timeout", "5h")],
        vec![("wait_for", "terminal"), ("timeout", "")],
        vec![("colour", "blue")],
    ] {
        app.get_run_with(&run_id, &query)
            .await
            .assert_error(400, "invalid_request");
    }
    app.get_run_with(
        "run_01ARZ3NDEKTSV4RRFFQ69G5FAV",
        &[("wait_for", "terminal"), ("timeout", "5s")],
    )
    .await
    .assert_error(404, "run_not_found");
}

#[tokio::test]
async fn the_reason_says_why_a_run_is_in_its_status() {
    // Arrange
    let app = spawn_app().await;
    let queued = app.trigger_ok(JOB_PAUSED).await;
    let failing = app.trigger_ok(JOB_FAIL).await;
    let wait = [("wait_for", "terminal"), ("timeout", "60s")];

    // Act
    let accepted = app.cancel(&queued).await;
    let canceled = app.get_run_with(&queued, &wait).await.json();
    let failed = app.get_run_with(&failing, &wait).await.json();

    // Assert
    assert_eq!(accepted.status, StatusCode::ACCEPTED, "{}", accepted.body);
    let reason = &accepted.json()["run"]["reason"];
    assert!(
        reason == &json!("cancel_requested") || reason == &json!("canceled_by_caller"),
        "{reason}"
    );
    assert_eq!(canceled["run"]["status"], "canceled");
    assert_eq!(canceled["run"]["reason"], "canceled_by_caller");
    assert_eq!(failed["run"]["status"], "failed");
    assert_eq!(failed["run"]["reason"], "job_failed");
}
