//! The Kafka bridge: every partition of the configured Kafka topics, read live by
//! this node, mapped to Herald topics.
//!
//! Every Herald node must deliver every record to its own WebSocket clients, so the
//! bridge never joins a consumer group's partition split: it `assign`s every
//! partition itself, with a `group.id` of its own per node (librdkafka wants one) and
//! never commits an offset. Where a partition starts is `start` (`latest`,
//! `earliest`, `last:N`); a partition that appears later (a topic grew) starts at its
//! beginning so nothing produced to it is missed.
//!
//! Delivery is at-most-once, like the rest of Herald: records go to the broker's
//! sink, which never waits, and what does not fit is dropped and counted.
//! Anything that needs every record processed belongs in a consumer group of its own.
//!
//! Two loops share one `StreamConsumer`: the consumer loop (records in, here), and
//! the supervisor (metadata, assignment, readiness: `assignment.rs`). librdkafka reconnects by itself;
//! the statistics callback (`callbacks.rs`) tells the supervisor whether any broker is up and how far
//! behind the partitions' ends the bridge is.
//!
//! After an outage the bridge does not reuse its client: once the brokers are seen
//! unreachable it records every partition's position, drops the consumer and builds
//! a new one that resumes there. A broker that comes back having recreated a topic
//! gives it a new topic id, and librdkafka 2.12's metadata cache can crash the
//! process on meeting a known topic name with a new id (confluentinc/librdkafka#4964,
//! #5280; docs/kafka.md, "Outages"); a client with an empty cache does not.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use rdkafka::message::{BorrowedMessage, Headers as _};
use rdkafka::Message as _;
use tracing::{info, warn};

/// The Kafka client crate, for code (tests, demo producers) that talks to the same
/// brokers.
pub use rdkafka;

use crate::{BridgeContext, BridgeEvent, BridgeStatus, Source};

pub use crate::config::{KafkaSettings, Start};
pub use settings::{client_config, key_token, prepare, Template};

mod assignment;
mod callbacks;
mod settings;

use assignment::{outage, positions, snapshot, supervise, Resume};
use callbacks::{Kafka, KafkaCallbacks, Throttle};

/// How long one metadata request may take before the brokers count as unreachable.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the supervisor re-evaluates readiness.
const TICK: Duration = Duration::from_millis(500);
/// Retry delay for metadata while not ready: doubles up to the cap.
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(10);
/// At most one warning line per this interval for a repeating failure.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Errors of the Kafka bridge.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// librdkafka refused the configuration (a `properties` entry, usually).
    #[error("invalid Kafka client configuration: {0}")]
    Config(String),
    /// No broker answered a metadata request.
    #[error("cannot reach Kafka brokers {brokers}: {source}")]
    Unreachable {
        brokers: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A configured topic does not exist (or is not visible to this client).
    #[error("Kafka topic {topic} not found: {message}")]
    MissingTopic { topic: String, message: String },
    /// librdkafka refused an assignment.
    #[error("cannot assign partitions of {topic}: {source}")]
    Assign {
        topic: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
}

/// A Kafka bridge whose settings have been checked and whose topic template has been
/// parsed, once, at start: [`KafkaBridge::new`] fails on what no retry fixes.
#[derive(Debug)]
pub struct KafkaBridge {
    settings: Arc<KafkaSettings>,
    template: Template,
}

impl KafkaBridge {
    /// Prepares a bridge for `settings`. The error names the settings field.
    pub fn new(settings: KafkaSettings) -> Result<Self, (&'static str, String)> {
        let template = prepare(&settings)?;
        Ok(KafkaBridge {
            settings: Arc::new(settings),
            template,
        })
    }

    /// The bridge's name.
    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// Runs the bridge until `context.cancel` is cancelled. Its `group.id` is
    /// `herald-<node>-<name>`: never shared with another node.
    pub async fn run(self, context: BridgeContext) {
        let s = self.settings;
        let group_id = format!("herald-{}-{}", context.node, s.name);
        (context.status)(BridgeStatus::Starting);
        info!(bridge = %s.name, brokers = %s.brokers, topics = ?s.topics, start = %s.start, group_id = %group_id, "kafka bridge starting");
        clients(s.clone(), group_id, self.template, &context).await;
        if context.cancel.is_cancelled() {
            (context.status)(BridgeStatus::Down("stopped".into()));
            info!(bridge = %s.name, "kafka bridge stopped");
        } else {
            // The client refused its configuration, or its record stream ended; the
            // status already says why.
            warn!(bridge = %s.name, "kafka bridge ended");
        }
    }
}

/// Builds the event for one record: topic from the template; payload copied once
/// (a tombstone becomes JSON `null`); key and headers as UTF-8 text (invalid bytes
/// replaced by U+FFFD; a header without a value becomes `""`).
pub fn event_for(template: &Template, m: &BorrowedMessage<'_>) -> BridgeEvent {
    let mut headers = BTreeMap::new();
    if let Some(h) = m.headers() {
        for header in h.iter() {
            let value = header
                .value
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            headers.insert(header.key.to_owned(), value);
        }
    }
    BridgeEvent {
        topic: template.render(m.topic(), m.key()),
        payload: m
            .payload()
            .map_or_else(|| Bytes::from_static(b"null"), Bytes::copy_from_slice),
        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        headers,
        source: Source::Kafka,
        position: None,
    }
}

/// Reads records and hands each to the broker without waiting.
async fn consume(consumer: Arc<Kafka>, template: Template, context: BridgeContext, name: String) {
    let mut errors = Throttle::default();
    let mut stream = consumer.stream();
    while let Some(record) = stream.next().await {
        match record {
            Ok(m) => context.forward(event_for(&template, &m)),
            Err(e) => {
                if let Some(suppressed) = errors.allow() {
                    warn!(bridge = %name, error = %e, suppressed, "kafka consume error");
                }
            }
        }
    }
}

/// A client, its consumer loop and its supervisor; after an outage, a new client
/// that resumes where the last one stood (see the module doc). Returns when the
/// record stream ends, or once `context.cancel` is cancelled and this task's hold
/// on the client is released (off the runtime thread; a metadata call still in
/// flight on the blocking pool releases the last hold when it returns).
async fn clients(
    s: Arc<KafkaSettings>,
    group_id: String,
    template: Template,
    context: &BridgeContext,
) {
    let (status, counters) = (&context.status, &context.counters);
    let mut resume = Resume::default();
    let mut first_problem = "starting".to_owned();
    loop {
        let signal = Arc::new(tokio::sync::Notify::new());
        let callbacks = KafkaCallbacks {
            name: s.name.clone(),
            counters: counters.clone(),
            errors: Mutex::new(Throttle::default()),
            outage: signal.clone(),
        };
        let consumer = match client_config(&s, &group_id).create_with_context::<_, Kafka>(callbacks)
        {
            Ok(c) => Arc::new(c),
            Err(e) => {
                // Config validation makes this unreachable for a checked config.
                warn!(bridge = %s.name, error = %e, "kafka bridge cannot start");
                status(BridgeStatus::Down(
                    KafkaError::Config(e.to_string()).to_string(),
                ));
                return;
            }
        };
        let placed = Arc::new(Mutex::new(resume));
        // In a block, so that both loops (and their handles on the client) are gone
        // before the client is dropped below.
        let cancelled = {
            let records = consume(
                consumer.clone(),
                template.clone(),
                context.clone(),
                s.name.clone(),
            );
            let supervisor = supervise(
                consumer.clone(),
                s.clone(),
                status.clone(),
                counters.clone(),
                placed.clone(),
                first_problem,
            );
            let down = outage(&signal, &placed);
            tokio::select! {
                // The record stream ended: the client is closing.
                () = records => return,
                () = supervisor => false,
                () = down => false,
                () = context.cancel.cancelled() => true,
            }
        };
        if cancelled {
            // Closing a client may wait on librdkafka's threads: not on this one.
            let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
            return;
        }
        resume = positions(&consumer, snapshot(&placed));
        info!(bridge = %s.name, partitions = resume.positions.len(), "kafka brokers unreachable; replacing the client, which resumes at its positions");
        first_problem = "no Kafka broker reachable; reconnecting".to_owned();
        // Closing a client may wait on librdkafka's threads: not on this one.
        let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
    }
}

#[cfg(test)]
mod tests {
    /// Against rdkafka's in-process `MockCluster`: fast checks of the assignment
    /// and hand-off logic (the real-broker scenarios are in tests/kafka.rs).
    mod mock {
        use super::super::*;
        use crate::{BridgeCounters, CancellationToken, EventSink, SinkError, StatusSink};
        use rdkafka::client::ClientContext;
        use rdkafka::config::ClientConfig;
        use rdkafka::mocking::MockCluster;
        use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
        use std::sync::atomic::AtomicUsize;
        use std::sync::atomic::Ordering::Relaxed;
        use std::time::Instant;

        /// Records what reaches it through a queue of `capacity` events that a
        /// thread of its own empties, taking `delay` per event; a full queue refuses.
        struct Sink {
            queue: std::sync::mpsc::SyncSender<BridgeEvent>,
        }

        impl Sink {
            fn start(capacity: usize, delay: Duration) -> (Self, Arc<Mutex<Vec<BridgeEvent>>>) {
                let got = Arc::new(Mutex::new(Vec::new()));
                let (queue, rx) = std::sync::mpsc::sync_channel::<BridgeEvent>(capacity);
                let g = got.clone();
                std::thread::spawn(move || {
                    for e in rx {
                        std::thread::sleep(delay);
                        g.lock().expect("lock").push(e);
                    }
                });
                (Sink { queue }, got)
            }
        }

        impl EventSink for Sink {
            fn send(&self, event: BridgeEvent) -> Result<(), SinkError> {
                self.queue.try_send(event).map_err(|_| SinkError::Full)
            }

            fn interrupted(&self, _topics: &[crate::topic::Pattern]) {
                panic!("the Kafka bridge resumes at its positions: it never loses events");
            }
        }

        fn produce(cluster: &MockCluster<'_, impl ClientContext>, partition: i32, payload: &str) {
            produce_all(cluster, &[(partition, payload.to_owned())]);
        }

        fn produce_all(cluster: &MockCluster<'_, impl ClientContext>, records: &[(i32, String)]) {
            let p: BaseProducer = ClientConfig::new()
                .set("bootstrap.servers", cluster.bootstrap_servers())
                .create()
                .expect("producer");
            for (partition, payload) in records {
                p.send(
                    BaseRecord::<str, str>::to("orders")
                        .partition(*partition)
                        .key("k")
                        .payload(payload),
                )
                .expect("queued");
            }
            p.flush(Duration::from_secs(10)).expect("delivered");
        }

        /// What [`bridge`] started.
        struct Running {
            got: Arc<Mutex<Vec<BridgeEvent>>>,
            counters: Arc<BridgeCounters>,
            ready: Arc<AtomicUsize>,
            last: Arc<Mutex<Option<BridgeStatus>>>,
            cancel: CancellationToken,
            task: tokio::task::JoinHandle<()>,
        }

        /// Starts a bridge on `cluster` whose events go to a [`Sink`].
        fn bridge(
            cluster: &MockCluster<'_, impl ClientContext>,
            start: Start,
            delay: Duration,
            capacity: usize,
        ) -> Running {
            let (sink, got) = Sink::start(capacity, delay);
            let ready = Arc::new(AtomicUsize::new(0));
            let last = Arc::new(Mutex::new(None));
            let (r, l) = (ready.clone(), last.clone());
            let status: StatusSink = Arc::new(move |s: BridgeStatus| {
                if s.is_ready() {
                    r.fetch_add(1, Relaxed);
                }
                *l.lock().expect("lock") = Some(s);
            });
            let counters = Arc::new(BridgeCounters::default());
            let settings = KafkaSettings {
                brokers: cluster.bootstrap_servers(),
                start,
                ..KafkaSettings::default()
            };
            let cancel = CancellationToken::new();
            let context = BridgeContext {
                node: "test".into(),
                sink: Arc::new(sink),
                status,
                counters: counters.clone(),
                cancel: cancel.clone(),
            };
            let bridge = KafkaBridge::new(settings).expect("valid settings");
            let task = tokio::spawn(bridge.run(context));
            Running {
                got,
                counters,
                ready,
                last,
                cancel,
                task,
            }
        }

        async fn until(what: &str, mut f: impl FnMut() -> bool) {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !f() {
                assert!(Instant::now() < deadline, "timed out waiting for {what}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }

        #[tokio::test]
        async fn last_n_replays_the_tail_of_every_partition_then_goes_live() {
            let cluster = MockCluster::new(1).expect("mock cluster");
            cluster.create_topic("orders", 2, 1).expect("topic");
            for p in 0..2 {
                for i in 0..4 {
                    produce(&cluster, p, &format!("{p}-{i}"));
                }
            }
            let Running { got, ready, .. } = bridge(&cluster, Start::Last(1), Duration::ZERO, 1024);
            until("ready", || ready.load(Relaxed) > 0).await;
            until("2 records", || got.lock().expect("lock").len() == 2).await;
            produce(&cluster, 1, "live");
            until("3 records", || got.lock().expect("lock").len() == 3).await;
            let mut payloads: Vec<String> = got
                .lock()
                .expect("lock")
                .iter()
                .map(|e| String::from_utf8_lossy(&e.payload).into_owned())
                .collect();
            payloads.sort();
            assert_eq!(payloads, ["0-3", "1-3", "live"]);
            let e = got.lock().expect("lock")[0].clone();
            assert_eq!(e.topic, "orders");
            assert_eq!(e.key.as_deref(), Some("k"));
            assert_eq!(e.source, Source::Kafka);
        }

        #[tokio::test]
        async fn latest_skips_what_was_there_before_ready() {
            let cluster = MockCluster::new(1).expect("mock cluster");
            cluster.create_topic("orders", 2, 1).expect("topic");
            produce(&cluster, 0, "old");
            let Running { got, ready, .. } = bridge(&cluster, Start::Latest, Duration::ZERO, 1024);
            until("ready", || ready.load(Relaxed) > 0).await;
            // Ready means positions are resolved: a record produced right now is
            // delivered.
            produce(&cluster, 0, "new");
            until("1 record", || got.lock().expect("lock").len() == 1).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let got = got.lock().expect("lock");
            assert_eq!(got.len(), 1);
            assert_eq!(&got[0].payload[..], b"new");
        }

        #[tokio::test]
        async fn a_full_hand_off_drops_and_counts_instead_of_buffering() {
            let cluster = MockCluster::new(1).expect("mock cluster");
            cluster.create_topic("orders", 1, 1).expect("topic");
            let records: Vec<(i32, String)> = (0..200).map(|i| (0, i.to_string())).collect();
            produce_all(&cluster, &records);
            let Running { got, counters, .. } =
                bridge(&cluster, Start::Earliest, Duration::from_millis(5), 1);
            until("200 received", || counters.received.load(Relaxed) == 200).await;
            let dropped = || counters.dropped.load(Relaxed) as usize;
            until("every record delivered or dropped", || {
                got.lock().expect("lock").len() + dropped() == 200
            })
            .await;
            assert!(dropped() > 0, "a one-slot, slow sink must overflow");
        }

        #[tokio::test]
        async fn cancelling_stops_the_bridge_and_closes_its_client() {
            let cluster = MockCluster::new(1).expect("mock cluster");
            cluster.create_topic("orders", 1, 1).expect("topic");
            let running = bridge(&cluster, Start::Latest, Duration::ZERO, 16);
            until("ready", || running.ready.load(Relaxed) > 0).await;
            running.cancel.cancel();
            tokio::time::timeout(Duration::from_secs(20), running.task)
                .await
                .expect("the bridge returns once cancelled")
                .expect("the bridge task does not panic");
            assert_eq!(
                *running.last.lock().expect("lock"),
                Some(BridgeStatus::Down("stopped".into()))
            );
        }
    }
}
