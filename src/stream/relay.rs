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
use tokio::time::Sleep;

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame};
use hyper::header::HeaderMap;
use hyper::StatusCode;
use serde_json::{json, Value};

use crate::app::App;
use crate::error::{error_body, NO_FIRST_TOKEN};
use crate::forward::attempts::INSPECT_LIMIT;
use crate::forward::attempts::{Journey, Settled, Trail};
use crate::forward::outcome::{classify, error_object, Verdict};
use crate::forward::pool::UpstreamBody;
use crate::keys::Outcome;
use crate::stream::accounted::Ended;
use crate::stream::body::BodyError;
use crate::stream::idle_watch::IdleWatch;
use crate::stream::sse::{classify_event, event_len_from, Event};

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
    upstream: Option<UpstreamBody>,
    /// Pre-content bytes not yet forwarded (at most one partial event plus comments).
    pending: BytesMut,
    /// How much of the partial event in `pending` has been scanned for its end already.
    scanned: usize,
    journey: Option<Journey>,
    /// Kept apart from the journey (which a retry borrows) for the open-streams gauge.
    app: Arc<App>,
    /// `STREAM_IDLE_TIMEOUT` after the last upstream frame.
    idle: Option<IdleWatch>,
    /// Fires `FIRST_TOKEN_TIMEOUT` after the attempt was sent, unless a data event came first.
    first_token: Option<Pin<Box<Sleep>>>,
    /// How the relay itself ended the stream, if it did.
    ended: Option<Ended>,
    /// When the first content event arrived.
    content_at: Option<std::time::Instant>,
    /// The key that served the content and the attempts it took, kept when the journey goes.
    served: Option<Trail>,
}

impl Drop for SseRelay {
    fn drop(&mut self) {
        self.app.metrics.open_streams.fetch_sub(1, Relaxed);
    }
}

impl SseRelay {
    #[must_use]
    pub fn new(upstream: UpstreamBody, journey: Journey) -> Self {
        let app = Arc::clone(journey.app());
        app.metrics.open_streams.fetch_add(1, Relaxed);
        let idle = IdleWatch::new(app.config.stream_idle_timeout);
        let first_token = journey
            .first_token_deadline()
            .map(|deadline| Box::pin(tokio::time::sleep_until(deadline)));
        SseRelay {
            first_token,
            ended: None,
            content_at: None,
            served: None,
            mode: Mode::Inspecting,
            upstream: Some(upstream),
            pending: BytesMut::new(),
            scanned: 0,
            journey: Some(journey),
            app,
            idle,
        }
    }

    /// Looks at newly arrived pre-content bytes; returns what to forward now.
    fn inspect(&mut self, data: &Bytes) -> Option<Bytes> {
        self.pending.extend_from_slice(data);
        let mut comments = 0;
        let mut resume = self.scanned.saturating_sub(3);
        while let Some(len) = event_len_from(&self.pending[comments..], resume) {
            resume = 0;
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
        let forwarded = self.pending.split_to(comments).freeze();
        self.scanned = self.pending.len();
        if self.pending.len() > INSPECT_LIMIT {
            // A partial event this large is no error event OpenRouter sends: stop holding
            // the stream back and pipe it untouched from here.
            let rest = self.start_piping(Outcome::Success);
            return Some(if forwarded.is_empty() {
                rest
            } else {
                [forwarded, rest].concat().into()
            });
        }
        non_empty(forwarded)
    }

    /// How the relay itself ended the stream (idle, no first token, broken upstream), if it did.
    #[must_use]
    pub fn ended(&self) -> Option<Ended> {
        self.ended
    }

    /// When the first content event arrived, if it did.
    #[must_use]
    pub fn content_at(&self) -> Option<std::time::Instant> {
        self.content_at
    }

    /// The key that served the stream (the last one tried), and the attempts made.
    #[must_use]
    pub fn served(&self) -> Option<Trail> {
        match &self.journey {
            Some(journey) => journey.served(),
            None => self.served.clone(),
        }
    }

    fn start_piping(&mut self, outcome: Outcome) -> Bytes {
        self.first_token = None;
        self.content_at = Some(std::time::Instant::now());
        // No retry can follow content: let the request body and headers go now rather
        // than hold them for the rest of a possibly hours-long stream.
        if let Some(mut journey) = self.journey.take() {
            journey.record(outcome);
            self.served = journey.served();
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
        let Some(delay) = journey.plan(verdict) else {
            self.journey = Some(journey);
            return false;
        };
        self.upstream = None; // drop the failed stream's connection now
        self.pending.clear();
        self.scanned = 0;
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
            Settled::Stream(response) => {
                self.upstream = Some(response.into_body());
                // The idle clock restarts with the new stream: the retry's own wait is not silence.
                self.touched();
                // And the new attempt has its own first-token deadline.
                let deadline = self
                    .journey
                    .as_ref()
                    .and_then(Journey::first_token_deadline);
                match (deadline, self.first_token.as_mut()) {
                    (Some(deadline), Some(sleep)) => sleep.as_mut().reset(deadline),
                    (Some(deadline), None) => {
                        self.first_token = Some(Box::pin(tokio::time::sleep_until(deadline)));
                    }
                    (None, _) => self.first_token = None,
                }
                Mode::Inspecting
            }
            Settled::Answer(response) => {
                let status = response.status();
                // Only a whole (held) body can carry an error object worth passing on.
                let held = response.into_body();
                let error = held
                    .rest
                    .is_none()
                    .then(|| error_object(&held.bytes))
                    .flatten();
                Mode::Last(error.map_or_else(
                    || error_event(status, "OpenRouter answered the retry without a stream"),
                    |error| upstream_error_event(&error),
                ))
            }
            Settled::Failed(err) => Mode::Last(error_event(err.status(), &err.message())),
        };
    }
}

/// What one poll of the relay yields to hyper.
type Polled = Poll<Option<Result<Frame<Bytes>, BodyError>>>;

impl SseRelay {
    /// Polls the upstream stream once: `Some` is what to hand to hyper, `None` means the
    /// mode changed (or a pre-content frame was held back) and the relay polls again.
    fn poll_upstream(&mut self, cx: &mut Context<'_>) -> Option<Polled> {
        let Some(upstream) = self.upstream.as_mut() else {
            self.mode = Mode::Done;
            return None;
        };
        let Poll::Ready(frame) = Pin::new(upstream).poll_frame(cx) else {
            if self.first_token_expired(cx) {
                // Abandoned (closing it upstream too) and retried like a pre-content error.
                self.upstream = None;
                if !self.retry(Verdict::NoFirstToken) {
                    self.ended = Some(Ended::FirstTokenTimeout);
                    self.mode =
                        Mode::Last(error_event(StatusCode::REQUEST_TIMEOUT, NO_FIRST_TOKEN));
                }
                return None;
            }
            if !self.idle_expired(cx) {
                return Some(Poll::Pending);
            }
            let after = self.idle.as_ref().map_or(0, IdleWatch::after_secs);
            let message = format!("OpenRouter sent nothing for {after} s (STREAM_IDLE_TIMEOUT)");
            self.upstream = None;
            self.ended = Some(Ended::IdleTimeout);
            self.mode = Mode::Last(error_event(StatusCode::GATEWAY_TIMEOUT, &message));
            return None;
        };
        self.touched();
        let inspecting = matches!(self.mode, Mode::Inspecting);
        match frame {
            Some(Ok(frame)) if !inspecting => return Some(Poll::Ready(Some(Ok(frame)))),
            Some(Ok(frame)) => {
                let out = frame
                    .into_data()
                    .ok()
                    .and_then(|data| self.inspect(&data))?;
                return Some(Poll::Ready(Some(Ok(Frame::data(out)))));
            }
            Some(Err(_))
                if inspecting
                    && self.retry(Verdict::Broken {
                        nothing_generated: true,
                    }) => {}
            Some(Err(_)) => {
                self.ended = Some(Ended::UpstreamError);
                let message = "the OpenRouter stream broke off";
                self.mode = Mode::Last(error_event(StatusCode::BAD_GATEWAY, message));
            }
            None => {
                let rest = self.pending.split().freeze();
                self.mode = if rest.is_empty() {
                    Mode::Done
                } else {
                    Mode::Last(rest)
                };
            }
        }
        None
    }

    /// True once the attempt's first-token deadline passed while events are still inspected.
    fn first_token_expired(&mut self, cx: &mut Context<'_>) -> bool {
        matches!(self.mode, Mode::Inspecting)
            && self
                .first_token
                .as_mut()
                .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready())
    }

    /// True once `STREAM_IDLE_TIMEOUT` has passed since the last upstream frame.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.idle.as_mut().is_some_and(|watch| watch.expired(cx))
    }

    fn touched(&mut self) {
        if let Some(watch) = &mut self.idle {
            watch.touched();
        }
    }
}

fn non_empty(bytes: Bytes) -> Option<Bytes> {
    (!bytes.is_empty()).then_some(bytes)
}

/// One SSE event carrying the proxy's own error in OpenRouter's shape, so clients' SSE parsers report it.
fn error_event(status: StatusCode, message: &str) -> Bytes {
    format!("data: {}\n\n", error_body(status, message)).into()
}

/// One SSE event carrying an error object OpenRouter sent, passed on as it came.
fn upstream_error_event(error: &Value) -> Bytes {
    format!("data: {}\n\n", json!({ "error": error })).into()
}

impl Body for SseRelay {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
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
                    if let Some(ready) = this.poll_upstream(cx) {
                        return ready;
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.mode, Mode::Done)
    }
}
