//! `STREAM_IDLE_TIMEOUT` for a body being piped: fires once upstream has sent
//! nothing for that long. One timer, re-armed lazily when it fires (never per
//! frame), so a busy stream costs one `Instant::now()` a frame.

use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Watches one upstream body for silence.
pub struct IdleWatch {
    sleep: Pin<Box<Sleep>>,
    last_frame: Instant,
    after: Duration,
}

impl IdleWatch {
    /// A watch of `after` (0: none).
    #[must_use]
    pub fn new(after: Duration) -> Option<IdleWatch> {
        (!after.is_zero()).then(|| IdleWatch {
            sleep: Box::pin(tokio::time::sleep(after)),
            last_frame: Instant::now(),
            after,
        })
    }

    /// Upstream sent something (or a new upstream body began).
    pub fn touched(&mut self) {
        self.last_frame = Instant::now();
    }

    /// The silence allowed, in whole seconds (for messages).
    #[must_use]
    pub fn after_secs(&self) -> u64 {
        self.after.as_secs()
    }

    /// True once `after` has passed since the last frame; otherwise the timer is armed
    /// to wake `cx` when it could have.
    pub fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        while self.sleep.as_mut().poll(cx).is_ready() {
            // Checked: a timeout too far ahead for the clock never expires.
            let Some(deadline) = self.last_frame.checked_add(self.after) else {
                return false;
            };
            if deadline <= Instant::now() {
                return true;
            }
            self.sleep.as_mut().reset(deadline);
        }
        false
    }
}
