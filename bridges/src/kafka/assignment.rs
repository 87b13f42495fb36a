//! The assignment: every partition of every configured topic, each started at a
//! concrete offset, kept complete by the supervisor, which also keeps the bridge's
//! status true; and what a replacement client resumes from after an outage.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer as _;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use super::callbacks::{Kafka, Throttle};
use super::{KafkaError, KafkaSettings, Start, METADATA_TIMEOUT, RETRY_MAX, RETRY_MIN, TICK};
use crate::backoff::Backoff;
use crate::{BridgeCounters, BridgeStatus, StatusSink};

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
        source: Box::new(e),
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
pub(super) struct Resume {
    /// Topics whose first partitions were already placed by `start`.
    pub(super) known_topics: BTreeSet<String>,
    /// Next offset to read per partition.
    pub(super) positions: BTreeMap<(String, i32), i64>,
}

/// What `placed` holds now (a poisoned lock holds nothing usable).
pub(super) fn snapshot(placed: &Mutex<Resume>) -> Resume {
    placed.lock().map(|r| r.clone()).unwrap_or_default()
}

/// Every assigned partition's next offset: its position when it has read something,
/// else the offset it was assigned at (`placed`).
pub(super) fn positions(consumer: &Kafka, placed: Resume) -> Resume {
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
pub(super) async fn outage(signal: &tokio::sync::Notify, placed: &Mutex<Resume>) {
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
/// this one after an outage (see `clients` in `mod.rs`).
pub(super) async fn supervise(
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
    let mut retry = Backoff::new(RETRY_MIN, RETRY_MAX);
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
                        source: Box::new(e),
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
                    retry.reset();
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
                    next_metadata = Instant::now() + retry.failed();
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
            .map_err(|source| KafkaError::Assign {
                topic: p.topic.clone(),
                source,
            })?;
    }
    if tpl.count() > 0 {
        consumer
            .incremental_assign(&tpl)
            .map_err(|source| KafkaError::Assign {
                topic: new.first().map(|p| p.topic.clone()).unwrap_or_default(),
                source,
            })?;
        info!(bridge = %s.name, partitions = tpl.count(), start = %s.start, "kafka partitions assigned");
    }
    Ok(())
}
