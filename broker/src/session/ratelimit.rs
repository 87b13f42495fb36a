//! Per-connection token bucket for client messages.
//!
//! Each client message takes one token; tokens refill at `rate_limit_per_s` up to
//! `rate_limit_burst`. A message without a token is answered `rate_limited` and not
//! executed. A client that keeps sending after that (more refused messages in a row
//! than the burst size) is closed with 4029: it is not listening to the errors.

use std::time::Instant;

/// Outcome of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Allow,
    /// Refuse this message with `rate_limited`.
    Limit,
    /// Refused too many times in a row: close with 4029.
    Close,
}

/// A token bucket: `per_s` tokens a second, at most `burst` saved up. Also the
/// upgrade-rate limit of `server.max_upgrades_per_s` (`http/admission.rs`) and of
/// the ticket rate (`auth/ticket_rate.rs`).
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    tokens: f64,
    per_s: f64,
    burst: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn new(per_s: u32, burst: u32) -> Self {
        TokenBucket {
            tokens: f64::from(burst),
            per_s: f64::from(per_s),
            burst: f64::from(burst),
            last: Instant::now(),
        }
    }

    /// Takes a token at `now`, if there is one.
    pub(crate) fn take_at(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_s).min(self.burst);
    }

    /// Seconds until the next token, rounded up (at least 1): a `Retry-After`.
    pub(crate) fn retry_after_s(&self) -> u64 {
        let missing = (1.0 - self.tokens).max(0.0);
        ((missing / self.per_s.max(f64::MIN_POSITIVE)).ceil() as u64).max(1)
    }

    /// Whether the bucket has refilled completely by `now` (it remembers nothing a
    /// new bucket would not).
    pub(crate) fn is_full_at(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

#[derive(Debug)]
pub(crate) struct RateLimiter {
    bucket: TokenBucket,
    refused_in_a_row: u32,
    close_after: u32,
}

impl RateLimiter {
    pub(crate) fn new(per_s: u32, burst: u32) -> Self {
        RateLimiter {
            bucket: TokenBucket::new(per_s, burst),
            refused_in_a_row: 0,
            close_after: burst.max(1),
        }
    }

    pub(crate) fn admit(&mut self) -> Verdict {
        self.admit_at(Instant::now())
    }

    fn admit_at(&mut self, now: Instant) -> Verdict {
        if self.bucket.take_at(now) {
            self.refused_in_a_row = 0;
            Verdict::Allow
        } else {
            self.refused_in_a_row += 1;
            if self.refused_in_a_row > self.close_after {
                Verdict::Close
            } else {
                Verdict::Limit
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_limit_then_close() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(10, 3);
        r.bucket.last = t0;
        for _ in 0..3 {
            assert_eq!(r.admit_at(t0), Verdict::Allow);
        }
        for _ in 0..3 {
            assert_eq!(r.admit_at(t0), Verdict::Limit);
        }
        assert_eq!(r.admit_at(t0), Verdict::Close);
    }

    #[test]
    fn refills_at_the_configured_rate() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(10, 1);
        r.bucket.last = t0;
        assert_eq!(r.admit_at(t0), Verdict::Allow);
        assert_eq!(r.admit_at(t0), Verdict::Limit);
        // 100 ms at 10/s is one token; the refused streak resets on success.
        assert_eq!(r.admit_at(t0 + Duration::from_millis(100)), Verdict::Allow);
        assert_eq!(r.refused_in_a_row, 0);
        // The bucket never holds more than the burst.
        assert_eq!(r.admit_at(t0 + Duration::from_secs(60)), Verdict::Allow);
        assert_eq!(r.admit_at(t0 + Duration::from_secs(60)), Verdict::Limit);
    }
}
