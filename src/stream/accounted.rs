//! Accounted when it ends, not when its headers arrive.

/// How a proxied response ended (named by [`ENDINGS`], in this order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Its last byte was sent.
    Completed,
    /// The client left before the end.
    ClientClosed,
    /// The upstream answer broke off.
    UpstreamError,
    /// OpenRouter sent nothing for `STREAM_IDLE_TIMEOUT`.
    IdleTimeout,
    /// No attempt showed a first token within `FIRST_TOKEN_TIMEOUT`.
    FirstTokenTimeout,
}

impl Ended {
    /// The name used in logs and metrics.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        ENDINGS[self as usize]
    }
}

use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use hyper::{Method, Uri};
use log::{info, log_enabled, warn, Level};

use super::body::{BodyError, ProxyBody};
use crate::app::App;
use crate::clients::admission::Ticket;
use crate::clients::Counts;
use crate::forward::route::Tried;
use crate::keys::{now_ms, KeyPool, Tally, Usage};
use crate::observe::metrics::ENDINGS;

/// The request a response answers, as the record at its end shows it.
pub struct Served {
    pub method: Method,
    pub uri: Uri,
    /// The requested model: a slice of the request body, not a copy.
    pub model: Option<Bytes>,
    /// For a model alias: the candidate that answered last, and how many were tried.
    pub tried: Option<Tried>,
    pub status: u16,
    pub started: Instant,
    /// A free-model request.
    pub free: bool,
    /// The proxy itself refused it (no key could serve in time).
    pub refused_by_proxy: bool,
    /// The pool its key came from, the key that answered (the relay may retry on another)
    /// and the attempts so far.
    pub pool: Arc<KeyPool>,
    pub key: Option<usize>,
    pub attempts: u32,
    /// How the journey itself ended the request before any body of OpenRouter's (no first
    /// token on any attempt, an answer that stalled while held, the client gone).
    pub ended_early: Option<Ended>,
    /// The client's admission (`None`: the operator's request), released at the end.
    pub ticket: Option<Ticket>,
    /// How long it waited on purpose before its response head: for its client's turn and
    /// for keys.
    pub waited: Duration,
}

/// How many bytes of a response's end are kept to find its `usage` object in: OpenRouter
/// puts it in the last event before `[DONE]`, or at the end of a JSON answer.
const TAIL: usize = 1536;

/// The last [`TAIL`] bytes that passed, in a fixed ring (no allocation per frame).
struct Tail {
    ring: [u8; TAIL],
    /// Bytes written in all; the ring's next write position is this modulo `TAIL`.
    written: usize,
}

impl Tail {
    fn push(&mut self, data: &[u8]) {
        let data = &data[data.len().saturating_sub(TAIL)..];
        let at = self.written % TAIL;
        let first = data.len().min(TAIL - at);
        self.ring[at..at + first].copy_from_slice(&data[..first]);
        self.ring[..data.len() - first].copy_from_slice(&data[first..]);
        self.written += data.len();
    }

    /// The kept bytes in order: the ring turned in place once, when the response ends.
    fn bytes(&mut self) -> &[u8] {
        if self.written <= TAIL {
            return &self.ring[..self.written];
        }
        self.ring.rotate_left(self.written % TAIL);
        self.written = TAIL;
        &self.ring
    }
}

/// The `usage` object nearest the end of `tail`, if one is there whole.
fn usage_in(tail: &[u8]) -> Option<Usage> {
    let at = memchr::memmem::rfind(tail, b"\"usage\"")?;
    let rest = &tail[at + 7..];
    let colon = rest.iter().position(|b| !b.is_ascii_whitespace())?;
    Usage::read(rest.get(colon..)?.strip_prefix(b":")?)
}

/// A proxied response body that writes the request's record when the response ends: its
/// last byte sent, the client gone, the upstream broken, or a timeout of the relay's.
pub struct Accounted {
    inner: ProxyBody,
    app: Arc<App>,
    served: Served,
    first_byte: Option<Instant>,
    bytes: u64,
    tail: Tail,
    done: bool,
}

impl Accounted {
    #[must_use]
    pub fn new(inner: ProxyBody, app: Arc<App>, served: Served) -> Self {
        Accounted {
            inner,
            app,
            served,
            first_byte: None,
            bytes: 0,
            tail: Tail {
                ring: [0; TAIL],
                written: 0,
            },
            done: false,
        }
    }

    /// Writes the record once: usage to the key and account, metrics, the log line.
    fn finish(&mut self, ended: Ended) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let ended = match (&self.inner, ended) {
            (ProxyBody::Relay(relay), Ended::Completed) => relay.ended().unwrap_or(ended),
            (_, Ended::Completed) => self.served.ended_early.unwrap_or(ended),
            _ => ended,
        };
        if let ProxyBody::Relay(relay) = &self.inner {
            if let Some(trail) = relay.served() {
                (self.served.pool, self.served.key) = (trail.pool, Some(trail.key));
                self.served.attempts = trail.attempts;
                self.served.tried = trail.tried;
            }
        }
        let usage = usage_in(self.tail.bytes()).filter(|usage| {
            let plausible = usage.plausible();
            if !plausible {
                warn!(
                    "{} {}: ignored a usage no answer can carry ({} + {} tokens, ${:.2})",
                    self.served.method,
                    self.served.uri.path(),
                    usage.prompt_tokens,
                    usage.completion_tokens,
                    usage.cost_nano as f64 / 1e9
                );
            }
            plausible
        });
        let (pool, key, now) = (&self.served.pool, self.served.key, now_ms());
        if let (Some(usage), Some(key)) = (usage, key) {
            pool.record_usage(key, usage, now);
            let tokens = usage.prompt_tokens.saturating_add(usage.completion_tokens);
            pool.tally(Some(key), Tally::Tokens, tokens, now);
        }
        let client = self.served.ticket.as_ref().map(|t| Arc::clone(&t.counts));
        if let Some(ticket) = self.served.ticket.take() {
            ticket.release(self.served.attempts > 0, usage);
        }
        pool.tally(key, Tally::Requests, 1, now);
        if self.served.free {
            pool.tally(key, Tally::FreeRequests, 1, now);
        }
        if self.served.refused_by_proxy {
            pool.tally(None, Tally::Proxy429, 1, now);
        }
        let total = self.served.started.elapsed();
        let first_content = match &self.inner {
            ProxyBody::Relay(relay) => relay.content_at(),
            _ => self.first_byte,
        };
        let metrics = &self.app.metrics;
        metrics.request_duration.0.observe(total);
        if let Some(at) = first_content {
            metrics
                .time_to_first_content
                .0
                .observe(at.saturating_duration_since(self.served.started));
        }
        metrics.ended[ended as usize].fetch_add(1, Relaxed);
        metrics.queue_wait.0.observe(self.served.waited);
        if log_enabled!(Level::Info) {
            self.log(ended, usage, total, client.as_deref());
        }
    }

    /// The one INFO line per request: no body, no full key.
    fn log(&self, ended: Ended, usage: Option<Usage>, total: Duration, client: Option<&Counts>) {
        let served = &self.served;
        let client = client.map_or("operator", |c| &*c.name);
        let pool = &served.pool;
        let key = served.key.map(|k| &pool.keys()[k]);
        let account = key.map(|k| pool.account_id(k.account()));
        let since_start = |at: Instant| at.saturating_duration_since(served.started);
        let mut line = Line(String::with_capacity(256));
        line.push(served.method.as_str());
        line.push(" ");
        line.push(served.uri.path());
        line.field("client", client);
        line.name("model");
        match &served.tried {
            Some(tried) => {
                line.push(&tried.alias);
                line.push("->");
                line.push(&tried.candidate);
                line.number("candidates", u64::from(tried.tried));
            }
            None => line.push(
                &served
                    .model
                    .as_deref()
                    .map_or("-".into(), String::from_utf8_lossy),
            ),
        }
        line.field("key", key.map_or("-", |k| k.id.as_str()));
        line.field("account", account.as_deref().unwrap_or("-"));
        line.number("attempts", u64::from(served.attempts));
        line.number("status", u64::from(served.status));
        line.field("ended", ended.as_str());
        line.millis("waited", Some(served.waited));
        line.millis("ttfb", self.first_byte.map(since_start));
        line.millis("total", Some(total));
        line.number("bytes", self.bytes);
        if let Some(usage) = usage {
            line.usage(usage);
        }
        info!("{}", line.0);
    }
}

/// The request's line, its pieces appended to one buffer. As one `info!` format string its
/// 26 literal pieces and 13 values each went through the formatter's dynamic calls, and
/// its numbers through `{:.1}`: half the line's cost (callgrind).
struct Line(String);

impl Line {
    fn push(&mut self, text: &str) {
        self.0.push_str(text);
    }

    /// ` name=`, for the value to follow.
    fn name(&mut self, name: &str) {
        self.0.push(' ');
        self.0.push_str(name);
        self.0.push('=');
    }

    /// ` name=value`.
    fn field(&mut self, name: &str, value: &str) {
        self.name(name);
        self.0.push_str(value);
    }

    fn number(&mut self, name: &str, value: u64) {
        self.name(name);
        self.decimal(value, 0);
    }

    /// ` name=12.3ms`, or ` name=-` when there is no time.
    fn millis(&mut self, name: &str, time: Option<Duration>) {
        self.name(name);
        match time {
            Some(time) => {
                let tenths = u64::try_from(time.as_micros().saturating_add(50) / 100);
                self.decimal(tenths.unwrap_or(u64::MAX), 1);
                self.0.push_str("ms");
            }
            None => self.0.push('-'),
        }
    }

    /// ` tokens=12/34 cost=0.001500` (dollars, rounded to the micro-dollar).
    fn usage(&mut self, usage: Usage) {
        self.number("tokens", usage.prompt_tokens);
        self.0.push('/');
        self.decimal(usage.completion_tokens, 0);
        self.name("cost");
        self.decimal(usage.cost_nano.saturating_add(500) / 1000, 6);
    }

    /// `value / 10^places` with exactly `places` (at most 9) decimals: `12.3`, `0.001500`.
    fn decimal(&mut self, value: u64, places: u8) {
        // 20 digits of a u64, a point, and the zeros before a value smaller than one.
        let mut text = [0u8; 30];
        let (mut at, mut rest) = (text.len(), value);
        let mut put = |digit: u8| {
            at -= 1;
            text[at] = digit;
        };
        for _ in 0..places.min(9) {
            put(b'0' + (rest % 10) as u8);
            rest /= 10;
        }
        if places > 0 {
            put(b'.');
        }
        loop {
            put(b'0' + (rest % 10) as u8);
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        self.0
            .push_str(std::str::from_utf8(&text[at..]).unwrap_or("?"));
    }
}

impl Drop for Accounted {
    fn drop(&mut self) {
        // Dropped before its end: the client went away (or its connection was closed).
        self.finish(Ended::ClientClosed);
    }
}

impl Body for Accounted {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.first_byte.get_or_insert_with(Instant::now);
                    this.bytes += data.len() as u64;
                    this.tail.push(data);
                }
                if this.inner.is_end_stream() {
                    this.finish(Ended::Completed);
                }
            }
            Poll::Ready(Some(Err(BodyError::Stalled(_)))) => this.finish(Ended::IdleTimeout),
            Poll::Ready(Some(Err(BodyError::Upstream(_)))) => this.finish(Ended::UpstreamError),
            Poll::Ready(None) => this.finish(Ended::Completed),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_keeps_the_last_bytes_in_order_across_the_ring_s_end() {
        let mut tail = Tail {
            ring: [0; TAIL],
            written: 0,
        };
        tail.push(b"abc");
        assert_eq!(tail.bytes(), b"abc");
        let long: Vec<u8> = (0..TAIL + 100).map(|i| (i % 251) as u8).collect();
        tail.push(&long[..700]);
        tail.push(&long[700..]);
        assert_eq!(tail.bytes(), &long[100..]);
    }

    #[test]
    fn usage_is_found_in_the_last_event_before_done_and_at_the_end_of_json() {
        let sse = b"data: {\"choices\":[{\"delta\":{}}],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":3,\"total_tokens\":15,\"cost\":0.00042}}\n\ndata: [DONE]\n\n";
        assert_eq!(
            usage_in(sse),
            Some(Usage {
                prompt_tokens: 12,
                completion_tokens: 3,
                cost_nano: 420_000
            })
        );
        let json = b"{\"id\":\"gen-1\",\"usage\" : {\"prompt_tokens\":7,\"completion_tokens\":1}}";
        assert_eq!(usage_in(json).map(|u| u.prompt_tokens), Some(7));
        assert_eq!(usage_in(b"{\"usage\":{\"prompt_tok"), None);
        assert_eq!(usage_in(b"no usage here"), None);
    }

    #[test]
    fn times_and_costs_in_the_log_line_round_to_their_last_digit() {
        let written = |write: &dyn Fn(&mut Line)| {
            let mut line = Line(String::new());
            write(&mut line);
            line.0
        };
        let ms = |micros| written(&|l| l.millis("t", Some(Duration::from_micros(micros))));
        assert_eq!(ms(0), " t=0.0ms");
        assert_eq!(ms(49), " t=0.0ms");
        assert_eq!(ms(50), " t=0.1ms");
        assert_eq!(ms(12_345), " t=12.3ms");
        assert_eq!(ms(99_960), " t=100.0ms");
        assert_eq!(written(&|l| l.millis("t", None)), " t=-");
        let cost = |cost_nano| {
            let usage = Usage {
                prompt_tokens: 3,
                completion_tokens: 4,
                cost_nano,
            };
            written(&|l| l.usage(usage))
        };
        assert_eq!(cost(0), " tokens=3/4 cost=0.000000");
        assert_eq!(cost(1_500_000), " tokens=3/4 cost=0.001500");
        assert_eq!(cost(499), " tokens=3/4 cost=0.000000");
        assert_eq!(cost(2_999_999_500), " tokens=3/4 cost=3.000000");
        let decimal = |value, places| written(&|l| l.decimal(value, places));
        assert_eq!(decimal(u64::MAX, 1), "1844674407370955161.5");
        assert_eq!(decimal(u64::MAX, 0), "18446744073709551615");
        assert_eq!(decimal(7, 0), "7");
        assert_eq!(decimal(7, 9), "0.000000007");
        assert_eq!(decimal(7, 12), "0.000000007", "at most nine places");
    }
}
