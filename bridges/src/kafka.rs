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
//! Delivery is at-most-once, like the rest of Herald: records go to the broker with
//! `try_send` on a bounded hand-off, and what does not fit is dropped and counted.
//! Anything that needs every record processed belongs in a consumer group of its own.
//!
//! Two tasks share one `StreamConsumer`: the consumer loop (records in), and the
//! supervisor (metadata, assignment, readiness). librdkafka reconnects by itself;
//! the statistics callback tells the supervisor whether any broker is up and how far
//! behind the partitions' ends the bridge is.
//!
//! After an outage the bridge does not reuse its client: once the brokers are seen
//! unreachable it records every partition's position, drops the consumer and builds
//! a new one that resumes there. A broker that comes back having recreated a topic
//! gives it a new topic id, and librdkafka 2.12's metadata cache can crash the
//! process on meeting a known topic name with a new id (confluentinc/librdkafka#4964,
//! #5280; docs/kafka.md, "Outages"); a client with an empty cache does not.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use futures_util::StreamExt as _;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{Consumer as _, ConsumerContext, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers as _};
use rdkafka::statistics::Statistics;
use rdkafka::{Message as _, Offset, TopicPartitionList};
use tracing::{debug, info, warn};

/// The Kafka client crate, for code (tests, demo producers) that talks to the same
/// brokers.
pub use rdkafka;

use crate::{BridgeCounters, BridgeEvent, BridgeStatus, EventSink, Source, StatusSink};

pub use crate::config::{KafkaSettings, Start};

/// Longest Herald topic (PROTOCOL.md section 1).
const MAX_TOPIC_BYTES: usize = 255;
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
    #[error("cannot reach Kafka brokers {brokers}: {message}")]
    Unreachable { brokers: String, message: String },
    /// A configured topic does not exist (or is not visible to this client).
    #[error("Kafka topic {topic} not found: {message}")]
    MissingTopic { topic: String, message: String },
    /// librdkafka refused an assignment.
    #[error("cannot assign partitions of {topic}: {message}")]
    Assign { topic: String, message: String },
}

/// Makes a record key into one Herald topic token: every character outside
/// `A-Z a-z 0-9 _ - :` (dots, spaces, slashes, any non-ASCII) becomes `_`, an absent
/// or empty key becomes `_`, and the token is cut to at most `max` bytes. Never
/// fails, so no record is lost to its key; distinct keys may share a token
/// (`a.b` and `a_b`), which the event's own `key` field still tells apart.
pub fn key_token(key: Option<&[u8]>, max: usize) -> String {
    let raw = key.map(String::from_utf8_lossy).unwrap_or_default();
    let mut token: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':') {
                c
            } else {
                '_'
            }
        })
        .collect();
    // Every character is ASCII now, so any byte index is a character boundary.
    token.truncate(max.max(1));
    if token.is_empty() {
        token.push('_');
    }
    token
}

/// A `topic_template` split once into its parts, so a record's topic is built
/// without parsing the template again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Topic,
    Key,
}

impl Template {
    /// Parses `{topic}` and `{key}` placeholders; any other `{…}` is an error.
    pub fn parse(template: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open..];
            if let Some(r) = after.strip_prefix("{topic}") {
                parts.push(Part::Topic);
                rest = r;
            } else if let Some(r) = after.strip_prefix("{key}") {
                parts.push(Part::Key);
                rest = r;
            } else {
                return Err(format!(
                    "`{template}`: only {{topic}} and {{key}} may appear in braces"
                ));
            }
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        if parts.is_empty() {
            return Err("an empty template".into());
        }
        Ok(Template { parts })
    }

    /// Whether the template uses `{key}`.
    pub fn uses_key(&self) -> bool {
        self.parts.contains(&Part::Key)
    }

    /// The Herald topic of a record of Kafka topic `topic` with key `key`. The key
    /// token gets whatever room the 255-byte topic limit leaves.
    pub fn render(&self, topic: &str, key: Option<&[u8]>) -> String {
        let fixed: usize = self
            .parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.len(),
                Part::Topic => topic.len(),
                Part::Key => 0,
            })
            .sum();
        let keys = self
            .parts
            .iter()
            .filter(|p| **p == Part::Key)
            .count()
            .max(1);
        let room = MAX_TOPIC_BYTES.saturating_sub(fixed) / keys;
        let mut out = String::with_capacity(fixed + 16);
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Topic => out.push_str(topic),
                Part::Key => out.push_str(&key_token(key, room)),
            }
        }
        out
    }
}

/// The librdkafka configuration of a bridge: Herald's defaults, then the user's
/// `properties`, then what Herald must own (never commit; statistics for readiness
/// and lag; the brokers and group of this node).
pub fn client_config(s: &KafkaSettings, group_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("client.id", format!("herald-{}", s.name))
        // Out of range (a broker that lost its data, retention passed us by): read
        // what the partition holds rather than skip to its end.
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // Live views: ask for records as soon as they exist.
        .set("fetch.wait.max.ms", "100")
        .set("socket.keepalive.enable", "true")
        .set("reconnect.backoff.ms", "250")
        .set("reconnect.backoff.max.ms", "5000");
    for (k, v) in &s.properties {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &s.brokers)
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("statistics.interval.ms", "1000");
    c
}

/// Checks a bridge's settings the way librdkafka will read them, without
/// connecting: property names and values, and the template. For config validation.
pub fn check(s: &KafkaSettings) -> Result<(), (&'static str, String)> {
    let owned = [
        ("bootstrap.servers", "use `brokers`"),
        ("group.id", "each node has its own, `herald-<node>-<name>`"),
        ("enable.auto.commit", "the bridge never commits"),
    ];
    if let Some((k, why)) = owned.iter().find(|(k, _)| s.properties.contains_key(*k)) {
        return Err(("properties", format!("`{k}` is set by Herald ({why})")));
    }
    Template::parse(&s.topic_template).map_err(|e| ("topic_template", e))?;
    client_config(s, "herald-check")
        .create_native_config()
        .map(drop)
        .map_err(|e| ("properties", e.to_string()))
}

/// What the librdkafka callbacks share with the bridge.
pub struct BridgeContext {
    name: String,
    counters: Arc<BridgeCounters>,
    errors: Mutex<Throttle>,
    /// Told when the brokers become unreachable (the bridge replaces its client).
    outage: Arc<tokio::sync::Notify>,
}

/// Lets through one line per [`LOG_EVERY`] and counts the rest.
#[derive(Debug, Default)]
struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// `Some(suppressed since the last line)` when a line may be written now.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

impl BridgeContext {
    fn set_connected(&self, up: bool) {
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

impl ClientContext for BridgeContext {
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

impl ConsumerContext for BridgeContext {}

type Kafka = StreamConsumer<BridgeContext>;

/// The Kafka bridge actor.
pub struct KafkaBridge {
    settings: Arc<KafkaSettings>,
    sink: EventSink,
    status: StatusSink,
    counters: Arc<BridgeCounters>,
    group_id: String,
}

impl KafkaBridge {
    /// A bridge for `settings` on node `node` (its `group.id` is
    /// `herald-<node>-<name>`: never shared with another node).
    pub fn new(
        settings: KafkaSettings,
        node: &str,
        sink: EventSink,
        status: StatusSink,
        counters: Arc<BridgeCounters>,
    ) -> Self {
        let group_id = format!("herald-{node}-{}", settings.name);
        KafkaBridge {
            settings: Arc::new(settings),
            sink,
            status,
            counters,
            group_id,
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
    }
}

/// Reads records and hands each to the broker without waiting.
async fn consume(
    consumer: Arc<Kafka>,
    template: Template,
    sink: EventSink,
    counters: Arc<BridgeCounters>,
    name: String,
) {
    let mut errors = Throttle::default();
    let mut stream = consumer.stream();
    while let Some(record) = stream.next().await {
        match record {
            Ok(m) => {
                counters.add(&counters.received, 1);
                if sink.try_send(event_for(&template, &m)).is_err() {
                    counters.add(&counters.dropped, 1);
                }
            }
            Err(e) => {
                if let Some(suppressed) = errors.allow() {
                    warn!(bridge = %name, error = %e, suppressed, "kafka consume error");
                }
            }
        }
    }
}

/// A partition to add to the assignment, with the offset it starts at.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NewPartition {
    topic: String,
    id: i32,
    offset: i64,
}

/// Partitions of every configured topic that `assigned` lacks, each with a concrete
/// start offset. Blocking (metadata and watermark requests).
///
/// Offsets are resolved here rather than left to librdkafka (`Offset::End` is
/// resolved by librdkafka after `assign` returns), so that once the bridge reports
/// Ready every record produced afterwards is delivered: `/readyz` tells the truth.
/// The first partitions of a topic start at `start`; partitions that appear later
/// (a topic grew, or was created while Herald ran) start at their beginning.
fn plan(
    consumer: &Kafka,
    s: &KafkaSettings,
    assigned: &BTreeSet<(String, i32)>,
    resume: &Resume,
) -> Result<Vec<NewPartition>, KafkaError> {
    let known_topics = &resume.known_topics;
    let unreachable = |e: rdkafka::error::KafkaError| KafkaError::Unreachable {
        brokers: s.brokers.clone(),
        message: e.to_string(),
    };
    let mut new = Vec::new();
    for topic in &s.topics {
        let md = consumer
            .fetch_metadata(Some(topic), METADATA_TIMEOUT)
            .map_err(unreachable)?;
        let ids: Vec<i32> = match md.topics().iter().find(|t| t.name() == topic) {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                t.partitions().iter().map(|p| p.id()).collect()
            }
            other => {
                return Err(KafkaError::MissingTopic {
                    topic: topic.clone(),
                    message: other
                        .and_then(|t| t.error())
                        .map_or_else(|| "no partitions".to_owned(), |e| format!("{e:?}")),
                })
            }
        };
        let first = !known_topics.contains(topic);
        for id in ids {
            if assigned.contains(&(topic.clone(), id)) {
                continue;
            }
            // Where the previous client of this bridge stood (after an outage).
            if let Some(&offset) = resume.positions.get(&(topic.clone(), id)) {
                new.push(NewPartition {
                    topic: topic.clone(),
                    id,
                    offset,
                });
                continue;
            }
            let (low, high) = consumer
                .fetch_watermarks(topic, id, METADATA_TIMEOUT)
                .map_err(unreachable)?;
            let offset = match (first, s.start) {
                (false, _) | (true, Start::Earliest) => low,
                (true, Start::Latest) => high,
                (true, Start::Last(n)) => (high - i64::from(n)).max(low),
            };
            new.push(NewPartition {
                topic: topic.clone(),
                id,
                offset,
            });
        }
    }
    Ok(new)
}

/// What a new client takes over from the previous one after an outage.
#[derive(Debug, Default, Clone)]
struct Resume {
    /// Topics whose first partitions were already placed by `start`.
    known_topics: BTreeSet<String>,
    /// Next offset to read per partition.
    positions: BTreeMap<(String, i32), i64>,
}

/// What `placed` holds now (a poisoned lock holds nothing usable).
fn snapshot(placed: &Mutex<Resume>) -> Resume {
    placed.lock().map(|r| r.clone()).unwrap_or_default()
}

/// Every assigned partition's next offset: its position when it has read something,
/// else the offset it was assigned at (`placed`).
fn positions(consumer: &Kafka, placed: Resume) -> Resume {
    let mut out = placed;
    if let Ok(tpl) = consumer.position() {
        for e in tpl.elements() {
            if let Offset::Offset(n) = e.offset() {
                out.positions
                    .insert((e.topic().to_owned(), e.partition()), n);
            }
        }
    }
    out
}

/// Resolves when the brokers become unreachable while partitions are assigned.
async fn outage(signal: &tokio::sync::Notify, placed: &Mutex<Resume>) {
    loop {
        signal.notified().await;
        if placed.lock().is_ok_and(|r| !r.positions.is_empty()) {
            return;
        }
    }
}

/// Keeps the assignment complete (every partition of every topic) and the status
/// true: Ready only when every topic's partitions are assigned and a broker is up.
/// Records in `placed` where it assigned each partition, for a client that replaces
/// this one after an outage (see [`run`]).
async fn supervise(
    consumer: Arc<Kafka>,
    s: Arc<KafkaSettings>,
    status: StatusSink,
    counters: Arc<BridgeCounters>,
    placed: Arc<Mutex<Resume>>,
    first_problem: String,
) {
    let mut assigned: BTreeSet<(String, i32)> = BTreeSet::new();
    let mut problem: Option<String> = Some(first_problem);
    let mut last: Option<BridgeStatus> = None;
    let mut retry = RETRY_MIN;
    let mut next_metadata = Instant::now();
    let refresh = Duration::from_millis(s.metadata_refresh_ms.max(100));
    let mut failures = Throttle::default();
    let mut was_up = false;
    loop {
        // Brokers back after an outage: retry at once rather than after the backoff.
        let up = counters.connected.load(Relaxed);
        if up && !was_up && problem.is_some() {
            next_metadata = Instant::now();
        }
        was_up = up;
        if Instant::now() >= next_metadata {
            let (c, settings) = (consumer.clone(), s.clone());
            let r = snapshot(&placed);
            let a = assigned.clone();
            let result = tokio::task::spawn_blocking(move || plan(&c, &settings, &a, &r))
                .await
                .unwrap_or_else(|e| {
                    Err(KafkaError::Unreachable {
                        brokers: s.brokers.clone(),
                        message: e.to_string(),
                    })
                })
                .and_then(|new| {
                    assign(&consumer, &s, &new)?;
                    Ok(new)
                });
            match result {
                Ok(new) => {
                    // A metadata answer proves a broker is reachable; the
                    // statistics callback may not have said so yet.
                    consumer.context().set_connected(true);
                    if let Ok(mut r) = placed.lock() {
                        for p in &new {
                            r.positions.insert((p.topic.clone(), p.id), p.offset);
                        }
                        r.known_topics.extend(s.topics.iter().cloned());
                    }
                    assigned.extend(new.into_iter().map(|p| (p.topic, p.id)));
                    problem = None;
                    retry = RETRY_MIN;
                    next_metadata = Instant::now() + refresh;
                }
                Err(e) => {
                    if let KafkaError::Unreachable { .. } = e {
                        consumer.context().set_connected(false);
                    }
                    if let Some(suppressed) = failures.allow() {
                        warn!(bridge = %s.name, error = %e, suppressed, "kafka bridge not ready");
                    }
                    problem = Some(e.to_string());
                    next_metadata = Instant::now() + retry;
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
        let now = match &problem {
            Some(why) => BridgeStatus::Down(why.clone()),
            None if !counters.connected.load(Relaxed) => {
                BridgeStatus::Down("no Kafka broker reachable; reconnecting".into())
            }
            None => BridgeStatus::Ready,
        };
        if last.as_ref() != Some(&now) {
            if now.is_ready() {
                info!(bridge = %s.name, topics = ?s.topics, partitions = assigned.len(), "kafka bridge ready");
            }
            status(now.clone());
            last = Some(now);
        }
        tokio::time::sleep(TICK).await;
    }
}

/// Adds `new` to the consumer's assignment.
fn assign(consumer: &Kafka, s: &KafkaSettings, new: &[NewPartition]) -> Result<(), KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for p in new {
        tpl.add_partition_offset(&p.topic, p.id, Offset::Offset(p.offset))
            .map_err(|e| KafkaError::Assign {
                topic: p.topic.clone(),
                message: e.to_string(),
            })?;
    }
    if tpl.count() > 0 {
        consumer
            .incremental_assign(&tpl)
            .map_err(|e| KafkaError::Assign {
                topic: new.first().map(|p| p.topic.clone()).unwrap_or_default(),
                message: e.to_string(),
            })?;
        info!(bridge = %s.name, partitions = tpl.count(), start = %s.start, "kafka partitions assigned");
    }
    Ok(())
}

/// Runs the bridge: a client, its consumer loop and its supervisor; after an
/// outage, a new client that resumes where the last one stood (see the module doc).
async fn run(
    s: Arc<KafkaSettings>,
    group_id: String,
    template: Template,
    sink: EventSink,
    status: StatusSink,
    counters: Arc<BridgeCounters>,
) {
    let mut resume = Resume::default();
    let mut first_problem = "starting".to_owned();
    loop {
        let signal = Arc::new(tokio::sync::Notify::new());
        let context = BridgeContext {
            name: s.name.clone(),
            counters: counters.clone(),
            errors: Mutex::new(Throttle::default()),
            outage: signal.clone(),
        };
        let consumer = match client_config(&s, &group_id).create_with_context::<_, Kafka>(context) {
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
        // In a block, so that both tasks (and their handles on the client) are gone
        // before the client is dropped below.
        {
            let records = consume(
                consumer.clone(),
                template.clone(),
                sink.clone(),
                counters.clone(),
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
            futures_util::pin_mut!(records, supervisor, down);
            let either = futures_util::future::select(supervisor, down);
            if let futures_util::future::Either::Left(_) =
                futures_util::future::select(records, either).await
            {
                // The record stream ended: the client is closing.
                return;
            }
        }
        resume = positions(&consumer, snapshot(&placed));
        info!(bridge = %s.name, partitions = resume.positions.len(), "kafka brokers unreachable; replacing the client, which resumes at its positions");
        first_problem = "no Kafka broker reachable; reconnecting".to_owned();
        // Closing a client may wait on librdkafka's threads: not on this one.
        let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
    }
}

impl Actor for KafkaBridge {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        (self.status)(BridgeStatus::Starting);
        let s = self.settings.clone();
        let template = match Template::parse(&s.topic_template) {
            Ok(t) => t,
            Err(e) => {
                // Config validation makes this unreachable for a checked config.
                let e = KafkaError::Config(e);
                warn!(bridge = %s.name, error = %e, "kafka bridge cannot start");
                (self.status)(BridgeStatus::Down(e.to_string()));
                return;
            }
        };
        info!(bridge = %s.name, brokers = %s.brokers, topics = ?s.topics, start = %s.start, group_id = %self.group_id, "kafka bridge starting");
        ctx.spawn(
            run(
                s,
                self.group_id.clone(),
                template,
                self.sink.clone(),
                self.status.clone(),
                self.counters.clone(),
            )
            .into_actor(self),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_become_one_valid_token() {
        assert_eq!(key_token(Some(b"order-7"), 200), "order-7");
        assert_eq!(key_token(Some(b"a.b c/d"), 200), "a_b_c_d");
        assert_eq!(key_token(Some("zürich".as_bytes()), 200), "z_rich");
        assert_eq!(key_token(Some(&[0xff, 0x41]), 200), "_A");
        assert_eq!(key_token(Some(b""), 200), "_");
        assert_eq!(key_token(None, 200), "_");
        assert_eq!(key_token(Some(b"abcdef"), 3), "abc");
        assert_eq!(key_token(Some(b"abc"), 0), "a");
    }

    #[test]
    fn templates_render_topics_within_the_limit() {
        let t = Template::parse("{topic}.{key}").expect("valid");
        assert!(t.uses_key());
        assert_eq!(t.render("orders", Some(b"order-7")), "orders.order-7");
        assert_eq!(t.render("orders", None), "orders._");
        let long = vec![b'k'; 1000];
        assert_eq!(t.render("orders", Some(&long)).len(), 255);
        let t = Template::parse("kafka.{topic}").expect("valid");
        assert!(!t.uses_key());
        assert_eq!(t.render("orders", Some(b"x")), "kafka.orders");
        assert!(Template::parse("{topic}.{partition}").is_err());
        assert!(Template::parse("").is_err());
    }

    #[test]
    fn herald_owns_commit_group_and_brokers() {
        let mut s = KafkaSettings::default();
        assert!(check(&s).is_ok());
        s.properties
            .insert("enable.auto.commit".into(), "true".into());
        assert_eq!(check(&s).map_err(|e| e.0), Err("properties"));
        s.properties.clear();
        s.properties.insert("no.such.property".into(), "1".into());
        let err = check(&s).expect_err("unknown property");
        assert!(err.1.contains("no.such.property"), "{}", err.1);
        s.properties.clear();
        s.properties
            .insert("fetch.wait.max.ms".into(), "not a number".into());
        assert!(check(&s).is_err());
    }

    /// Against rdkafka's in-process `MockCluster`: fast checks of the assignment
    /// and hand-off logic (the real-broker scenarios are in tests/kafka.rs).
    mod mock {
        use super::super::*;
        use rdkafka::mocking::MockCluster;
        use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
        use std::sync::atomic::AtomicUsize;

        /// Records what reaches it; optionally slow, with a one-slot mailbox.
        struct Sink {
            got: Arc<Mutex<Vec<BridgeEvent>>>,
            delay: Duration,
            capacity: usize,
        }

        impl Actor for Sink {
            type Context = Context<Self>;
            fn started(&mut self, ctx: &mut Self::Context) {
                ctx.set_mailbox_capacity(self.capacity);
            }
        }

        impl Handler<BridgeEvent> for Sink {
            type Result = ();
            fn handle(&mut self, e: BridgeEvent, _: &mut Self::Context) {
                std::thread::sleep(self.delay);
                self.got.lock().expect("lock").push(e);
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

        /// Starts a bridge on `cluster` whose events go to a sink on its own
        /// arbiter; returns what the sink collects, the counters and the status.
        fn bridge(
            cluster: &MockCluster<'_, impl ClientContext>,
            start: Start,
            delay: Duration,
            capacity: usize,
        ) -> (
            Arc<Mutex<Vec<BridgeEvent>>>,
            Arc<BridgeCounters>,
            Arc<AtomicUsize>,
        ) {
            let got = Arc::new(Mutex::new(Vec::new()));
            let g = got.clone();
            let sink = Sink::start_in_arbiter(&actix::Arbiter::new().handle(), move |_| Sink {
                got: g,
                delay,
                capacity,
            });
            let ready = Arc::new(AtomicUsize::new(0));
            let r = ready.clone();
            let status: StatusSink = Arc::new(move |s: BridgeStatus| {
                if s.is_ready() {
                    r.fetch_add(1, Relaxed);
                }
            });
            let counters = Arc::new(BridgeCounters::default());
            let settings = KafkaSettings {
                brokers: cluster.bootstrap_servers(),
                start,
                ..KafkaSettings::default()
            };
            KafkaBridge::new(settings, "test", sink.recipient(), status, counters.clone()).start();
            (got, counters, ready)
        }

        async fn until(what: &str, mut f: impl FnMut() -> bool) {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !f() {
                assert!(Instant::now() < deadline, "timed out waiting for {what}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }

        #[actix_rt::test]
        async fn last_n_replays_the_tail_of_every_partition_then_goes_live() {
            let cluster = MockCluster::new(1).expect("mock cluster");
            cluster.create_topic("orders", 2, 1).expect("topic");
            for p in 0..2 {
                for i in 0..4 {
                    produce(&cluster, p, &format!("{p}-{i}"));
                }
            }
            let (got, _, ready) = bridge(&cluster, Start::Last(1), Duration::ZERO, 1024);
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

        #[actix_rt::test]
        async fn latest_skips_what_was_there_before_ready() {
            let cluster = MockCluster::new(1).expect("mock cluster");
            cluster.create_topic("orders", 2, 1).expect("topic");
            produce(&cluster, 0, "old");
            let (got, _, ready) = bridge(&cluster, Start::Latest, Duration::ZERO, 1024);
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

        #[actix_rt::test]
        async fn a_full_hand_off_drops_and_counts_instead_of_buffering() {
            let cluster = MockCluster::new(1).expect("mock cluster");
            cluster.create_topic("orders", 1, 1).expect("topic");
            let records: Vec<(i32, String)> = (0..200).map(|i| (0, i.to_string())).collect();
            produce_all(&cluster, &records);
            let (got, counters, _) = bridge(&cluster, Start::Earliest, Duration::from_millis(5), 1);
            until("200 received", || counters.received.load(Relaxed) == 200).await;
            let dropped = || counters.dropped.load(Relaxed) as usize;
            until("every record delivered or dropped", || {
                got.lock().expect("lock").len() + dropped() == 200
            })
            .await;
            assert!(dropped() > 0, "a one-slot, slow sink must overflow");
        }
    }
}
