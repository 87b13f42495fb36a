//! The clock that stamps are written and read in.
//!
//! Publisher and receivers live in the same process, so a monotonic clock with a
//! process-wide origin measures publish → receipt exactly, immune to wall-clock steps,
//! without asking the two ends to agree on anything.

use std::sync::LazyLock;
use std::time::Instant;

/// The origin of [`now_us`]: the first time anything asked for the clock.
static ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Microseconds since the process-wide origin.
pub fn now_us() -> u64 {
    u64::try_from(ORIGIN.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// The instant that `us` (a value of [`now_us`]) stands for.
pub fn instant_at(us: u64) -> Instant {
    *ORIGIN + std::time::Duration::from_micros(us)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_is_monotonic_and_maps_back_to_instants() {
        let a = now_us();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = now_us();
        assert!(b >= a + 2_000, "{a} then {b}");
        assert!(instant_at(b) <= Instant::now());
        assert!(instant_at(a) < instant_at(b));
    }
}
