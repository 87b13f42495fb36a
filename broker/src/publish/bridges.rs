//! The bridges' way into the topic layer, and their lives: each configured bridge is
//! prepared once at start (its settings turned into what its client needs, errors
//! named by config key), runs as a task with a sink straight into the registry, and
//! stops when [`Bridges::stop`] cancels it.
//!
//! The sink validates each event's topic once and hands the event to its topic's
//! shard with `try_send`: a bridge never waits for the broker, and an event that does
//! not fit (`server.ingest_capacity` per shard) is dropped and counted, by the
//! registry as `topic_busy` and by the bridge as `herald_bridge_dropped_total`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[cfg(any(feature = "nats", feature = "kafka"))]
use herald_bridges::{BridgeContext, BridgeStatus, StatusSink};
use herald_bridges::{BridgeCounters, BridgeEvent, CancellationToken, EventSink, SinkError};
use tracing::{info, warn};

use super::{PublishError, Publisher};
use crate::broker::Readiness;
use crate::config::{Config, ConfigError};
use crate::topics::Registry;

/// Longest time shutdown waits for the bridges to close their clients.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A configured bridge, prepared at start.
#[derive(Debug)]
pub(crate) enum PreparedBridge {
    #[cfg(feature = "nats")]
    Nats(Box<herald_bridges::nats::NatsBridge>),
    #[cfg(feature = "kafka")]
    Kafka(herald_bridges::kafka::KafkaBridge),
}

/// Prepares every configured bridge; an error names the config key at fault.
pub(crate) fn prepare(config: &Config) -> Result<Vec<PreparedBridge>, ConfigError> {
    #[allow(unused_mut)]
    let mut bridges = Vec::new();
    #[cfg(feature = "nats")]
    for (i, b) in config.bridge.nats.iter().enumerate() {
        let mut b = b.clone();
        if config.cluster.history == crate::config::HistoryMode::Jetstream
            && b.name == config.cluster.backplane
        {
            // The backplane's subjects are read from the history stream, in stream
            // order and with their positions, instead of from core subscriptions.
            b.jetstream = Some(herald_bridges::nats::JetStreamStart {
                stream: config.cluster.history_stream.clone(),
                deliver: herald_bridges::nats::JetStreamDeliver::LastPerSubject,
                positions: true,
            });
        }
        let bridge = herald_bridges::nats::NatsBridge::new(b.clone()).map_err(|why| {
            ConfigError::invalid(
                &format!("bridge.nats[{i}].url"),
                crate::config::mask_url_credentials(&b.url),
                &format!("NATS URLs like nats://127.0.0.1:4222 ({why})"),
            )
        })?;
        bridges.push(PreparedBridge::Nats(Box::new(bridge)));
    }
    #[cfg(feature = "kafka")]
    for (i, b) in config.bridge.kafka.iter().enumerate() {
        let bridge = herald_bridges::kafka::KafkaBridge::new(b.clone())
            .map_err(|(field, why)| ConfigError::at(format!("bridge.kafka[{i}].{field}"), why))?;
        bridges.push(PreparedBridge::Kafka(bridge));
    }
    #[cfg(not(all(feature = "nats", feature = "kafka")))]
    let _ = config;
    Ok(bridges)
}

/// The running bridges: their counters for `/metrics`, the backplane's connection,
/// and what stops them.
#[derive(Debug)]
pub(crate) struct Bridges {
    /// Counters of every bridge, by name.
    counters: Vec<(String, Arc<BridgeCounters>)>,
    /// Cancelled by [`Bridges::stop`].
    cancel: CancellationToken,
    /// The bridge tasks, taken by [`Bridges::stop`].
    tasks: Mutex<Vec<(String, tokio::task::JoinHandle<()>)>>,
    /// Set when [`Bridges::stop`] begins: the backplane refuses publishes from then
    /// on, since a publish handed to a draining NATS client may never be sent.
    stopping: Arc<AtomicBool>,
    #[cfg(feature = "nats")]
    backplane: Option<(
        String,
        herald_bridges::nats::ClientSlot,
        Arc<BridgeCounters>,
    )>,
    /// `cluster.history = "jetstream"`: backplane publishes are stored in the stream.
    #[cfg(feature = "nats")]
    stored: bool,
}

/// The backplane's connection, once made: made before the bridges start, so that
/// what talks over it (the cluster history) can be built before them.
#[cfg(feature = "nats")]
pub(crate) type BackplaneSlot = herald_bridges::nats::ClientSlot;
#[cfg(not(feature = "nats"))]
pub(crate) type BackplaneSlot = ();

/// What a bridge hands its events to: the registry, through a validated topic.
struct TopicSink {
    registry: Registry,
}

impl EventSink for TopicSink {
    fn send(&self, event: BridgeEvent) -> Result<(), SinkError> {
        let refused = |e| match e {
            PublishError::InvalidTopic(e) => SinkError::InvalidTopic(e),
            _ => SinkError::Full,
        };
        // An invalid topic is counted there as `invalid_topic`, a full shard by the
        // registry as `topic_busy`.
        let event = Publisher::validate(event).map_err(refused)?;
        self.registry.publish(event).map_err(refused)
    }

    fn interrupted(&self, topics: &[herald_bridges::topic::Pattern]) {
        let names: Vec<&str> = topics.iter().map(|p| p.as_str()).collect();
        info!(topics = ?names, "source interrupted: the next event of each matching topic shows a seq gap");
        self.registry.interrupted(topics);
    }
}

impl Bridges {
    /// Starts every prepared bridge as a task on the current thread, each reporting
    /// its status to `readiness` (`Starting` until it says otherwise).
    pub(crate) fn start(
        prepared: Vec<PreparedBridge>,
        config: &Config,
        node: &str,
        registry: &Registry,
        readiness: &Arc<Readiness>,
        backplane_slot: BackplaneSlot,
    ) -> Bridges {
        let sink: Arc<dyn EventSink> = Arc::new(TopicSink {
            registry: registry.clone(),
        });
        let cancel = CancellationToken::new();
        let mut bridges = Bridges {
            counters: Vec::new(),
            cancel: cancel.clone(),
            tasks: Mutex::new(Vec::new()),
            stopping: Arc::default(),
            #[cfg(feature = "nats")]
            backplane: None,
            #[cfg(feature = "nats")]
            stored: config.cluster.history == crate::config::HistoryMode::Jetstream,
        };
        #[allow(unused_mut)]
        let mut tasks = Vec::new();
        // Without either bridge feature there is nothing to start.
        #[cfg(not(any(feature = "nats", feature = "kafka")))]
        let _ = (prepared, node, &sink, &cancel, readiness);
        #[cfg(any(feature = "nats", feature = "kafka"))]
        for bridge in prepared {
            let name = match &bridge {
                #[cfg(feature = "nats")]
                PreparedBridge::Nats(b) => b.name().to_owned(),
                #[cfg(feature = "kafka")]
                PreparedBridge::Kafka(b) => b.name().to_owned(),
            };
            let counters = Arc::new(BridgeCounters::default());
            let owned = name.clone();
            let status_readiness = readiness.clone();
            let status: StatusSink = Arc::new(move |status| status_readiness.set(&owned, status));
            status(BridgeStatus::Starting);
            bridges.counters.push((name.clone(), counters.clone()));
            let context = BridgeContext {
                node: node.to_owned(),
                sink: sink.clone(),
                status,
                counters: counters.clone(),
                cancel: cancel.child_token(),
            };
            let task = match bridge {
                #[cfg(feature = "nats")]
                PreparedBridge::Nats(b) => {
                    let slot = if config.cluster.backplane == name {
                        bridges.backplane = Some((name.clone(), backplane_slot.clone(), counters));
                        backplane_slot.clone()
                    } else {
                        herald_bridges::nats::ClientSlot::default()
                    };
                    actix_rt::spawn(b.run(context, slot))
                }
                #[cfg(feature = "kafka")]
                PreparedBridge::Kafka(b) => actix_rt::spawn(b.run(context)),
            };
            tasks.push((name, task));
        }
        #[cfg(not(feature = "nats"))]
        let _ = (config, backplane_slot);
        bridges.tasks = Mutex::new(tasks);
        bridges
    }

    /// Counters of every bridge, by name.
    pub(crate) fn counters(&self) -> &[(String, Arc<BridgeCounters>)] {
        &self.counters
    }

    /// The backplane bridge's connection, when `cluster.backplane` names one.
    #[cfg(feature = "nats")]
    pub(crate) fn backplane_client(&self) -> Option<herald_bridges::nats::ClientSlot> {
        self.backplane.as_ref().map(|(_, slot, _)| slot.clone())
    }

    /// The backplane, when `cluster.backplane` names one of the bridges.
    #[cfg(feature = "nats")]
    pub(super) fn backplane(&self, prefix: &str) -> Option<super::backplane::Backplane> {
        let (bridge, client, counters) = self.backplane.clone()?;
        Some(super::backplane::Backplane {
            bridge,
            client,
            counters,
            prefix: prefix.to_owned(),
            stopping: self.stopping.clone(),
            stored: self.stored,
        })
    }

    /// Stops every bridge: each stops reading, closes its client and returns. Waits
    /// at most [`STOP_TIMEOUT`] in all; returns how many bridges stopped in time.
    pub(crate) async fn stop(&self) -> usize {
        self.stopping.store(true, Ordering::Release);
        self.cancel.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        let total = tasks.len();
        let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
        let mut stopped = 0;
        for (name, mut task) in tasks {
            match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(_) => stopped += 1,
                Err(_) => {
                    warn!(bridge = %name, "bridge did not stop in time; abandoning it");
                    task.abort();
                }
            }
        }
        if total > 0 {
            info!(bridges = total, stopped, "bridges stopped");
        }
        stopped
    }
}
