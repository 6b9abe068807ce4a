//! `GET /api/v1/builds/:id/events`: the build event stream in the ATC's exact SSE framing.
//!
//! Faithful to the ATC's quirks: no response (not even headers) until there is a first frame
//! to send; after `end` the body never finishes (only the client or shutdown ends it); no
//! keepalive; `Last-Event-ID: n` resumes at `n + 1`; gzip with a sync flush per frame when the
//! client accepts it. The body is hand-framed rather than built with `axum::response::Sse`,
//! whose framing differs (`event: end\ndata\n\n` needs a bare `data` line).

use std::convert::Infallible;
use std::io::Write;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use flate2::Compression;
use flate2::write::GzEncoder;
use futures_util::StreamExt;
use tokio::sync::watch;

use crate::api::find_build;
use crate::auth::Caller;
use crate::http::{ApiError, empty};
use crate::state::Shared;
use crate::world::Role;

/// A reader's position in one build's event log.
struct EventCursor {
    /// Simulator state.
    shared: Arc<Shared>,
    /// Index of the build.
    index: usize,
    /// Id of the next event to send.
    next: usize,
    /// Wakes the reader when the build's events change.
    changed: watch::Receiver<()>,
    /// Compressor, when the client accepted gzip.
    gzip: Option<GzEncoder<Vec<u8>>>,
    /// Whether the `end` frame was sent.
    ended: bool,
}

impl EventCursor {
    /// Waits until there is something to send and returns it as one body chunk. `None` ends
    /// the body (shutdown, or the build vanished).
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if self.ended {
                // Like the ATC: hold the connection open after `end` until the client leaves.
                self.shared.shutdown.cancelled().await;
                return None;
            }
            // Mark the current version seen *before* reading, so a change made after the read
            // below still wakes `changed()`.
            let _ = self.changed.borrow_and_update();
            let mut frames = Vec::new();
            {
                let world = self.shared.lock();
                let build = world.builds.get(self.index)?;
                for (id, event) in build.events.iter().enumerate().skip(self.next) {
                    frames.push(format!("id: {id}\nevent: event\ndata: {event}\n\n"));
                }
                self.next = self.next.max(build.events.len());
                if build.completed {
                    frames.push(format!("id: {}\nevent: end\ndata\n\n", build.events.len()));
                    self.ended = true;
                }
            }
            if !frames.is_empty() {
                return self.encode(&frames);
            }
            tokio::select! {
                changed = self.changed.changed() => changed.ok()?,
                () = self.shared.shutdown.cancelled() => return None,
            }
        }
    }

    /// Encodes frames, compressing and sync-flushing after each one when gzip is on.
    fn encode(&mut self, frames: &[String]) -> Option<Bytes> {
        let Some(encoder) = self.gzip.as_mut() else {
            return Some(Bytes::from(frames.concat()));
        };
        for frame in frames {
            encoder.write_all(frame.as_bytes()).ok()?;
            // `flush` on flate2's writer performs a zlib sync flush: the client can decode
            // everything sent so far.
            encoder.flush().ok()?;
        }
        Some(Bytes::from(std::mem::take(encoder.get_mut())))
    }
}

/// True if `Accept-Encoding` lists gzip with a non-zero quality.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let zero_q = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            coding.eq_ignore_ascii_case("gzip") && !zero_q
        })
}

/// `GET /api/v1/builds/:id/events`.
pub(crate) async fn build_events(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    shared
        .event_stream_requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (index, changed) = {
        let world = shared.lock();
        let (index, team, _) = find_build(&world, &uri)?;
        // Jobs are never public in the simulator, so even public pipelines need a viewer here.
        Caller::from_headers(&shared, &headers).require(&shared, &team, Role::Viewer)?;
        let build = world.builds.get(index).ok_or(ApiError::NotFound)?;
        (index, build.changed.subscribe())
    };
    let next = match headers.get("last-event-id") {
        None => 0,
        Some(value) => {
            let last = value
                .to_str()
                .ok()
                .and_then(|v| v.parse::<i64>().ok())
                .ok_or(ApiError::BadRequest)?;
            usize::try_from(last.saturating_add(1)).unwrap_or(0)
        }
    };
    let gzip = accepts_gzip(&headers);
    let mut cursor = EventCursor {
        shared,
        index,
        next,
        changed,
        gzip: gzip.then(|| GzEncoder::new(Vec::new(), Compression::default())),
        ended: false,
    };
    // The ATC writes no headers before the first event, so neither do we.
    let Some(first) = cursor.next_chunk().await else {
        return Ok(empty(StatusCode::SERVICE_UNAVAILABLE));
    };
    let rest = futures_util::stream::unfold(cursor, |mut cursor| async move {
        let chunk = cursor.next_chunk().await?;
        Some((Ok::<Bytes, Infallible>(chunk), cursor))
    });
    let body =
        futures_util::stream::once(async move { Ok::<Bytes, Infallible>(first) }).chain(rest);
    let mut response = (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream; charset=utf-8"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("no-cache, no-store, must-revalidate"),
            ),
        ],
        Body::from_stream(body),
    )
        .into_response();
    let response_headers = response.headers_mut();
    response_headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response_headers.insert("x-atc-stream-version", HeaderValue::from_static("2.0"));
    if gzip {
        response_headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        response_headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_is_accepted_unless_its_quality_is_zero() {
        let mut headers = HeaderMap::new();
        assert!(!accepts_gzip(&headers));
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("br, gzip"),
        );
        assert!(accepts_gzip(&headers));
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip;q=0"),
        );
        assert!(!accepts_gzip(&headers));
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        assert!(!accepts_gzip(&headers));
    }
}
