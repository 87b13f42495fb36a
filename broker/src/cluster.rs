//! The cluster view: which nodes share the backplane, and `GET
//! /api/topics?scope=cluster`, the topics of every node merged.
//!
//! Nodes talk over the backplane's NATS connection on subjects of their own,
//! `$HERALD.<cluster.name>.…`, which no bridge turns into topics (`$` subjects are
//! system traffic):
//! - `….nodes`: every node announces itself every [`ANNOUNCE_EVERY`] (connections,
//!   topics, uptime, bridges). A node not heard from for three periods (neither an
//!   announcement nor an answer) is forgotten.
//! - `….topics`: a request for this node's topics and patterns; every node answers.
//!   The asking node waits at most [`ANSWER_WITHIN`] and lists every known node that
//!   did not answer as `missing`, never silently leaving it out.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use herald_bridges::nats::{async_nats, ClientSlot};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::broker::Broker;
use crate::topics::message::{PatternInfo, TopicInfo};

/// How often a node announces itself.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(2);
/// How long a silent node stays known: three periods.
const FORGET_AFTER: Duration = Duration::from_secs(6);
/// How long `scope=cluster` waits for the nodes' answers.
pub(crate) const ANSWER_WITHIN: Duration = Duration::from_secs(1);
/// Most topics one node puts in its answer; past it the answer says how many it
/// left out (`truncated`), so an answer stays within NATS' payload limit.
const MAX_TOPICS_PER_NODE: usize = 10_000;

/// What a node says about itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct NodeInfo {
    pub(crate) node: String,
    pub(crate) connections: usize,
    pub(crate) topics: i64,
    pub(crate) uptime_ms: u64,
    /// Each bridge: `"ready"`, or why it is not.
    pub(crate) bridges: BTreeMap<String, String>,
}

/// One node's answer to a topics request.
#[derive(Debug, Serialize, Deserialize)]
struct Answer {
    node: NodeInfo,
    topics: Vec<TopicInfo>,
    patterns: Vec<PatternInfo>,
    /// Topics left out past [`MAX_TOPICS_PER_NODE`].
    #[serde(default)]
    truncated: usize,
}

/// The whole cluster's view, as `GET /api/topics?scope=cluster` answers it.
#[derive(Debug, Serialize)]
pub(crate) struct View {
    pub(crate) topics: Vec<TopicInfo>,
    /// Topics the caller may see, before a `limit`.
    pub(crate) total: usize,
    pub(crate) patterns: Vec<PatternInfo>,
    pub(crate) nodes: Vec<NodeInfo>,
    pub(crate) missing: Vec<String>,
    /// Topics nodes left out of their answers (absent when none).
    #[serde(skip_serializing_if = "is_zero")]
    pub(crate) truncated: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// This node's membership: the nodes it has heard from, and its connection.
#[derive(Default)]
pub(crate) struct Cluster {
    /// Node → when it last announced itself.
    known: Mutex<HashMap<String, Instant>>,
    client: Mutex<Option<(async_nats::Client, String)>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").finish_non_exhaustive()
    }
}

impl Cluster {
    /// Nodes heard from within [`FORGET_AFTER`], this one included.
    fn known(&self) -> Vec<String> {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known.retain(|_, at| at.elapsed() < FORGET_AFTER);
        let mut nodes: Vec<String> = known.keys().cloned().collect();
        nodes.sort();
        nodes
    }

    fn heard(&self, node: String) {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node, Instant::now());
    }
}

/// What this node says about itself now.
pub(crate) fn node_info(broker: &Broker) -> NodeInfo {
    NodeInfo {
        node: broker.node().to_owned(),
        connections: broker.open_sessions(),
        topics: crate::metrics::METRICS.topics(),
        uptime_ms: u64::try_from(broker.uptime().as_millis()).unwrap_or(u64::MAX),
        bridges: broker.readiness().statuses(),
    }
}

/// Starts announcing this node and answering topics requests once the backplane's
/// connection `slot` exists (a task on the current thread).
pub(crate) fn start(broker: Broker, slot: ClientSlot) {
    actix_rt::spawn(async move {
        let client = herald_bridges::nats::connection(&slot).await;
        let root = format!("$HERALD.{}", broker.config().cluster.name);
        if let Err(e) = serve(&broker, &client, &root).await {
            warn!(error = %e, "cluster view stopped: this node neither announces itself nor answers");
        }
    });
}

async fn serve(
    broker: &Broker,
    client: &async_nats::Client,
    root: &str,
) -> Result<(), async_nats::Error> {
    let nodes_subject = format!("{root}.nodes");
    let topics_subject = format!("{root}.topics");
    let mut announcements = client.subscribe(nodes_subject.clone()).await?;
    let mut requests = client.subscribe(topics_subject.clone()).await?;
    *broker
        .cluster()
        .client
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some((client.clone(), topics_subject));
    info!(subjects = %format!("{root}.>"), "cluster view: announcing this node");
    let mut tick = tokio::time::interval(ANNOUNCE_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                broker.cluster().heard(broker.node().to_owned());
                if let Ok(payload) = serde_json::to_vec(&node_info(broker)) {
                    // Best effort: a lost announcement is repeated next period.
                    let _ = client.publish(nodes_subject.clone(), payload.into()).await;
                }
            }
            Some(msg) = announcements.next() => {
                if let Ok(info) = serde_json::from_slice::<NodeInfo>(&msg.payload) {
                    broker.cluster().heard(info.node);
                }
            }
            Some(msg) = requests.next() => {
                if let Some(reply) = msg.reply {
                    let (broker, client) = (broker.clone(), client.clone());
                    actix_rt::spawn(async move {
                        let (mut topics, patterns) = broker.registry().list().await;
                        let truncated = topics.len().saturating_sub(MAX_TOPICS_PER_NODE);
                        topics.truncate(MAX_TOPICS_PER_NODE);
                        let answer = Answer { node: node_info(&broker), topics, patterns, truncated };
                        if let Ok(payload) = serde_json::to_vec(&answer) {
                            let _ = client.publish(reply, payload.into()).await;
                        }
                    });
                }
            }
            else => return Ok(()),
        }
    }
}

/// The cluster's topics, patterns and nodes: every known node asked, answers merged,
/// the silent ones listed as missing. Without a backplane (or before it connects),
/// this node alone.
pub(crate) async fn view(broker: &Broker) -> View {
    let connection = broker
        .cluster()
        .client
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let answers = match connection {
        Some((client, subject)) => ask(&client, &subject).await,
        None => {
            let (topics, patterns) = broker.registry().list().await;
            vec![Answer {
                node: node_info(broker),
                topics,
                patterns,
                truncated: 0,
            }]
        }
    };
    // An answer proves a node alive as well as an announcement does.
    for answer in &answers {
        broker.cluster().heard(answer.node.node.clone());
    }
    let known = broker.cluster().known();
    merge(answers, &known)
}

/// Asks every node for its topics; collects the answers that come within
/// [`ANSWER_WITHIN`].
async fn ask(client: &async_nats::Client, subject: &str) -> Vec<Answer> {
    let inbox = client.new_inbox();
    let Ok(mut replies) = client.subscribe(inbox.clone()).await else {
        return Vec::new();
    };
    if client
        .publish_with_reply(subject.to_owned(), inbox, bytes::Bytes::new())
        .await
        .is_err()
    {
        return Vec::new();
    }
    let mut answers = Vec::new();
    let deadline = tokio::time::Instant::now() + ANSWER_WITHIN;
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, replies.next()).await {
        if let Ok(answer) = serde_json::from_slice::<Answer>(&msg.payload) {
            answers.push(answer);
        }
    }
    answers
}

/// Topics merged by name (`subscribers` and `exact` summed, the highest `seq` and
/// `events`, the
/// latest `last_event_ms`), patterns merged by pattern, and every known node that did
/// not answer listed as missing.
fn merge(answers: Vec<Answer>, known: &[String]) -> View {
    let mut topics: BTreeMap<String, TopicInfo> = BTreeMap::new();
    let mut patterns: BTreeMap<String, PatternInfo> = BTreeMap::new();
    let mut nodes = Vec::new();
    let mut truncated = 0;
    for answer in answers {
        for t in answer.topics {
            match topics.get_mut(&t.topic) {
                Some(row) => {
                    row.subscribers += t.subscribers;
                    row.exact += t.exact;
                    row.seq = row.seq.max(t.seq);
                    row.events = row.events.max(t.events);
                    row.last_event_ms = row.last_event_ms.max(t.last_event_ms);
                }
                None => {
                    topics.insert(t.topic.clone(), t);
                }
            }
        }
        for p in answer.patterns {
            patterns
                .entry(p.pattern.clone())
                .and_modify(|row| row.subscribers += p.subscribers)
                .or_insert(p);
        }
        truncated += answer.truncated;
        nodes.push(answer.node);
    }
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    nodes.dedup_by(|a, b| a.node == b.node);
    let missing = known
        .iter()
        .filter(|k| !nodes.iter().any(|n| &n.node == *k))
        .cloned()
        .collect();
    View {
        total: topics.len(),
        topics: topics.into_values().collect(),
        patterns: patterns.into_values().collect(),
        nodes,
        missing,
        truncated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> NodeInfo {
        NodeInfo {
            node: name.into(),
            connections: 1,
            topics: 1,
            uptime_ms: 5,
            bridges: BTreeMap::new(),
        }
    }

    fn topic(
        name: &str,
        subscribers: usize,
        exact: usize,
        seq: u64,
        last: Option<u64>,
    ) -> TopicInfo {
        TopicInfo {
            topic: name.into(),
            subscribers,
            exact,
            seq,
            last_event_ms: last,
            events: None,
        }
    }

    #[test]
    fn answers_merge_by_name_and_silent_nodes_are_missing() {
        let a = Answer {
            node: node("a"),
            topics: vec![topic("x", 2, 1, 7, Some(10)), topic("y", 1, 1, 1, None)],
            patterns: vec![PatternInfo {
                pattern: "x.*".into(),
                subscribers: 1,
            }],
            truncated: 0,
        };
        let b = Answer {
            node: node("b"),
            topics: vec![topic("x", 3, 0, 9, Some(8))],
            patterns: vec![PatternInfo {
                pattern: "x.*".into(),
                subscribers: 2,
            }],
            truncated: 4,
        };
        let view = merge(vec![b, a], &["a".into(), "b".into(), "c".into()]);
        let x = &view.topics[0];
        assert_eq!(
            (
                x.topic.as_str(),
                x.subscribers,
                x.exact,
                x.seq,
                x.last_event_ms
            ),
            ("x", 5, 1, 9, Some(10))
        );
        assert_eq!(view.topics[1].topic, "y");
        assert_eq!(view.patterns[0].subscribers, 3);
        assert_eq!(
            view.nodes
                .iter()
                .map(|n| n.node.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(view.missing, ["c"]);
        assert_eq!(view.truncated, 4);
    }
}
