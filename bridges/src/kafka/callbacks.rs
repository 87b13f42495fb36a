//! The librdkafka callbacks of a bridge's client: its log and errors (throttled),
//! and its statistics, which tell whether a broker is up and how far behind the
//! partitions' ends the bridge is.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{ConsumerContext, StreamConsumer};
use rdkafka::statistics::Statistics;
use tracing::{debug, info, warn};

use super::LOG_EVERY;
use crate::BridgeCounters;

/// A bridge's librdkafka client.
pub(super) type Kafka = StreamConsumer<KafkaCallbacks>;

/// What the librdkafka callbacks share with the bridge.
pub(super) struct KafkaCallbacks {
    pub(super) name: String,
    pub(super) counters: Arc<BridgeCounters>,
    pub(super) errors: Mutex<Throttle>,
    /// Told when the brokers become unreachable (the bridge replaces its client).
    pub(super) outage: Arc<tokio::sync::Notify>,
}

/// Lets through one line per [`LOG_EVERY`] and counts the rest.
#[derive(Debug, Default)]
pub(super) struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// `Some(suppressed since the last line)` when a line may be written now.
    pub(super) fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

impl KafkaCallbacks {
    pub(super) fn set_connected(&self, up: bool) {
        let c = &self.counters;
        let was = c.connected.swap(up, Relaxed);
        if was && !up {
            c.add(&c.disconnects, 1);
            warn!(bridge = %self.name, "kafka brokers unreachable; reconnecting");
            self.outage.notify_one();
        } else if !was && up && c.disconnects.load(Relaxed) > 0 {
            c.add(&c.reconnects, 1);
            info!(bridge = %self.name, "kafka brokers reachable again");
        }
    }
}

impl ClientContext for KafkaCallbacks {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        // librdkafka repeats itself while a broker is down; the bridge reports the
        // state change once (and `error` below, throttled), so its own lines stay at
        // debug.
        debug!(bridge = %self.name, ?level, facility = fac, "librdkafka: {message}");
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        let allowed = self.errors.lock().map(|mut t| t.allow()).unwrap_or(Some(0));
        if let Some(suppressed) = allowed {
            warn!(bridge = %self.name, error = %error, reason, suppressed, "kafka client error");
        }
    }

    fn stats(&self, stats: Statistics) {
        let up = stats
            .brokers
            .values()
            .any(|b| b.source != "internal" && b.state == "UP");
        self.set_connected(up);
        // Lag: records between what the bridge has handed on and each partition's
        // end, summed over the bridge (one label per bridge, never per topic).
        let lag: i64 = stats
            .topics
            .values()
            .flat_map(|t| t.partitions.values())
            .filter(|p| p.partition >= 0 && p.hi_offset >= 0)
            .map(|p| {
                let at = if p.app_offset >= 0 {
                    p.app_offset
                } else {
                    p.next_offset
                };
                if at >= 0 {
                    (p.hi_offset - at).max(0)
                } else {
                    0
                }
            })
            .sum();
        self.counters.lag.store(lag.max(0) as u64, Relaxed);
    }
}

impl ConsumerContext for KafkaCallbacks {}
