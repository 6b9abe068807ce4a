//! Following a run's event stream: reconnects with `Last-Event-ID` when the stream drops, and
//! never hands the same event over twice.

use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::Value;

use super::client::{ApiClient, CliError};

/// How many reconnections in a row may fail (no event in between) before giving up.
const MAX_RETRIES: u32 = 8;

/// The wait before reconnection `attempt` (1-based): 200 ms, doubling, at most 5 s.
fn backoff(attempt: u32) -> Duration {
    let ms = 200u64.saturating_mul(1 << attempt.saturating_sub(1).min(5));
    Duration::from_millis(ms.min(5_000))
}

/// One event of a run's stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEvent {
    /// The SSE id.
    pub id: String,
    /// `status`, `log` or `end` (others are passed on, for newer gateways).
    pub event: String,
    /// The event's JSON data.
    pub data: Value,
}

impl StreamEvent {
    /// The event as one JSON line: `{"id", "event", "data"}`.
    pub fn to_json(&self) -> Value {
        serde_json::json!({ "id": self.id, "event": self.event, "data": self.data })
    }
}

/// How a follow ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The run finished with this status (the `end` event).
    Finished(String),
    /// Nothing arrived for the idle time given to [`follow`].
    Idle,
}

/// Reads the events of `run_id` from the start, calling `on_event` once per event in order,
/// until the `end` event (which is handed over too) or, with `idle`, until nothing arrived for
/// that long.
///
/// When the stream drops or cannot be opened for a transient reason it reopens it after a short
/// backoff with `Last-Event-ID`, and skips any event whose id it has already handed over.
///
/// # Errors
/// A non-transient API error (e.g. `run_not_found`), or [`MAX_RETRIES`] failed reconnections
/// in a row.
pub async fn follow(
    client: &ApiClient,
    run_id: &str,
    idle: Option<Duration>,
    mut on_event: impl FnMut(&StreamEvent),
) -> Result<Ended, CliError> {
    // The id of the last event handed over, as sent and as a number for comparisons.
    let mut last: Option<(String, i64)> = None;
    let mut failures = 0u32;
    loop {
        let error = match client
            .open_events(run_id, last.as_ref().map(|(id, _)| id.as_str()))
            .await
        {
            Err(e) if !e.is_transient() => return Err(e),
            Err(e) => e,
            Ok(response) => {
                let mut stream = response.bytes_stream().eventsource();
                loop {
                    let next = match idle {
                        Some(idle) => match tokio::time::timeout(idle, stream.next()).await {
                            Ok(next) => next,
                            Err(_) => return Ok(Ended::Idle),
                        },
                        None => stream.next().await,
                    };
                    let event = match next {
                        None => break CliError::Network("the event stream closed early".into()),
                        Some(Err(e)) => break CliError::Network(format!("event stream: {e}")),
                        Some(Ok(event)) => event,
                    };
                    let data: Value = serde_json::from_str(&event.data)
                        .map_err(|e| CliError::Protocol(format!("event data is not JSON: {e}")))?;
                    let event = StreamEvent {
                        id: event.id,
                        event: event.event,
                        data,
                    };
                    failures = 0;
                    if event.event == "end" {
                        on_event(&event);
                        let status = event.data["status"].as_str().unwrap_or("unknown");
                        return Ok(Ended::Finished(status.to_owned()));
                    }
                    let seq = event.id.parse::<i64>().ok();
                    if let (Some(seq), Some((_, last_seq))) = (seq, &last)
                        && seq <= *last_seq
                    {
                        continue; // Already handed over before a reconnection.
                    }
                    if let Some(seq) = seq {
                        last = Some((event.id.clone(), seq));
                    }
                    on_event(&event);
                }
            }
        };
        failures += 1;
        if failures > MAX_RETRIES {
            return Err(error);
        }
        tracing::debug!(error = %error, attempt = failures, "event stream dropped; reconnecting");
        tokio::time::sleep(backoff(failures)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::extract::State;
    use axum::http::HeaderMap;
    use axum::response::sse::{Event, Sse};
    use axum::routing::get;

    use super::*;
    use crate::cli::client::parse_server;

    #[test]
    fn backoff_starts_short_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(2), Duration::from_millis(400));
        assert_eq!(backoff(40), Duration::from_secs(5));
    }

    /// A server whose first stream drops after three events and whose second one (wrongly)
    /// repeats an event before going on: the follower must resume and skip the repeat.
    #[tokio::test]
    async fn a_dropped_stream_is_resumed_with_last_event_id_without_repeats() {
        // Arrange
        let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
        async fn events(
            State(seen): State<Arc<Mutex<Vec<Option<String>>>>>,
            headers: HeaderMap,
        ) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
            let last = headers
                .get("last-event-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let first = {
                // A test mutex, held for a push.
                let mut seen = seen.lock().expect("BUG: poisoned");
                seen.push(last);
                seen.len() == 1
            };
            let log = |id: u32, line: &str| {
                Event::default()
                    .id(id.to_string())
                    .event("log")
                    .data(format!(r#"{{"stream":"stdout","line":"{line}"}}"#))
            };
            let events = if first {
                vec![
                    Event::default()
                        .id("0")
                        .event("status")
                        .data(r#"{"status":"running"}"#),
                    log(1, "one"),
                    log(2, "two"),
                ]
            } else {
                vec![
                    log(2, "two"),
                    log(3, "three"),
                    Event::default()
                        .id("4")
                        .event("end")
                        .data(r#"{"status":"succeeded"}"#),
                ]
            };
            Sse::new(futures_util::stream::iter(events.into_iter().map(Ok)))
        }
        let app = Router::new()
            .route("/v1/runs/{id}/events", get(events))
            .with_state(Arc::clone(&seen));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let server = parse_server(&format!("http://{addr}")).expect("url");
        let client = ApiClient::new(server, None).expect("client");

        // Act
        let mut got = Vec::new();
        let ended = follow(&client, "run_x", None, |e| got.push(e.id.clone())).await;

        // Assert
        assert_eq!(
            ended.expect("followed"),
            Ended::Finished("succeeded".into())
        );
        assert_eq!(got, ["0", "1", "2", "3", "4"]);
        let seen = seen.lock().expect("BUG: poisoned").clone();
        assert_eq!(seen, [None, Some("2".to_owned())]);
    }
}
