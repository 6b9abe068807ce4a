//! The build event stream: SSE frames from `GET /api/v1/builds/{id}/events` turned into
//! [`EventBatch`]es.
//!
//! Concourse frames every build event as `event: event` with a JSON envelope
//! `{"data":{..},"event":"<type>","version":"M.m","event_id":"N"}` and finishes with `event: end`
//! (then keeps the connection open until the client leaves). [`Decoder`] is the pure part: it
//! maps one envelope to gateway events and keeps, per log origin, the text after the last `\n`.
//! [`batches`] drives it from the HTTP body and closes the connection at `end`.
//!
//! Resume state (the [`EventBatch::resume`] JSON):
//! `{"last_event_id": <i64 or null>, "partial_lines": [{"origin_id", "source", "text"}]}`.
//! Reconnecting with `Last-Event-ID: last_event_id` and these buffers continues the text exactly.

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::wire::{map_build_status, unix_time};
use crate::domain::LogStream;
use crate::provider::{EventBatch, EventStream, ProviderError, ProviderEvent};

/// A partial line longer than this is emitted as a line of its own, so that output without any
/// `\n` (progress bars redrawn with `\r`) cannot grow memory and the resume state without bound.
pub(super) const MAX_PARTIAL_LINE: usize = 64 * 1024;

/// The text of one log origin after its last `\n`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PartialLine {
    /// The step's plan id (`origin.id`; for log v4, `origin.name`).
    origin_id: String,
    /// `origin.source` as Concourse wrote it (`stdout`, `stderr`, or empty).
    source: String,
    /// The unfinished line.
    text: String,
}

/// The resume state, as serialized into [`EventBatch::resume`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResumeState {
    /// The id of the last upstream event consumed; `None` before the first.
    last_event_id: Option<i64>,
    /// Unfinished lines, in the order their origins first wrote.
    #[serde(default)]
    partial_lines: Vec<PartialLine>,
}

/// Turns envelopes into gateway events, keeping partial lines between them.
#[derive(Debug, Default)]
pub(super) struct Decoder {
    state: ResumeState,
}

/// The envelope of an `event: event` frame.
#[derive(Debug, Deserialize)]
struct Envelope {
    event: String,
    version: String,
    #[serde(default)]
    event_id: Option<String>,
    #[serde(default)]
    data: Value,
}

#[derive(Debug, Default, Deserialize)]
struct Origin {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    source: Option<String>,
}

#[derive(Debug, Deserialize)]
struct LogV5 {
    #[serde(default)]
    origin: Origin,
    #[serde(default)]
    payload: String,
}

/// Log events written by ATCs before v5 (`atc/event/deprecated_events.go`).
#[derive(Debug, Deserialize)]
struct LogV4 {
    #[serde(default)]
    origin: OriginV4,
    #[serde(default)]
    payload: String,
}

#[derive(Debug, Default, Deserialize)]
struct OriginV4 {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    source: Option<String>,
}

#[derive(Debug, Deserialize)]
struct StatusV1 {
    status: String,
    #[serde(default)]
    time: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct ErrorV4 {
    #[serde(default)]
    message: String,
}

impl Decoder {
    /// Starts from the beginning (`None`) or from a resume value of an earlier batch.
    ///
    /// # Errors
    /// [`ProviderError::InvalidRef`] when the resume value is not one this adapter wrote.
    pub fn new(resume: Option<&Value>) -> Result<Decoder, ProviderError> {
        let state = match resume {
            None | Some(Value::Null) => ResumeState::default(),
            Some(value) => serde_json::from_value(value.clone()).map_err(|e| {
                ProviderError::InvalidRef(format!("Concourse event resume state is malformed: {e}"))
            })?,
        };
        Ok(Decoder { state })
    }

    /// The id to send as `Last-Event-ID`, if any event was consumed.
    pub fn last_event_id(&self) -> Option<i64> {
        self.state.last_event_id
    }

    /// The current resume value.
    pub fn resume(&self) -> Value {
        serde_json::to_value(&self.state).unwrap_or(Value::Null)
    }

    /// Handles one `event: event` frame: its SSE `id:` and `data:`.
    pub fn on_event(&mut self, sse_id: &str, data: &str) -> Vec<ProviderEvent> {
        let envelope: Envelope = match serde_json::from_str(data) {
            Ok(e) => e,
            Err(e) => {
                // Skipping (rather than failing) keeps a reconnect from looping on the same frame.
                tracing::warn!(sse_id, error = %e, "unreadable Concourse event envelope; skipped");
                self.advance(sse_id.trim().parse().ok());
                return Vec::new();
            }
        };
        let id = sse_id
            .trim()
            .parse::<i64>()
            .ok()
            .or_else(|| envelope.event_id.as_deref().and_then(|s| s.parse().ok()));
        self.advance(id);
        let mut out = Vec::new();
        let major = envelope.version.split('.').next().unwrap_or("");
        match (envelope.event.as_str(), major) {
            ("status", "1") => match serde_json::from_value::<StatusV1>(envelope.data) {
                Ok(s) => out.push(ProviderEvent::Status {
                    status: map_build_status(&s.status),
                    at: unix_time(s.time),
                }),
                Err(e) => tracing::warn!(error = %e, "unreadable Concourse status event; skipped"),
            },
            ("log", "5") => match serde_json::from_value::<LogV5>(envelope.data) {
                Ok(log) => self.push_log(
                    log.origin.id.unwrap_or_default(),
                    log.origin.source.unwrap_or_default(),
                    &log.payload,
                    &mut out,
                ),
                Err(e) => tracing::warn!(error = %e, "unreadable Concourse log event; skipped"),
            },
            ("log", "4") => match serde_json::from_value::<LogV4>(envelope.data) {
                Ok(log) => self.push_log(
                    log.origin.name.unwrap_or_default(),
                    log.origin.source.unwrap_or_default(),
                    &log.payload,
                    &mut out,
                ),
                Err(e) => tracing::warn!(error = %e, "unreadable Concourse log v4 event; skipped"),
            },
            ("error", "4") => match serde_json::from_value::<ErrorV4>(envelope.data) {
                Ok(err) => {
                    let message = err.message.strip_suffix('\n').unwrap_or(&err.message);
                    out.extend(message.split('\n').map(|line| ProviderEvent::Log {
                        stream: LogStream::Stderr,
                        line: line.to_owned(),
                    }));
                }
                Err(e) => tracing::warn!(error = %e, "unreadable Concourse error event; skipped"),
            },
            (kind, _) => {
                tracing::trace!(kind, version = %envelope.version, "Concourse event ignored");
            }
        }
        out
    }

    /// Handles `event: end`: flushes every partial line, in the order the origins first wrote.
    pub fn finish(&mut self) -> Vec<ProviderEvent> {
        std::mem::take(&mut self.state.partial_lines)
            .into_iter()
            .filter(|p| !p.text.is_empty())
            .map(|p| ProviderEvent::Log {
                stream: stream_of(&p.source),
                line: p.text,
            })
            .collect()
    }

    fn advance(&mut self, id: Option<i64>) {
        match id {
            Some(id) => self.state.last_event_id = Some(id),
            None => tracing::warn!("Concourse event without a usable id; resume may repeat it"),
        }
    }

    fn push_log(
        &mut self,
        origin_id: String,
        source: String,
        payload: &str,
        out: &mut Vec<ProviderEvent>,
    ) {
        let stream = stream_of(&source);
        let partials = &mut self.state.partial_lines;
        let index = match partials
            .iter()
            .position(|p| p.origin_id == origin_id && p.source == source)
        {
            Some(i) => i,
            None => {
                partials.push(PartialLine {
                    origin_id,
                    source,
                    text: String::new(),
                });
                partials.len() - 1
            }
        };
        let buffer = &mut partials[index].text;
        buffer.push_str(payload);
        if let Some(last_newline) = buffer.rfind('\n') {
            let rest = buffer.split_off(last_newline + 1);
            let complete = std::mem::replace(buffer, rest);
            let complete = &complete[..last_newline];
            out.extend(complete.split('\n').map(|line| ProviderEvent::Log {
                stream,
                line: line.to_owned(),
            }));
        }
        while buffer.len() > MAX_PARTIAL_LINE {
            let mut cut = MAX_PARTIAL_LINE;
            while !buffer.is_char_boundary(cut) {
                cut -= 1;
            }
            let rest = buffer.split_off(cut);
            let line = std::mem::replace(buffer, rest);
            out.push(ProviderEvent::Log { stream, line });
        }
        if buffer.is_empty() {
            partials.remove(index);
        }
    }
}

fn stream_of(source: &str) -> LogStream {
    if source == "stderr" {
        LogStream::Stderr
    } else {
        LogStream::Stdout
    }
}

/// Reads the SSE body of an events response, one [`EventBatch`] per upstream event.
///
/// The stream ends after the `end` batch (dropping the response closes the connection, which
/// Concourse never does itself) or after an `Err`: a transport failure, or the body ending before
/// `end`, is [`ProviderError::Unavailable`]; the caller reconnects with the last resume value.
pub(super) fn batches(response: reqwest::Response, decoder: Decoder, build_id: i64) -> EventStream {
    let sse = Box::pin(response.bytes_stream().eventsource());
    futures_util::stream::unfold(Some((sse, decoder)), move |state| async move {
        let (mut sse, mut decoder) = state?;
        loop {
            match sse.next().await {
                Some(Ok(frame)) => match frame.event.as_str() {
                    "event" => {
                        let events = decoder.on_event(&frame.id, &frame.data);
                        let batch = EventBatch {
                            events,
                            resume: decoder.resume(),
                            end: false,
                        };
                        return Some((Ok(batch), Some((sse, decoder))));
                    }
                    "end" => {
                        let events = decoder.finish();
                        // Close the connection now: Concourse keeps it open after `end`.
                        drop(sse);
                        tracing::debug!(build_id, "Concourse build event stream ended");
                        let batch = EventBatch {
                            events,
                            resume: decoder.resume(),
                            end: true,
                        };
                        return Some((Ok(batch), None));
                    }
                    other => {
                        tracing::debug!(
                            build_id,
                            name = other,
                            "unexpected SSE event name; ignored"
                        );
                    }
                },
                Some(Err(e)) => {
                    let message = format!(
                        "Concourse event stream of build {build_id} broke after event {:?}: {e}",
                        decoder.last_event_id()
                    );
                    tracing::warn!(build_id, error = %e, "Concourse event stream broke");
                    return Some((Err(ProviderError::Unavailable(message)), None));
                }
                None => {
                    let message = format!(
                        "Concourse event stream of build {build_id} closed before its end event \
                         (last event {:?})",
                        decoder.last_event_id()
                    );
                    tracing::warn!(build_id, "Concourse event stream closed before end");
                    return Some((Err(ProviderError::Unavailable(message)), None));
                }
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope(kind: &str, version: &str, id: i64, data: Value) -> String {
        json!({"data": data, "event": kind, "version": version, "event_id": id.to_string()})
            .to_string()
    }

    fn log(id: &str, source: &str, payload: &str) -> Value {
        json!({"time": 1, "origin": {"id": id, "source": source}, "payload": payload})
    }

    fn out(stream: LogStream, line: &str) -> ProviderEvent {
        ProviderEvent::Log {
            stream,
            line: line.to_owned(),
        }
    }

    #[test]
    fn a_chunk_ending_in_newline_leaves_no_partial_and_empty_lines_survive() {
        let mut d = Decoder::default();
        let events = d.on_event(
            "0",
            &envelope("log", "5.1", 0, log("a", "stdout", "x\n\ny\n")),
        );
        assert_eq!(
            events,
            [
                out(LogStream::Stdout, "x"),
                out(LogStream::Stdout, ""),
                out(LogStream::Stdout, "y")
            ]
        );
        assert_eq!(d.resume(), json!({"last_event_id": 0, "partial_lines": []}));
    }

    #[test]
    fn over_long_partial_lines_are_cut_on_a_char_boundary() {
        let mut d = Decoder::default();
        let text = "é".repeat(MAX_PARTIAL_LINE); // two bytes each
        let mut events = d.on_event("0", &envelope("log", "5.1", 0, log("a", "stdout", &text)));
        assert_eq!(
            events.len(),
            1,
            "one full-size piece cut off, the rest kept"
        );
        events.extend(d.finish());
        let pieces: Vec<&str> = events
            .iter()
            .map(|e| match e {
                ProviderEvent::Log { line, .. } => line.as_str(),
                ProviderEvent::Status { .. } => "",
            })
            .collect();
        assert_eq!(pieces.len(), 2);
        assert!(pieces.iter().all(|p| p.len() == MAX_PARTIAL_LINE));
        assert_eq!(pieces.concat(), text);

        // An odd cut point lands inside a two-byte char and moves back to its start.
        let mut d = Decoder::default();
        let text = format!("x{}", "é".repeat(MAX_PARTIAL_LINE / 2));
        let events = d.on_event("0", &envelope("log", "5.1", 0, log("a", "stdout", &text)));
        assert!(
            matches!(&events[..], [ProviderEvent::Log { line, .. }] if line.len() == MAX_PARTIAL_LINE - 1)
        );
        assert!(matches!(&d.finish()[..], [ProviderEvent::Log { line, .. }] if line == "é"));
    }

    #[test]
    fn log_v4_is_read_by_origin_name_and_sse_id_falls_back_to_event_id() {
        let mut d = Decoder::default();
        let data = json!({"origin": {"name": "build", "type": "task", "source": "stdout"}, "payload": "old\n"});
        let events = d.on_event("", &envelope("log", "4.0", 9, data));
        assert_eq!(events, [out(LogStream::Stdout, "old")]);
        assert_eq!(d.last_event_id(), Some(9));
    }

    #[test]
    fn a_malformed_resume_value_is_an_invalid_ref() {
        let err = Decoder::new(Some(&json!({"cursor": 3}))).unwrap_err();
        assert!(matches!(err, ProviderError::InvalidRef(_)), "{err:?}");
    }
}
