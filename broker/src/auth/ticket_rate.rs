//! The rate limit of `POST /api/tickets` (`auth.ticket_rate_per_s`,
//! `auth.ticket_rate_burst`): one token bucket per token subject and one per client
//! address, so that one JWT holder, or one address, cannot fill the ticket store
//! (memory on this node, the key-value bucket of a cluster) however many tickets it
//! asks for. A request takes a token from both of its buckets.
//!
//! Bounded: at most [`MAX_KEYS`] buckets. When that many exist, the buckets that
//! have refilled completely (callers that went quiet) are dropped first; if none
//! has, new callers are refused until some have.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use crate::session::ratelimit::TokenBucket;

/// Most buckets kept (subjects and addresses together).
const MAX_KEYS: usize = 100_000;

/// Why a ticket request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TicketRateError {
    #[error("too many tickets for this token subject; retry in {0} s")]
    Subject(u64),
    #[error("too many tickets from this address; retry in {0} s")]
    Address(u64),
    #[error("too many callers are asking for tickets right now; retry in {0} s")]
    Full(u64),
}

impl TicketRateError {
    /// Seconds for the `Retry-After` header.
    pub(crate) fn retry_after_s(&self) -> u64 {
        match self {
            TicketRateError::Subject(s)
            | TicketRateError::Address(s)
            | TicketRateError::Full(s) => *s,
        }
    }
}

/// Which bucket a key names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Subject(String),
    Address(IpAddr),
}

/// The ticket rate limiter: `None` buckets when the limit is off (`per_s` = 0).
#[derive(Debug)]
pub(crate) struct TicketRate {
    per_s: u32,
    burst: u32,
    buckets: Mutex<HashMap<Key, TokenBucket>>,
}

impl TicketRate {
    pub(crate) fn new(per_s: u32, burst: u32) -> Self {
        TicketRate {
            per_s,
            burst,
            buckets: Mutex::default(),
        }
    }

    /// Takes a token for `subject` (when the caller has one) and for `address`, or
    /// says which one ran out. Nothing is taken from either when one refuses.
    pub(crate) fn admit(
        &self,
        subject: Option<&str>,
        address: IpAddr,
    ) -> Result<(), TicketRateError> {
        self.admit_at(subject, address, Instant::now())
    }

    fn admit_at(
        &self,
        subject: Option<&str>,
        address: IpAddr,
        now: Instant,
    ) -> Result<(), TicketRateError> {
        if self.per_s == 0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let keys: Vec<Key> = subject
            .map(|s| Key::Subject(s.to_owned()))
            .into_iter()
            .chain(std::iter::once(Key::Address(address)))
            .collect();
        let new = keys.iter().filter(|k| !buckets.contains_key(k)).count();
        if buckets.len() + new > MAX_KEYS {
            buckets.retain(|_, bucket| !bucket.is_full_at(now));
            if buckets.len() + new > MAX_KEYS {
                return Err(TicketRateError::Full(1));
            }
        }
        // Check both before taking from either: a refusal costs the caller nothing.
        for key in &keys {
            let bucket = buckets
                .entry(key.clone())
                .or_insert_with(|| TokenBucket::new(self.per_s, self.burst));
            let mut probe_bucket = bucket.clone();
            if !probe_bucket.take_at(now) {
                let wait = bucket.retry_after_s();
                return Err(match key {
                    Key::Subject(_) => TicketRateError::Subject(wait),
                    Key::Address(_) => TicketRateError::Address(wait),
                });
            }
        }
        for key in &keys {
            if let Some(bucket) = buckets.get_mut(key) {
                bucket.take_at(now);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn a_subject_and_an_address_each_get_their_burst_then_their_rate() {
        let rate = TicketRate::new(1, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(rate.admit_at(Some("alice"), ip(1), t0), Ok(()));
        }
        // Alice is out from any address; bob from alice's address too.
        assert_eq!(
            rate.admit_at(Some("alice"), ip(2), t0),
            Err(TicketRateError::Subject(1))
        );
        assert_eq!(
            rate.admit_at(Some("bob"), ip(1), t0),
            Err(TicketRateError::Address(1))
        );
        // The refusals took nothing: bob elsewhere still has his burst.
        for _ in 0..3 {
            assert_eq!(rate.admit_at(Some("bob"), ip(3), t0), Ok(()));
        }
        // A second later, one more each.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(rate.admit_at(Some("alice"), ip(1), t1), Ok(()));
        assert_eq!(
            rate.admit_at(Some("alice"), ip(1), t1),
            Err(TicketRateError::Subject(1))
        );
        // No subject (an API key): only the address counts.
        assert_eq!(rate.admit_at(None, ip(4), t1), Ok(()));
    }

    #[test]
    fn the_retry_after_is_the_time_to_the_next_token() {
        let rate = TicketRate::new(1, 1);
        let t0 = Instant::now();
        assert_eq!(rate.admit_at(Some("a"), ip(1), t0), Ok(()));
        let slow = TicketRate::new(1, 1);
        assert_eq!(slow.admit_at(None, ip(9), t0), Ok(()));
        assert_eq!(
            slow.admit_at(None, ip(9), t0)
                .map_err(|e| e.retry_after_s()),
            Err(1)
        );
        assert_eq!(
            rate.admit_at(Some("a"), ip(2), t0 + Duration::from_millis(500)),
            Err(TicketRateError::Subject(1))
        );
    }

    #[test]
    fn off_when_the_rate_is_zero() {
        let rate = TicketRate::new(0, 0);
        for _ in 0..1000 {
            assert_eq!(rate.admit(Some("a"), ip(1)), Ok(()));
        }
    }

    #[test]
    fn the_table_is_bounded_and_forgets_quiet_callers_first() {
        let rate = TicketRate::new(1000, 1);
        let t0 = Instant::now();
        let mut refused = 0;
        for i in 0..(MAX_KEYS as u32 + 10) {
            let address = IpAddr::from(std::net::Ipv6Addr::from(u128::from(i)));
            if rate.admit_at(None, address, t0).is_err() {
                refused += 1;
            }
        }
        assert_eq!(refused, 10, "past the bound, new callers wait");
        assert!(rate.buckets.lock().map(|b| b.len()).unwrap_or(0) <= MAX_KEYS);
        // A moment later every bucket has refilled: room again.
        let later = t0 + Duration::from_millis(10);
        assert_eq!(rate.admit_at(None, ip(1), later), Ok(()));
    }
}
