//! The event-stream relay: an SSE response body that inspects events until
//! the first content event, retries pre-content errors on a fresh upstream
//! request while the client keeps the same stream, then pipes frame by frame.
//!
//! After the first content event nothing is parsed or copied: frames go from
//! upstream to the client as they are.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::time::{Instant, Sleep};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::HeaderMap;
use serde_json::{json, Value};

use crate::app::App;
use crate::forward::attempts::{Journey, Settled};
use crate::forward::outcome::{classify, error_object, Verdict};
use crate::keys::Outcome;
use crate::stream::sse::{classify_event, event_len, Event};

type Retry = Pin<Box<dyn Future<Output = (Journey, Settled)> + Send>>;

enum Mode {
    /// Before the first content event: events are looked at.
    Inspecting,
    /// After it: frames are piped untouched.
    Piping,
    /// Waiting for a retry to produce a new upstream stream.
    Retrying(Retry),
    /// One last chunk (usually a final error event), then the end.
    Last(Bytes),
    Done,
}

/// An SSE response body with pre-content error retries.
pub struct SseRelay {
    mode: Mode,
    upstream: Option<Incoming>,
    /// Pre-content bytes not yet forwarded (at most one partial event plus comments).
    pending: BytesMut,
    journey: Option<Journey>,
    key: usize,
    /// Kept apart from the journey (which a retry borrows) for the open-streams gauge.
    app: Arc<App>,
    /// Fires `STREAM_IDLE_TIMEOUT` after the last upstream frame; re-armed lazily, not per frame.
    idle: Option<Pin<Box<Sleep>>>,
    last_frame: Instant,
}

impl Drop for SseRelay {
    fn drop(&mut self) {
        self.app.metrics.open_streams.fetch_sub(1, Relaxed);
    }
}

impl SseRelay {
    #[must_use]
    pub fn new(upstream: Incoming, key: usize, journey: Journey) -> Self {
        let app = Arc::clone(journey.app());
        app.metrics.open_streams.fetch_add(1, Relaxed);
        let idle_after = app.config.stream_idle_timeout;
        let idle = (!idle_after.is_zero()).then(|| Box::pin(tokio::time::sleep(idle_after)));
        SseRelay {
            mode: Mode::Inspecting,
            upstream: Some(upstream),
            pending: BytesMut::new(),
            journey: Some(journey),
            key,
            app,
            idle,
            last_frame: Instant::now(),
        }
    }

    /// Looks at newly arrived pre-content bytes; returns what to forward now.
    fn inspect(&mut self, data: &Bytes) -> Option<Bytes> {
        self.pending.extend_from_slice(data);
        let mut comments = 0;
        while let Some(len) = event_len(&self.pending[comments..]) {
            match classify_event(&self.pending[comments..comments + len]) {
                Event::Comment => comments += len,
                Event::Content => return Some(self.start_piping(Outcome::Success)),
                Event::Error(error) => {
                    let verdict = classify(200, &HeaderMap::new(), Some(&error));
                    if verdict == Verdict::Success {
                        return Some(self.start_piping(Outcome::Success));
                    }
                    let forwarded = self.pending.split_to(comments).freeze();
                    if !self.retry(verdict) {
                        // Retries are over: the client gets the upstream error event as it came.
                        let rest = self.pending.split().freeze();
                        self.mode = Mode::Piping;
                        return Some(if forwarded.is_empty() {
                            rest
                        } else {
                            [forwarded, rest].concat().into()
                        });
                    }
                    return non_empty(forwarded);
                }
            }
        }
        non_empty(self.pending.split_to(comments).freeze())
    }

    fn start_piping(&mut self, outcome: Outcome) -> Bytes {
        // No retry can follow content: let the request body and headers go now rather
        // than hold them for the rest of a possibly hours-long stream.
        if let Some(journey) = self.journey.take() {
            journey.record(self.key, outcome);
        }
        self.mode = Mode::Piping;
        let rest = self.pending.split().freeze();
        self.pending = BytesMut::new();
        rest
    }

    /// Plans a retry after `verdict`; false when no retry is allowed.
    fn retry(&mut self, verdict: Verdict) -> bool {
        let Some(mut journey) = self.journey.take() else {
            return false;
        };
        let Some(delay) = journey.plan(self.key, verdict) else {
            self.journey = Some(journey);
            return false;
        };
        self.upstream = None; // drop the failed stream's connection now
        self.pending.clear();
        self.mode = Mode::Retrying(Box::pin(async move {
            tokio::time::sleep(delay).await;
            let settled = journey.settle().await;
            (journey, settled)
        }));
        true
    }

    /// Continues with whatever the retry produced.
    fn resume(&mut self, settled: Settled) {
        self.mode = match settled {
            Settled::Stream { key, response } => {
                self.key = key;
                self.upstream = Some(response.into_body());
                // The idle clock restarts with the new stream: the retry's own wait is not silence.
                self.last_frame = Instant::now();
                Mode::Inspecting
            }
            Settled::Answer(response) => {
                let status = response.status().as_u16();
                // Only a whole (held) body can carry an error object worth passing on.
                let held = response.into_body();
                let body = if held.rest.is_none() {
                    held.bytes
                } else {
                    Bytes::new()
                };
                let error = error_object(&body).unwrap_or_else(|| json!({"code": status, "message": "OpenRouter answered the retry without a stream"}));
                Mode::Last(error_event(&error))
            }
            Settled::Failed(err) => Mode::Last(error_event(
                &json!({"code": err.status().as_u16(), "message": err.message()}),
            )),
        };
    }
}

impl SseRelay {
    /// True once `STREAM_IDLE_TIMEOUT` has passed since the last upstream frame.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(sleep) = self.idle.as_mut() else {
            return false;
        };
        while sleep.as_mut().poll(cx).is_ready() {
            // Checked: a timeout too far ahead for the clock never expires.
            let Some(deadline) = self
                .last_frame
                .checked_add(self.app.config.stream_idle_timeout)
            else {
                return false;
            };
            if deadline <= Instant::now() {
                return true;
            }
            sleep.as_mut().reset(deadline);
        }
        false
    }
}

fn non_empty(bytes: Bytes) -> Option<Bytes> {
    (!bytes.is_empty()).then_some(bytes)
}

/// One SSE event carrying an OpenRouter-shaped error, so clients' SSE parsers report it.
fn error_event(error: &Value) -> Bytes {
    format!("data: {}\n\n", json!({ "error": error })).into()
}

impl Body for SseRelay {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        loop {
            match &mut this.mode {
                Mode::Done => return Poll::Ready(None),
                Mode::Last(bytes) => {
                    let last = std::mem::take(bytes);
                    this.mode = Mode::Done;
                    return Poll::Ready(Some(Ok(Frame::data(last))));
                }
                Mode::Retrying(retry) => {
                    let Poll::Ready((journey, settled)) = retry.as_mut().poll(cx) else {
                        return Poll::Pending;
                    };
                    this.journey = Some(journey);
                    this.resume(settled);
                }
                Mode::Piping | Mode::Inspecting => {
                    let Some(upstream) = this.upstream.as_mut() else {
                        this.mode = Mode::Done;
                        continue;
                    };
                    let Poll::Ready(frame) = Pin::new(upstream).poll_frame(cx) else {
                        if this.idle_expired(cx) {
                            let after = this.app.config.stream_idle_timeout.as_secs();
                            let message = format!(
                                "OpenRouter sent nothing for {after} s (STREAM_IDLE_TIMEOUT)"
                            );
                            this.upstream = None;
                            this.mode =
                                Mode::Last(error_event(&json!({"code": 504, "message": message})));
                            continue;
                        }
                        return Poll::Pending;
                    };
                    this.last_frame = Instant::now();
                    let inspecting = matches!(this.mode, Mode::Inspecting);
                    match frame {
                        Some(Ok(frame)) if !inspecting => return Poll::Ready(Some(Ok(frame))),
                        Some(Ok(frame)) => {
                            if let Some(out) =
                                frame.into_data().ok().and_then(|data| this.inspect(&data))
                            {
                                return Poll::Ready(Some(Ok(Frame::data(out))));
                            }
                        }
                        Some(Err(_))
                            if inspecting
                                && this.retry(Verdict::Broken {
                                    nothing_generated: true,
                                }) => {}
                        Some(Err(_)) => {
                            let error =
                                json!({"code": 502, "message": "the OpenRouter stream broke off"});
                            this.mode = Mode::Last(error_event(&error));
                        }
                        None => {
                            let rest = this.pending.split().freeze();
                            this.mode = if rest.is_empty() {
                                Mode::Done
                            } else {
                                Mode::Last(rest)
                            };
                        }
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.mode, Mode::Done)
    }
}
