//! Capped exponential backoff: how every bridge spaces out attempts at something that
//! fails until the world changes (a server that is not up yet, a stream or a topic
//! nobody created yet). One definition for the NATS and the Kafka bridge.

use std::time::Duration;

/// Delays that start at `first` and double after every failure, up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    /// The wait after the next failure.
    next: Duration,
}

impl Backoff {
    /// A backoff whose first wait is `first` and whose waits never exceed `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            next: first.min(max),
        }
    }

    /// The wait after a failure; the one after it is twice as long (up to the cap).
    pub fn failed(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }

    /// After a success: the next failure waits `first` again.
    pub fn reset(&mut self) {
        self.next = self.first.min(self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_starts_over_after_a_success() {
        let mut b = Backoff::new(Duration::from_millis(250), Duration::from_secs(2));
        let waits: Vec<u128> = (0..6).map(|_| b.failed().as_millis()).collect();
        assert_eq!(waits, [250, 500, 1000, 2000, 2000, 2000]);
        b.reset();
        assert_eq!(b.failed(), Duration::from_millis(250));
    }
}
