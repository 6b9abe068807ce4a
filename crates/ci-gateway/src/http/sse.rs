//! `GET /v1/runs/{run_id}/events`: a run's events over Server-Sent Events.
//!
//! The stream reads the run's stored events after the caller's `Last-Event-ID` (all of them
//! without one) from the store, then takes new ones as this process's ingester hands them over
//! on the bus, and polls the store briefly for those another replica stored. It ends with the
//! `end` event once the run is over. A comment heartbeat keeps idle connections alive through
//! proxies.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::header::{CACHE_CONTROL, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use super::AppState;
use super::error::ApiError;
use super::extract::PathParam;
use super::handlers::load_run;
use crate::bus::Batch;
use crate::domain::{RunId, TenantId};
use crate::runs::RunService;
use crate::store::{EventKind, EventRecord};

/// How many stored events one read takes.
const PAGE: i64 = 500;

/// How often an idle stream looks for events stored by another replica.
const POLL: Duration = Duration::from_secs(1);

/// Reads `Last-Event-ID`: the id of the last event the caller has, so the stream starts after it.
fn last_event_id(headers: &HeaderMap) -> Result<i64, ApiError> {
    let mut values = headers.get_all("last-event-id").iter();
    let Some(value) = values.next() else {
        return Ok(-1);
    };
    if values.next().is_some() {
        return Err(ApiError::InvalidRequest(
            "give one Last-Event-ID header".to_owned(),
        ));
    }
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<i64>().ok())
        .filter(|id| *id >= -1)
        .ok_or_else(|| ApiError::InvalidRequest("Last-Event-ID must be an event id".to_owned()))
}

/// The handler.
#[tracing::instrument(skip_all, fields(run_id = %run_id, caller))]
pub async fn run_events(
    State(state): State<AppState>,
    caller: crate::auth::Caller,
    PathParam(run_id): PathParam,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller.record_in_span();
    caller.require(crate::auth::Scope::RunsRead)?;
    let after = last_event_id(&headers)?;
    let run = load_run(&state, &caller, &run_id).await?;
    // Subscribe before the first read, so nothing stored in between goes unnoticed.
    let live = state.runs.bus.subscribe(run.run_id);
    let tail = Tail {
        runs: Arc::clone(&state.runs),
        tenant: caller.tenant.clone(),
        run_id: run.run_id,
        cursor: after,
        pending: VecDeque::new(),
        live: Some(live),
        caught_up: false,
        done: false,
    };
    let stream = futures_util::stream::unfold(tail, |mut tail| async move {
        let event = tail.next().await?;
        Some((Ok::<_, Infallible>(event), tail))
    });
    metrics::counter!("ci_gateway_event_streams_total").increment(1);
    let sse = Sse::new(stream).keep_alive(KeepAlive::new().interval(state.server.sse_heartbeat()));
    let mut response = sse.into_response();
    let h = response.headers_mut();
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// One caller's position in a run's events.
struct Tail {
    runs: Arc<RunService>,
    tenant: TenantId,
    run_id: RunId,
    /// The last event sent.
    cursor: i64,
    /// Read, not yet sent.
    pending: VecDeque<EventRecord>,
    /// Batches this process stores for the run; `None` once the channel closed.
    live: Option<broadcast::Receiver<Batch>>,
    /// Everything stored up to the last read has been queued: wait for news.
    caught_up: bool,
    /// The `end` event was sent.
    done: bool,
}

fn to_sse(e: &EventRecord) -> Event {
    Event::default()
        .id(e.seq.to_string())
        .event(e.kind.as_str())
        .data(e.data.to_string())
}

impl Tail {
    /// The next event to send; `None` ends the stream (run over, shutdown, or store failure —
    /// the caller reconnects with `Last-Event-ID`).
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                self.cursor = e.seq;
                self.done = e.kind == EventKind::End;
                return Some(to_sse(&e));
            }
            if self.done {
                return None;
            }
            if !self.caught_up {
                match self.read_store().await {
                    Ok(true) => continue,
                    Ok(false) => self.caught_up = true,
                    Err(e) => {
                        tracing::warn!(error = %e, "event stream: cannot read the store");
                        return None;
                    }
                }
            }
            let shutdown = self.runs.shutdown.clone();
            tokio::select! {
                () = shutdown.cancelled() => return None,
                received = async {
                    match &mut self.live {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => match received {
                    Ok(batch) => self.take(&batch),
                    // Fell behind the channel: the store has everything.
                    Err(RecvError::Lagged(_)) => self.caught_up = false,
                    Err(RecvError::Closed) => {
                        self.live = None;
                        self.caught_up = false;
                    }
                },
                () = tokio::time::sleep(POLL) => self.caught_up = false,
            }
        }
    }

    /// Queues the events of a live batch that follow the cursor; a gap (the batch starts
    /// further on) sends the tail back to the store.
    fn take(&mut self, batch: &Batch) {
        let fresh = batch.iter().filter(|e| e.seq > self.cursor);
        for (expected, e) in (self.cursor + 1..).zip(fresh) {
            if e.seq != expected {
                self.pending.clear();
                self.caught_up = false;
                return;
            }
            self.pending.push_back(e.clone());
        }
    }

    /// Reads the store after the cursor; returns whether it queued anything.
    async fn read_store(&mut self) -> Result<bool, crate::store::StoreError> {
        let store = &self.runs.store;
        let events = store.events_after(self.run_id, self.cursor, PAGE).await?;
        if !events.is_empty() {
            self.pending.extend(events);
            return Ok(true);
        }
        // The caller may already hold the end (it resumed after it): repeat it and close.
        match store.end_event(self.run_id).await? {
            Some(end) if end.seq <= self.cursor => {
                self.pending.push_back(end);
                Ok(true)
            }
            // Stored since the read above: read again.
            Some(_) => Ok(true),
            // A run withdrawn after its trigger was refused never ends: close its stream.
            None if store.get_run(&self.tenant, self.run_id).await?.is_none() => {
                self.done = true;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}
