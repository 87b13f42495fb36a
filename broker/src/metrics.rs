//! Prometheus metrics, all in one place (names, help texts, label sets).
//!
//! Counters are process-wide atomics: Prometheus scrapes a process, and a static
//! needs no handle threaded through every actor. Labels come from closed sets
//! (source, drop reason, close code, error code), never from topic names or user ids,
//! so cardinality stays bounded. Hot-path counts (deliveries) are added per write
//! batch, not per event, to keep shared cache lines quiet.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use herald_bridges::Source;

use crate::protocol::{close, ErrorCode};

/// Why an event did not reach a connection (label `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropReason {
    /// The connection's byte budget (`session.queue_max_bytes`: inbox, outbound
    /// queue and write in flight) was full (policy `drop`).
    QueueFull,
    /// The topic layer's mailbox was full when the event arrived.
    TopicBusy,
    /// A bridge produced an event whose topic is not a valid Herald topic.
    InvalidTopic,
}

impl DropReason {
    const ALL: [DropReason; 3] = [
        DropReason::QueueFull,
        DropReason::TopicBusy,
        DropReason::InvalidTopic,
    ];

    fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::TopicBusy => "topic_busy",
            DropReason::InvalidTopic => "invalid_topic",
        }
    }
}

/// Why an upgrade was refused (label `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefusedReason {
    Origin,
    Subprotocol,
    Capacity,
    CapacityPerIp,
    /// Credentials on the upgrade were missing where required, invalid, expired or
    /// reused (401).
    Unauthorized,
    /// More upgrades a second than `server.max_upgrades_per_s` (503).
    UpgradeRate,
}

impl RefusedReason {
    const ALL: [RefusedReason; 6] = [
        RefusedReason::Origin,
        RefusedReason::Subprotocol,
        RefusedReason::Capacity,
        RefusedReason::CapacityPerIp,
        RefusedReason::Unauthorized,
        RefusedReason::UpgradeRate,
    ];

    fn as_str(self) -> &'static str {
        match self {
            RefusedReason::Origin => "origin",
            RefusedReason::Subprotocol => "subprotocol",
            RefusedReason::Capacity => "capacity",
            RefusedReason::CapacityPerIp => "capacity_per_ip",
            RefusedReason::Unauthorized => "unauthorized",
            RefusedReason::UpgradeRate => "upgrade_rate",
        }
    }
}

/// How a session reaches its client (label `transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    WebSocket,
    /// `GET /sse`.
    Sse,
}

impl Transport {
    const ALL: [Transport; 2] = [Transport::WebSocket, Transport::Sse];

    fn as_str(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::Sse => "sse",
        }
    }
}

/// Every metric Herald exports.
#[derive(Debug)]
pub(crate) struct Metrics {
    connections: [AtomicI64; Transport::ALL.len()],
    connections_total: [AtomicU64; Transport::ALL.len()],
    refused: [AtomicU64; RefusedReason::ALL.len()],
    subscriptions: AtomicI64,
    topics: AtomicI64,
    events_in: [AtomicU64; Source::ALL.len()],
    delivered: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
    closed: [AtomicU64; close::ALL.len()],
    closed_other: AtomicU64,
    client_errors: [AtomicU64; ErrorCode::ALL.len()],
    lagged_notices: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const Z: AtomicU64 = AtomicU64::new(0);

/// The process-wide metrics.
pub(crate) static METRICS: Metrics = Metrics {
    connections: [AtomicI64::new(0), AtomicI64::new(0)],
    connections_total: [Z; Transport::ALL.len()],
    refused: [Z; RefusedReason::ALL.len()],
    subscriptions: AtomicI64::new(0),
    topics: AtomicI64::new(0),
    events_in: [Z; Source::ALL.len()],
    delivered: Z,
    dropped: [Z; DropReason::ALL.len()],
    closed: [Z; close::ALL.len()],
    closed_other: Z,
    client_errors: [Z; ErrorCode::ALL.len()],
    lagged_notices: Z,
};

impl Metrics {
    pub(crate) fn connection_opened(&self, transport: Transport) {
        self.connections[transport as usize].fetch_add(1, Relaxed);
        self.connections_total[transport as usize].fetch_add(1, Relaxed);
    }
    pub(crate) fn connection_closed(&self, transport: Transport, code: u16) {
        self.connections[transport as usize].fetch_sub(1, Relaxed);
        match close::ALL.iter().position(|c| *c == code) {
            Some(i) => self.closed[i].fetch_add(1, Relaxed),
            None => self.closed_other.fetch_add(1, Relaxed),
        };
    }
    pub(crate) fn refused(&self, reason: RefusedReason) {
        self.refused[reason as usize].fetch_add(1, Relaxed);
    }
    pub(crate) fn subscriptions_changed(&self, delta: i64) {
        self.subscriptions.fetch_add(delta, Relaxed);
    }
    /// Topics this node holds now.
    #[cfg(feature = "nats")]
    pub(crate) fn topics(&self) -> i64 {
        self.topics.load(Relaxed)
    }
    pub(crate) fn topics_changed(&self, delta: i64) {
        self.topics.fetch_add(delta, Relaxed);
    }
    pub(crate) fn event_in(&self, source: Source) {
        self.events_in[source.index()].fetch_add(1, Relaxed);
    }
    pub(crate) fn delivered(&self, n: u64) {
        if n > 0 {
            self.delivered.fetch_add(n, Relaxed);
        }
    }
    pub(crate) fn dropped(&self, reason: DropReason, n: u64) {
        self.dropped[reason as usize].fetch_add(n, Relaxed);
    }
    pub(crate) fn client_error(&self, code: ErrorCode) {
        if let Some(i) = ErrorCode::ALL.iter().position(|c| *c == code) {
            self.client_errors[i].fetch_add(1, Relaxed);
        }
    }
    pub(crate) fn lagged_notice(&self) {
        self.lagged_notices.fetch_add(1, Relaxed);
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let _ = writeln!(
            out,
            "# HELP herald_connections Open sessions, by transport (WebSocket, SSE).\n\
             # TYPE herald_connections gauge"
        );
        for t in Transport::ALL {
            let _ = writeln!(
                out,
                "herald_connections{{transport=\"{}\"}} {}",
                t.as_str(),
                self.connections[t as usize].load(Relaxed)
            );
        }
        let mut gauge = |name: &str, help: &str, v: i64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(
            "herald_subscriptions",
            "Active subscriptions (patterns) over all connections.",
            self.subscriptions.load(Relaxed),
        );
        gauge(
            "herald_topics",
            "Topics this node holds (subscribed or with history).",
            self.topics.load(Relaxed),
        );
        let mut counter =
            |name: &str, help: &str, rows: &mut dyn Iterator<Item = (String, u64)>| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
                for (labels, v) in rows {
                    let _ = writeln!(out, "{name}{labels} {v}");
                }
            };
        counter(
            "herald_connections_accepted_total",
            "Sessions accepted (WebSocket upgrades and SSE streams), by transport.",
            &mut Transport::ALL.iter().map(|t| {
                (
                    format!("{{transport=\"{}\"}}", t.as_str()),
                    self.connections_total[*t as usize].load(Relaxed),
                )
            }),
        );
        counter(
            "herald_connections_refused_total",
            "WebSocket upgrades refused, by reason.",
            &mut RefusedReason::ALL.iter().map(|r| {
                (
                    format!("{{reason=\"{}\"}}", r.as_str()),
                    self.refused[*r as usize].load(Relaxed),
                )
            }),
        );
        counter(
            "herald_events_in_total",
            "Events received, by source.",
            &mut Source::ALL.iter().map(|s| {
                (
                    format!("{{source=\"{}\"}}", s.as_str()),
                    self.events_in[s.index()].load(Relaxed),
                )
            }),
        );
        counter(
            "herald_events_delivered_total",
            "Event frames written to connections (one per subscriber).",
            &mut std::iter::once((String::new(), self.delivered.load(Relaxed))),
        );
        counter(
            "herald_events_dropped_total",
            "Events not delivered, by reason.",
            &mut DropReason::ALL.iter().map(|r| {
                (
                    format!("{{reason=\"{}\"}}", r.as_str()),
                    self.dropped[*r as usize].load(Relaxed),
                )
            }),
        );
        counter(
            "herald_lagged_notices_total",
            "`lagged` notices sent to slow connections.",
            &mut std::iter::once((String::new(), self.lagged_notices.load(Relaxed))),
        );
        counter(
            "herald_sessions_closed_total",
            "WebSocket sessions closed, by close code.",
            &mut close::ALL
                .iter()
                .enumerate()
                .map(|(i, c)| (format!("{{code=\"{c}\"}}"), self.closed[i].load(Relaxed)))
                .chain(std::iter::once((
                    "{code=\"other\"}".to_string(),
                    self.closed_other.load(Relaxed),
                ))),
        );
        counter(
            "herald_client_errors_total",
            "Error replies sent to clients, by error code.",
            &mut ErrorCode::ALL.iter().enumerate().map(|(i, c)| {
                (
                    format!("{{code=\"{}\"}}", c.as_str()),
                    self.client_errors[i].load(Relaxed),
                )
            }),
        );
        out
    }
}

/// Per-bridge metrics (label `bridge`: one value per configured bridge).
pub(crate) fn render_bridges(
    bridges: &[(String, std::sync::Arc<herald_bridges::BridgeCounters>)],
) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let mut out = String::new();
    if bridges.is_empty() {
        return out;
    }
    type Pick = fn(&herald_bridges::BridgeCounters) -> u64;
    let families: [(&str, &str, &str, Pick); 7] = [
        (
            "herald_bridge_connected",
            "gauge",
            "1 while the bridge is connected.",
            |c| u64::from(c.connected.load(Relaxed)),
        ),
        (
            "herald_bridge_messages_total",
            "counter",
            "Messages received by the bridge.",
            |c| c.received.load(Relaxed),
        ),
        (
            "herald_bridge_dropped_total",
            "counter",
            "Messages dropped because the broker's hand-off queue was full.",
            |c| c.dropped.load(Relaxed),
        ),
        (
            "herald_bridge_slow_consumer_total",
            "counter",
            "Messages the client library dropped (NATS slow consumer).",
            |c| c.slow_consumer.load(Relaxed),
        ),
        (
            "herald_bridge_disconnects_total",
            "counter",
            "Times the bridge lost its connection.",
            |c| c.disconnects.load(Relaxed),
        ),
        (
            "herald_bridge_reconnects_total",
            "counter",
            "Times the bridge's connection came back after a loss.",
            |c| c.reconnects.load(Relaxed),
        ),
        (
            "herald_bridge_lag",
            "gauge",
            "Kafka records not yet read from the bridge's partitions (0 for NATS).",
            |c| c.lag.load(Relaxed),
        ),
    ];
    for (name, kind, help, pick) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (bridge, counters) in bridges {
            let _ = writeln!(out, "{name}{{bridge=\"{bridge}\"}} {}", pick(counters));
        }
    }
    out
}

/// The JWKS of `auth.jwks_url` (only when it is set).
pub(crate) fn render_jwks(jwks: &crate::auth::jwks::Snapshot) -> String {
    let mut out = String::new();
    let families: [(&str, &str, &str, u64); 3] = [
        (
            "herald_jwks_keys",
            "gauge",
            "Signing keys held from auth.jwks_url.",
            jwks.keys as u64,
        ),
        (
            "herald_jwks_age_seconds",
            "gauge",
            "Seconds since the JWKS was last fetched successfully (since start when never).",
            jwks.age_s,
        ),
        (
            "herald_jwks_stale",
            "gauge",
            "1 when no JWKS has been fetched yet or the keys are older than auth.jwks_stale_ms (then /readyz answers 503).",
            u64::from(jwks.stale),
        ),
    ];
    for (name, kind, help, v) in families {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
        );
    }
    let name = "herald_jwks_fetches_total";
    let _ = writeln!(
        out,
        "# HELP {name} Fetches of auth.jwks_url, by result.\n# TYPE {name} counter\n\
         {name}{{result=\"ok\"}} {}\n{name}{{result=\"error\"}} {}",
        jwks.fetched_ok, jwks.fetch_failed
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_lists_every_family_with_bounded_labels() {
        METRICS.event_in(Source::Http);
        METRICS.dropped(DropReason::QueueFull, 3);
        let text = METRICS.render();
        for family in [
            "herald_connections{transport=\"websocket\"} ",
            "herald_subscriptions ",
            "herald_events_in_total{source=\"http\"}",
            "herald_events_delivered_total ",
            "herald_events_dropped_total{reason=\"queue_full\"}",
            "herald_sessions_closed_total{code=\"4009\"}",
            "herald_client_errors_total{code=\"rate_limited\"}",
        ] {
            assert!(text.contains(family), "missing {family} in\n{text}");
        }
        let counters = std::sync::Arc::new(herald_bridges::BridgeCounters::default());
        counters.add(&counters.received, 5);
        let bridges = render_bridges(&[("events".to_string(), counters)]);
        assert!(
            bridges.contains("herald_bridge_messages_total{bridge=\"events\"} 5"),
            "{bridges}"
        );
        assert!(
            bridges.contains("herald_bridge_connected{bridge=\"events\"} 0"),
            "{bridges}"
        );
        assert!(render_bridges(&[]).is_empty());
        // Every sample line is `name{labels} value` or `name value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().expect("value");
            assert!(value.parse::<i64>().is_ok(), "bad sample line {line}");
        }
    }
}
