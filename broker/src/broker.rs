//! [`Broker`]: the running Herald node — configuration, topic registry, node epoch,
//! authenticator, connection limits and the directory of open sessions — as one
//! cheap, clonable handle. The binary builds one; an actix-web application that
//! embeds Herald builds one too and mounts [`Broker::configure`] in its `App`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use actix::{Actor as _, Recipient};
use herald_bridges::{BridgeCounters, BridgeEvent, BridgeStatus};

use crate::admission::ConnectionLimiter;
use crate::auth::{Authenticator, NoAuth};
use crate::config::{Config, ConfigError};
use crate::message::Shutdown;
use crate::registry::{PublishError, Registry};
use crate::topic::TopicSettings;

/// Open sessions, so shutdown can reach each one. Locked on connect and disconnect
/// only, never on the event path.
#[derive(Debug, Default)]
pub struct SessionDirectory {
    sessions: Mutex<HashMap<u64, Recipient<Shutdown>>>,
}

impl SessionDirectory {
    pub(crate) fn insert(&self, id: u64, addr: Recipient<Shutdown>) {
        self.lock().insert(id, addr);
    }

    pub(crate) fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Recipient<Shutdown>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of open sessions.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Asks every open session to close with 1001.
    pub fn shutdown_all(&self) -> usize {
        let sessions = self.lock();
        for addr in sessions.values() {
            addr.do_send(Shutdown);
        }
        sessions.len()
    }
}

/// Status of every configured bridge, for `/readyz`.
#[derive(Debug, Default)]
pub struct Readiness {
    bridges: Mutex<BTreeMap<String, BridgeStatus>>,
}

impl Readiness {
    /// Records a bridge's status (bridges call this as their state changes).
    pub fn set(&self, bridge: &str, status: BridgeStatus) {
        self.bridges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(bridge.to_owned(), status);
    }

    /// `(ready, reasons)`: ready when every bridge is; reasons name the others.
    pub fn check(&self) -> (bool, Vec<String>) {
        let bridges = self.bridges.lock().unwrap_or_else(|p| p.into_inner());
        let reasons: Vec<String> = bridges
            .iter()
            .filter(|(_, s)| !s.is_ready())
            .map(|(name, s)| match s {
                BridgeStatus::Starting => format!("bridge {name}: starting"),
                BridgeStatus::Down(why) => format!("bridge {name}: down: {why}"),
                BridgeStatus::Ready => format!("bridge {name}: ready"),
            })
            .collect();
        (reasons.is_empty(), reasons)
    }
}

struct Inner {
    config: Config,
    registry: Registry,
    epoch: String,
    node: String,
    auth: Arc<dyn Authenticator>,
    limiter: Arc<ConnectionLimiter>,
    sessions: SessionDirectory,
    readiness: Arc<Readiness>,
    /// Counters of every running bridge, by name, for `/metrics`.
    bridges: Vec<(String, Arc<BridgeCounters>)>,
    /// Where publishes go when a cluster backplane is configured.
    #[cfg(feature = "nats")]
    backplane: Option<crate::backplane::Backplane>,
}

/// A running Herald node. Clone it freely.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("node", &self.inner.node)
            .field("epoch", &self.inner.epoch)
            .finish_non_exhaustive()
    }
}

/// CPU cores available to this process (1 when unknown): the default for
/// `server.workers` and `server.shards`.
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Broker {
    /// Validates `config` and starts the topic registry. Must be called inside a
    /// running actix system (e.g. from `#[actix_web::main]`).
    pub fn start(config: Config) -> Result<Broker, ConfigError> {
        config.validate()?;
        let shards = if config.server.shards == 0 {
            cores()
        } else {
            config.server.shards
        };
        let registry = Registry::start(
            shards,
            TopicSettings {
                history_size: config.history.size,
                history_ttl_ms: config.history.ttl_ms,
                mailbox_capacity: config.server.ingest_capacity,
            },
        );
        let node = if config.server.node_id.is_empty() {
            format!("n-{:06x}", rand::random::<u32>() & 0xff_ffff)
        } else {
            config.server.node_id.clone()
        };
        let limiter = ConnectionLimiter::new(
            config.server.max_connections,
            config.server.max_connections_per_ip,
        );
        // Validated above, so building the JWT authenticator cannot fail here.
        let auth: Arc<dyn Authenticator> = match config.auth.mode.as_str() {
            "jwt" => Arc::new(crate::jwt::JwtAuth::new(&config.auth).map_err(|e| {
                ConfigError::Invalid {
                    origin: crate::config::Origin::Defaults,
                    env: String::new(),
                    key: "auth".into(),
                    message: e.to_string(),
                }
            })?),
            _ => Arc::new(NoAuth {
                ticket_ttl_ms: config.auth.ticket_ttl_ms,
            }),
        };
        let readiness = Arc::new(Readiness::default());
        let started = start_bridges(&config, &node, &registry, &readiness);
        Ok(Broker {
            inner: Arc::new(Inner {
                registry,
                epoch: ulid::Ulid::new().to_string(),
                node,
                auth,
                limiter,
                sessions: SessionDirectory::default(),
                readiness,
                bridges: started.counters,
                #[cfg(feature = "nats")]
                backplane: started.backplane,
                config,
            }),
        })
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The topic registry.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// This process's history epoch (a ULID; new on every start).
    pub fn epoch(&self) -> &str {
        &self.inner.epoch
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    pub(crate) fn authenticator(&self) -> &dyn Authenticator {
        &*self.inner.auth
    }

    pub(crate) fn limiter(&self) -> &Arc<ConnectionLimiter> {
        &self.inner.limiter
    }

    /// Open sessions.
    pub fn sessions(&self) -> &SessionDirectory {
        &self.inner.sessions
    }

    /// Bridge statuses for `/readyz`.
    pub fn readiness(&self) -> &Readiness {
        &self.inner.readiness
    }

    /// Counters of every running bridge, by name.
    pub fn bridges(&self) -> &[(String, Arc<BridgeCounters>)] {
        &self.inner.bridges
    }

    /// Checks an event as [`Broker::publish`] would, without publishing it, so a
    /// batch can be refused as a whole before any of it goes out.
    pub fn check(&self, event: &BridgeEvent) -> Result<(), PublishError> {
        crate::pattern::validate_topic(&event.topic)?;
        #[cfg(feature = "nats")]
        if let Some(backplane) = &self.inner.backplane {
            backplane.check(event)?;
        }
        Ok(())
    }

    /// Publishes an event: to the cluster backplane when one is configured (every
    /// node, this one included, receives it through its NATS bridge), else straight
    /// to the local topic. Best-effort: `Ok` means accepted for fan-out, not
    /// delivered. HTTP, WebSocket and embedding applications all publish here.
    pub async fn publish(&self, event: BridgeEvent) -> Result<(), PublishError> {
        #[cfg(feature = "nats")]
        if let Some(backplane) = &self.inner.backplane {
            // The registry validates local publishes; NATS would take any subject.
            crate::pattern::validate_topic(&event.topic)?;
            // Counted in herald_events_in_total when it comes back through the bridge.
            return backplane.publish(event).await;
        }
        self.inner.registry.publish(event)
    }

    /// Mounts Herald's routes (`/ws`, `/api/*`, `/healthz`, `/readyz`, `/metrics`,
    /// `/`) in an actix-web `App`: `App::new().configure(broker.configure())`, or
    /// under a prefix with `web::scope("/realtime").configure(broker.configure())`.
    /// It leaves the app's default service (its 404 handling) alone.
    pub fn configure(&self) -> impl Fn(&mut actix_web::web::ServiceConfig) + Clone + 'static {
        let broker = self.clone();
        move |cfg| crate::http::configure(cfg, broker.clone())
    }

    /// Closes every open session with 1001 (part of graceful shutdown).
    pub fn shutdown(&self) -> usize {
        self.inner.sessions.shutdown_all()
    }
}

/// What [`start_bridges`] started.
struct Started {
    counters: Vec<(String, Arc<BridgeCounters>)>,
    #[cfg(feature = "nats")]
    backplane: Option<crate::backplane::Backplane>,
}

/// Starts every configured bridge, each with its own [`crate::ingress::Ingress`],
/// and the backplane when `cluster.backplane` names one of them.
fn start_bridges(
    config: &Config,
    node: &str,
    registry: &Registry,
    readiness: &Arc<Readiness>,
) -> Started {
    let mut started = Started {
        counters: Vec::new(),
        #[cfg(feature = "nats")]
        backplane: None,
    };
    // What every bridge gets: counters, its own ingress, and a status sink that
    // records its state for /readyz (Starting until it says otherwise).
    #[allow(unused_variables)]
    let wire = |name: &str, started: &mut Started| {
        let counters = Arc::new(BridgeCounters::default());
        let ingress =
            crate::ingress::Ingress::new(registry.clone(), config.server.ingest_capacity).start();
        let owned = name.to_owned();
        let status_readiness = readiness.clone();
        let status: herald_bridges::StatusSink =
            Arc::new(move |status| status_readiness.set(&owned, status));
        status(BridgeStatus::Starting);
        started.counters.push((name.to_owned(), counters.clone()));
        (counters, ingress.recipient(), status)
    };
    #[cfg(feature = "nats")]
    for b in &config.bridge.nats {
        use herald_bridges::nats::NatsBridge;
        let (counters, sink, status) = wire(&b.name, &mut started);
        let client = herald_bridges::nats::ClientSlot::default();
        NatsBridge::new(b.clone(), sink, status, counters.clone(), client.clone()).start();
        if config.cluster.backplane == b.name {
            started.backplane = Some(crate::backplane::Backplane {
                bridge: b.name.clone(),
                client,
                counters,
                prefix: config.cluster.subject_prefix.clone(),
            });
        }
    }
    #[cfg(feature = "kafka")]
    for b in &config.bridge.kafka {
        let (counters, sink, status) = wire(&b.name, &mut started);
        herald_bridges::kafka::KafkaBridge::new(b.clone(), node, sink, status, counters).start();
    }
    let _ = (&wire, node);
    started
}
