//! The one wall clock Herald stamps events and checks expiries by.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (an event's `ts`, history ages).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Seconds since the Unix epoch, for comparing with a JWT's `exp`.
pub(crate) fn now_secs() -> u64 {
    now_ms() / 1000
}
