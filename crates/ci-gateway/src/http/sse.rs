//! `GET /v1/runs/{run_id}/events`: a run's events over Server-Sent Events.
//!
//! The stream reads the run's stored events after the caller's `Last-Event-ID` (all of them
//! without one) from the store, then takes new ones as this process's ingester hands them over
//! on the bus, and polls the store briefly for those another replica stored. It ends with the
//! `end` event once the run is over. A comment heartbeat keeps idle connections alive through
//! proxies.

use std::borrow::Cow;
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
use utoipa::openapi::schema::{Object, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{PartialSchema, ToSchema};

use super::AppState;
use super::error::ApiError;
use super::extract::PathParam;
use super::handlers::load_run;
use super::views::{EndEventData, ErrorBody, LogEventData, StatusEventData};
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

/// What the OpenAPI document says about the stream's events.
pub const EVENTS_DESCRIPTION: &str = "A `text/event-stream` of the run's events, oldest first. \
Each event has an `id` (its position, for `Last-Event-ID`), an `event` type and JSON `data`:\n\n\
- `status`: the run's status changed; data is `StatusEventData`, e.g. `{\"status\":\"running\"}`.\n\
- `log`: one line of output without its newline; data is `LogEventData`, e.g. \
`{\"stream\":\"stdout\",\"line\":\"test result: ok\"}`.\n\
- `end`: the last event, the run is over; data is `EndEventData`, e.g. \
`{\"status\":\"succeeded\"}`. The server closes the stream after it.\n\n\
Comment lines (`:`) are heartbeats. A stream that closes without `end` (shutdown, failure) \
is resumed by reconnecting with `Last-Event-ID`.";

/// One event of the stream as a client parses it: its `id`, `event` and `data` fields.
///
/// Documented as the schema of the `text/event-stream` response, which OpenAPI 3.1 reads as the
/// shape of each event (3.2 would say `itemSchema`); `data` is JSON text whose schema depends
/// on the event type (`contentMediaType` + `contentSchema`).
pub struct RunEventDoc;

impl RunEventDoc {
    fn variant(event: &str, data: &str, what: &str) -> Object {
        let id = ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "The event's position in the run, for `Last-Event-ID`.",
            ))
            .pattern(Some("^[0-9]+$"));
        let name = ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some([event]));
        let payload = ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(what))
            .content_media_type("application/json")
            .content_schema(Some(Ref::from_schema_name(data)));
        ObjectBuilder::new()
            .property("id", id)
            .required("id")
            .property("event", name)
            .required("event")
            .property("data", payload)
            .required("data")
            .build()
    }
}

impl PartialSchema for RunEventDoc {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(Self::variant(
                "status",
                "StatusEventData",
                "The run's new status.",
            ))
            .item(Self::variant(
                "log",
                "LogEventData",
                "One line of output, without its newline.",
            ))
            .item(Self::variant(
                "end",
                "EndEventData",
                "The final status; the last event of the stream.",
            ))
            .description(Some("One Server-Sent Event of a run's stream."))
            .into()
    }
}

impl ToSchema for RunEventDoc {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("RunEvent")
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((StatusEventData::name().into(), StatusEventData::schema()));
        schemas.push((LogEventData::name().into(), LogEventData::schema()));
        schemas.push((EndEventData::name().into(), EndEventData::schema()));
        <StatusEventData as ToSchema>::schemas(schemas);
        <LogEventData as ToSchema>::schemas(schemas);
        <EndEventData as ToSchema>::schemas(schemas);
    }
}

/// The handler.
#[utoipa::path(
    get,
    path = "/v1/runs/{run_id}/events",
    tag = "runs",
    summary = "Follow a run's status and logs (Server-Sent Events)",
    description = "Replays the run's stored events after `Last-Event-ID` (all of them without \
        it), then follows new ones until the `end` event. See the 200 response for the event types.",
    params(
        ("run_id" = String, Path, pattern = r"^run_[0-9A-HJKMNP-TV-Z]{26}$",
            description = "The run's id, `run_` + ULID."),
        ("Last-Event-ID" = Option<i64>, Header, minimum = -1,
            description = "The `id` of the last event the caller has: the stream starts after it."),
    ),
    responses(
        (status = 200, description = EVENTS_DESCRIPTION, content_type = "text/event-stream", body = RunEventDoc),
        (status = 400, description = "`invalid_request`: `Last-Event-ID` is not an event id.", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or bad credentials.", body = ErrorBody),
        (status = 403, description = "`forbidden`: the caller lacks the scope (or the project).", body = ErrorBody),
        (status = 404, description = "`run_not_found`.", body = ErrorBody),
        (status = 500, description = "`internal`.", body = ErrorBody),
        (status = 503, description = "`store_unavailable`.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
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
