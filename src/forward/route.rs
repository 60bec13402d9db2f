//! A request for a model alias: the body is sent with each candidate in place of
//! the alias (only the `model` value changes; every other byte is the client's),
//! and a failure that is the model's own moves it to the next candidate at once
//! on the first pass, under the usual retry policy after it.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use crate::aliases::{Alias, DEFAULT_SKIP_MS};
use crate::forward::outcome::Verdict;
use crate::ingress::model::is_free;
use crate::keys::Demand;

/// Where an alias request is in its candidates.
pub struct Route {
    pub alias: Arc<Alias>,
    /// The request body before and after the `model` value (slices of it, not copies).
    before: Bytes,
    after: Bytes,
    /// The candidate being tried.
    pub candidate: usize,
    /// Candidates tried so far (with repeats after the first pass).
    pub tried: u32,
}

/// Which candidate answered an alias request and how many were tried, for its record.
#[derive(Clone, Debug)]
pub struct Tried {
    pub alias: String,
    pub candidate: String,
    pub tried: u32,
}

impl Route {
    /// The route of `alias` for `body`, whose `model` value is `value` (a slice of `body`),
    /// starting with the first candidate not skipped at `now_ms`.
    #[must_use]
    pub fn new(alias: Arc<Alias>, body: &Bytes, value: &[u8], now_ms: i64) -> Route {
        let start = value.as_ptr() as usize - body.as_ptr() as usize;
        let candidate = alias.next_candidate(None, now_ms);
        Route {
            before: body.slice(..start),
            after: body.slice(start + value.len()..),
            alias,
            candidate,
            tried: 1,
        }
    }

    /// The model being tried.
    #[must_use]
    pub fn model(&self) -> &str {
        &self.alias.candidates[self.candidate].model
    }

    /// Free-model demand for a free candidate.
    #[must_use]
    pub fn demand(&self) -> Demand {
        if is_free(self.model()) {
            Demand::Free
        } else {
            Demand::Other
        }
    }

    /// The body with the current candidate as its model (candidates need no JSON escaping:
    /// the configuration refuses spaces and quotes, and ids hold no backslash).
    #[must_use]
    pub fn body(&self) -> Bytes {
        let model = self.model().as_bytes();
        let mut body = BytesMut::with_capacity(self.before.len() + model.len() + self.after.len());
        body.put_slice(&self.before);
        body.put_slice(model);
        body.put_slice(&self.after);
        body.freeze()
    }

    /// Whether every candidate has been tried once: moves after that are retries.
    #[must_use]
    pub fn first_pass_done(&self) -> bool {
        self.tried as usize >= self.alias.candidates.len()
    }

    /// The current candidate failed for reasons of its own (`skip_ms`): it is skipped for
    /// that long, and the next candidate is the one to try.
    pub fn move_on(&mut self, skip_ms: i64, now_ms: i64, date: u32) {
        self.alias.failed(self.candidate, skip_ms, now_ms, date);
        self.candidate = self.alias.next_candidate(Some(self.candidate), now_ms);
        self.tried += 1;
    }

    /// What the record of the request says of it.
    #[must_use]
    pub fn tried(&self) -> Tried {
        Tried {
            alias: self.alias.name.clone(),
            candidate: self.model().to_owned(),
            tried: self.tried,
        }
    }
}

/// How long a candidate is skipped after `verdict`, if the failure is the model's own
/// (its providers saturated or down, no first token, a model it cannot serve); account
/// failures (quotas, limits, credits, keys) and the request's own are not.
#[must_use]
pub fn model_failure(verdict: Verdict) -> Option<i64> {
    let skip = |after: Option<std::time::Duration>| {
        after.map_or(DEFAULT_SKIP_MS, |d| {
            i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
        })
    };
    match verdict {
        Verdict::ModelBusy { retry_after } | Verdict::Server { retry_after } => {
            Some(skip(retry_after))
        }
        Verdict::Broken {
            nothing_generated: true,
        }
        | Verdict::NoFirstToken
        | Verdict::NoSuchModel => Some(DEFAULT_SKIP_MS),
        _ => None,
    }
}
