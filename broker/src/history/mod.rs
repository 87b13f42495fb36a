//! Cluster history on JetStream (`cluster.history = "jetstream"`,
//! docs/protocol.md#cluster-history): one stream on the backplane's NATS holds every
//! publish that enters through the backplane, and every node reads it in stream
//! order, so an event's position (its stream sequence) is the same on every node and
//! outlives restarts.
//!
//! - Publishing (`publish/backplane.rs`) stores each event in the stream and waits
//!   for the stream's acknowledgement.
//! - Reading: the backplane bridge reads the stream with an ordered consumer that
//!   starts with the last message of every subject, then everything new
//!   (`publish/bridges.rs` sets that up). Each shard then knows every topic's last
//!   position before any later event of it arrives, which is what makes `prev` the
//!   same everywhere (`topics/registry.rs`).
//! - Here: the stream itself (created or updated at start, [`stream`]), the
//!   cluster-wide epoch it gives (its creation time), and reading events back by
//!   position when a node's in-memory ring does not hold them ([`read`]).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use herald_bridges::nats::{async_nats, ClientSlot, NatsSettings};
use tracing::{error, info, warn};

use crate::broker::Readiness;
use crate::config::Config;

mod read;
mod stream;

pub(crate) use read::Stored;
use stream::stream_error as stream_error_of;

/// How often a node checks that the stream it reads is still the one it started
/// with (someone may have deleted and recreated it).
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Why the stream could not be set up or read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HistoryError {
    #[error("JetStream is not available on the backplane's NATS server: {0}")]
    NoJetStream(String),
    #[error("stream {stream}: {source}")]
    Stream {
        stream: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("not connected to NATS yet")]
    NotConnected,
}

/// What `herald check-config` learnt of the backplane's NATS, short of an error.
pub(crate) enum Checked {
    /// JetStream answers: the note says whether the stream exists yet.
    Ready(String),
    /// The server could not be asked (not running where the check runs, say).
    Unknown(String),
}

/// Asks the backplane's NATS (through `bridge`'s settings, once) whether it offers
/// JetStream and holds stream `name`. `Err` only for a server that answers without
/// JetStream: no node could ever serve there.
pub(crate) async fn check(
    bridge: &herald_bridges::nats::NatsBridge,
    name: &str,
) -> Result<Checked, HistoryError> {
    let client = match tokio::time::timeout(Duration::from_secs(10), bridge.connect_once()).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => return Ok(Checked::Unknown(e)),
        Err(_) => return Ok(Checked::Unknown("connecting to NATS timed out".into())),
    };
    let js = async_nats::jetstream::new(client);
    Ok(match js.get_stream(name).await {
        Ok(_) => Checked::Ready(format!("JetStream is available and stream {name} exists")),
        Err(e) if stream::is_not_found(&e) => Checked::Ready(format!(
            "JetStream is available; the first node to start creates stream {name}"
        )),
        Err(e) if stream::no_jetstream(&e) => return Err(HistoryError::NoJetStream(e.to_string())),
        Err(e) => Checked::Unknown(e.to_string()),
    })
}

/// What the stream is made with (from `[cluster]` and `[history]`).
#[derive(Debug, Clone)]
pub(crate) struct StreamSpec {
    pub(crate) name: String,
    /// `cluster.subject_prefix`: the stream holds `prefix + ">"`.
    pub(crate) prefix: String,
    /// `history.size`: events kept per topic.
    pub(crate) per_subject: usize,
    /// `history.ttl_ms`.
    pub(crate) max_age: Duration,
    pub(crate) replicas: usize,
}

/// A node's handle on the cluster history stream. Shared by the shards' topics
/// (reading back) and the sessions (the epoch).
pub(crate) struct ClusterHistory {
    spec: StreamSpec,
    slot: ClientSlot,
    /// The backplane bridge's settings: a stored message becomes an event the way
    /// the bridge makes one.
    bridge: NatsSettings,
    /// The stream's identity, once it is known: `welcome`'s `epoch`.
    epoch: OnceLock<String>,
    /// Set when the stream was deleted and created again under this node: its
    /// positions and epoch belong to the old one, so it lets no new session in.
    recreated: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for ClusterHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterHistory")
            .field("stream", &self.spec.name)
            .field("epoch", &self.epoch.get())
            .finish_non_exhaustive()
    }
}

impl ClusterHistory {
    /// The history of `config` when it asks for one (`cluster.history =
    /// "jetstream"`), reading through the backplane's connection `slot`.
    pub(crate) fn new(config: &Config, slot: ClientSlot) -> Option<Arc<ClusterHistory>> {
        if config.cluster.history != crate::config::HistoryMode::Jetstream {
            return None;
        }
        let bridge = config
            .bridge
            .nats
            .iter()
            .find(|b| b.name == config.cluster.backplane)?
            .clone();
        Some(Arc::new(ClusterHistory {
            spec: StreamSpec {
                name: config.cluster.history_stream.clone(),
                prefix: config.cluster.subject_prefix.clone(),
                per_subject: config.history.size,
                max_age: Duration::from_millis(config.history.ttl_ms),
                replicas: config.cluster.replicas,
            },
            slot,
            bridge,
            epoch: OnceLock::new(),
            recreated: Default::default(),
        }))
    }

    /// The stream's name.
    pub(crate) fn stream_name(&self) -> &str {
        &self.spec.name
    }

    /// The epoch every node of the cluster gives, once this node has found or made
    /// the stream; `None` before (the node then lets no session in).
    pub(crate) fn epoch(&self) -> Option<&str> {
        self.epoch.get().map(String::as_str)
    }

    /// Whether the stream was recreated since this node started (a restart takes
    /// the new one).
    pub(crate) fn recreated(&self) -> bool {
        self.recreated.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The JetStream context of the backplane's connection, when it is made.
    fn jetstream(&self) -> Result<async_nats::jetstream::Context, HistoryError> {
        let client = self.slot.get().ok_or(HistoryError::NotConnected)?;
        Ok(async_nats::jetstream::new(client.clone()))
    }

    /// Sets up the stream once the backplane is connected, retrying with backoff
    /// (JetStream may come later than NATS), then checks now and then that it is
    /// still the same stream. Runs until the node stops.
    pub(crate) async fn run(self: Arc<Self>, readiness: Arc<Readiness>) {
        let name = self.spec.name.clone();
        readiness.set_history(Some(format!("history stream {name}: not set up yet")));
        let client = herald_bridges::nats::connection(&self.slot).await;
        let js = async_nats::jetstream::new(client);
        let mut retry = herald_bridges::backoff::Backoff::new(
            Duration::from_millis(250),
            Duration::from_secs(30),
        );
        let created = loop {
            match stream::ensure(&js, &self.spec).await {
                Ok(set_up) => {
                    info!(
                        stream = %name,
                        action = set_up.action,
                        subjects = %format!("{}>", self.spec.prefix),
                        max_msgs_per_subject = self.spec.per_subject,
                        max_age_ms = self.spec.max_age.as_millis() as u64,
                        replicas = self.spec.replicas,
                        epoch = %set_up.epoch,
                        "cluster history stream ready"
                    );
                    let _ = self.epoch.set(set_up.epoch);
                    readiness.set_history(None);
                    break set_up.created;
                }
                Err(e) => {
                    let why = e.to_string();
                    warn!(stream = %name, error = %why, "cluster history stream not set up; retrying");
                    readiness.set_history(Some(format!("history stream {name}: {why}")));
                    tokio::time::sleep(retry.failed()).await;
                }
            }
        };
        let mut warned = false;
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            match stream::created(&js, &name).await {
                Ok(now) if now != created && !warned => {
                    warned = true;
                    self.recreated
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    error!(stream = %name, "cluster history stream was deleted and created again: this node's positions belong to the old one; restart it");
                    readiness.set_history(Some(format!(
                        "history stream {name}: recreated since this node started; restart the node"
                    )));
                }
                _ => {}
            }
        }
    }
}
