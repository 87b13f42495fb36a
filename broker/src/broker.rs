//! [`Broker`]: the running Herald node — configuration, topic registry, node epoch,
//! authenticator, connection limits, bridges and the directory of open sessions — as
//! one cheap, clonable handle. The binary builds one; an actix-web application that
//! embeds Herald builds one too and mounts [`Broker::configure`] in its `App`.
//!
//! Start-up: [`Config::validate`] checks the configuration (pure), then
//! [`Components::build`] builds, once, everything that reads files or prepares
//! clients (the JWT verifier, the listener's TLS configuration, the bridges), each
//! error named by its config key. `herald check-config` runs both and stops there.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use actix::Recipient;
use herald_bridges::{BridgeCounters, BridgeEvent, BridgeStatus};

use crate::auth::tickets::{TicketStore, Tickets};
use crate::auth::{Authenticator, NoAuth};
use crate::config::{Config, ConfigError};
use crate::http::admission::ConnectionLimiter;
use crate::publish::{Bridges, Prepared, PublishError, Publisher};
use crate::topics::message::Shutdown;
use crate::topics::topic::TopicSettings;
use crate::topics::{Event, Registry};

/// Open sessions, so shutdown can reach each one. Locked on connect and disconnect
/// only, never on the event path.
#[derive(Debug, Default)]
pub(crate) struct SessionDirectory {
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
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Asks every open session to close with 1001.
    pub(crate) fn shutdown_all(&self) -> usize {
        let sessions = self.lock();
        for addr in sessions.values() {
            addr.do_send(Shutdown);
        }
        sessions.len()
    }
}

/// Status of every configured bridge, for `/readyz`.
#[derive(Debug, Default)]
pub(crate) struct Readiness {
    bridges: Mutex<BTreeMap<String, BridgeStatus>>,
    /// With cluster history: why its stream is not usable, if it is not.
    history: Mutex<Option<String>>,
    /// Bridges that have been ready at least once.
    #[cfg(feature = "nats")]
    was_ready: Mutex<std::collections::BTreeSet<String>>,
}

impl Readiness {
    /// Records whether the cluster history stream is usable (`None`) or why not.
    #[cfg(feature = "nats")]
    pub(crate) fn set_history(&self, why_not: Option<String>) {
        *self.history.lock().unwrap_or_else(|p| p.into_inner()) = why_not;
    }

    /// Records a bridge's status (bridges call this as their state changes).
    #[cfg(any(feature = "nats", feature = "kafka"))]
    pub(crate) fn set(&self, bridge: &str, status: BridgeStatus) {
        #[cfg(feature = "nats")]
        if status.is_ready() {
            self.was_ready
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(bridge.to_owned());
        }
        self.bridges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(bridge.to_owned(), status);
    }

    /// Whether `bridge` has been ready at least once.
    #[cfg(feature = "nats")]
    pub(crate) fn was_ready(&self, bridge: &str) -> bool {
        self.was_ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(bridge)
    }

    /// Every bridge's status: `"ready"`, `"starting"`, or why it is down.
    #[cfg(feature = "nats")]
    pub(crate) fn statuses(&self) -> BTreeMap<String, String> {
        let bridges = self.bridges.lock().unwrap_or_else(|p| p.into_inner());
        bridges
            .iter()
            .map(|(name, s)| {
                let status = match s {
                    BridgeStatus::Ready => "ready".to_owned(),
                    BridgeStatus::Starting => "starting".to_owned(),
                    BridgeStatus::Down(why) => why.clone(),
                };
                (name.clone(), status)
            })
            .collect()
    }

    /// `(ready, reasons)`: ready when every bridge is; reasons name the others.
    pub(crate) fn report(&self) -> (bool, Vec<String>) {
        let bridges = self.bridges.lock().unwrap_or_else(|p| p.into_inner());
        let mut reasons: Vec<String> = bridges
            .iter()
            .filter(|(_, s)| !s.is_ready())
            .map(|(name, s)| match s {
                BridgeStatus::Starting => format!("bridge {name}: starting"),
                BridgeStatus::Down(why) => format!("bridge {name}: down: {why}"),
                BridgeStatus::Ready => format!("bridge {name}: ready"),
            })
            .collect();
        if let Some(why) = &*self.history.lock().unwrap_or_else(|p| p.into_inner()) {
            reasons.push(why.clone());
        }
        (reasons.is_empty(), reasons)
    }
}

/// What start-up builds once from a validated configuration: everything that reads
/// a file or prepares a client. Errors name the config key at fault.
pub struct Components {
    auth: Arc<dyn Authenticator>,
    /// `auth.jwks_url`: fetched once the node starts.
    jwks: Option<Arc<crate::auth::jwks::Jwks>>,
    tls: Option<Arc<rustls::ServerConfig>>,
    bridges: Vec<crate::publish::bridges::PreparedBridge>,
}

impl Components {
    /// What `herald check-config` checks beyond the file: with `cluster.history =
    /// "jetstream"`, that the backplane's NATS offers JetStream. A server that answers
    /// without it is an error naming `cluster.history`; one that cannot be reached
    /// from here is a note (the check may run where NATS is not), as is what it found.
    pub async fn check_servers(&self, config: &Config) -> Result<Vec<String>, ConfigError> {
        #[cfg(feature = "nats")]
        if config.cluster.history == crate::config::HistoryMode::Jetstream {
            let backplane = self.bridges.iter().find_map(|b| match b {
                crate::publish::bridges::PreparedBridge::Nats(n)
                    if n.name() == config.cluster.backplane =>
                {
                    Some(n)
                }
                #[allow(unreachable_patterns)]
                _ => None,
            });
            if let Some(bridge) = backplane {
                let stream = &config.cluster.history_stream;
                return match crate::history::check(bridge, stream).await {
                    Ok(crate::history::Checked::Ready(note)) => {
                        Ok(vec![format!("cluster history: {note}")])
                    }
                    Ok(crate::history::Checked::Unknown(why)) => Ok(vec![format!(
                        "cluster history: could not check the backplane's NATS for JetStream ({why})"
                    )]),
                    Err(e) => Err(config.attribute(ConfigError::at(
                        "cluster.history".into(),
                        format!("`jetstream` needs JetStream on the backplane's NATS server: {e}"),
                    ))),
                };
            }
        }
        #[cfg(not(feature = "nats"))]
        let _ = config;
        Ok(Vec::new())
    }
}

impl std::fmt::Debug for Components {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Components")
            .field("tls", &self.tls.is_some())
            .field("bridges", &self.bridges.len())
            .finish_non_exhaustive()
    }
}

impl Components {
    /// Builds the authenticator, the listener's TLS configuration and the bridges of
    /// `config` (which must be valid: [`Config::validate`]).
    pub fn build(config: &Config) -> Result<Components, ConfigError> {
        let attribute =
            |key: &str, message: String| config.attribute(ConfigError::at(key.into(), message));
        let jwks = crate::auth::jwks::Jwks::new(&config.auth)
            .map_err(|e| attribute(e.key(), e.to_string()))?;
        let auth: Arc<dyn Authenticator> = match config.auth.mode.as_str() {
            "jwt" => Arc::new(
                crate::auth::jwt::JwtAuth::new(&config.auth, jwks.clone())
                    .map_err(|e| attribute(e.key(), e.to_string()))?,
            ),
            _ => Arc::new(NoAuth),
        };
        let s = &config.server;
        let tls = if s.tls_cert_file.is_empty() {
            None
        } else {
            let tls = crate::http::tls::server_config(&s.tls_cert_file, &s.tls_key_file)
                .map_err(|e| attribute(e.key(), e.to_string()))?;
            Some(Arc::new(tls))
        };
        let bridges = crate::publish::bridges::prepare(config).map_err(|e| config.attribute(e))?;
        Ok(Components {
            auth,
            jwks,
            tls,
            bridges,
        })
    }
}

struct Inner {
    config: Config,
    publisher: Publisher,
    /// This process's epoch (without cluster history).
    epoch: String,
    /// With `cluster.history = "jetstream"`: the stream, whose epoch is the one
    /// clients see.
    #[cfg(feature = "nats")]
    history: Option<Arc<crate::history::ClusterHistory>>,
    node: String,
    auth: Arc<dyn Authenticator>,
    /// `auth.jwks_url`, and the task that keeps it fresh (stopped with the node).
    jwks: Option<(Arc<crate::auth::jwks::Jwks>, tokio::task::JoinHandle<()>)>,
    tls: Option<Arc<rustls::ServerConfig>>,
    limiter: Arc<ConnectionLimiter>,
    sessions: SessionDirectory,
    readiness: Arc<Readiness>,
    bridges: Bridges,
    /// Where tickets live: cluster-wide with a backplane and auth on.
    tickets: TicketStore,
    /// `server.trusted_proxies`.
    trusted_proxies: crate::http::forwarded::TrustedProxies,
    /// `auth.ticket_rate_per_s`: tickets per subject and per address.
    ticket_rate: crate::auth::ticket_rate::TicketRate,
    /// The nodes this one has heard from over the backplane.
    #[cfg(feature = "nats")]
    cluster: crate::cluster::Cluster,
    /// When this node started (`uptime_ms` in the cluster view).
    #[cfg(feature = "nats")]
    started: std::time::Instant,
    /// Set by [`Broker::shutdown`]: upgrades are refused, and a session that opens
    /// all the same closes at once with 1001.
    shutting_down: AtomicBool,
    /// Set by [`Broker::drain`]: `/readyz` answers 503.
    draining: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The JWKS refresh holds no reference to the node; it would fetch forever.
        if let Some((_, refresh)) = &self.jwks {
            refresh.abort();
        }
    }
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
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Broker {
    /// Validates `config`, builds its [`Components`], and starts the topic registry
    /// and the bridges. Must be called inside a running actix system (e.g. from
    /// `#[actix_web::main]`).
    pub fn start(config: Config) -> Result<Broker, ConfigError> {
        config.validate().map_err(|e| config.attribute(e))?;
        let components = Components::build(&config)?;
        Ok(Broker::start_with(config, components))
    }

    /// Starts with the [`Components`] already built from `config` (which
    /// [`Config::load`] or [`Config::validate`] has validated): the binary builds
    /// them before it starts logging, so that their errors are reported like every
    /// other configuration error. Must be called inside a running actix system.
    pub fn start_with(config: Config, components: Components) -> Broker {
        if config.session.compression == crate::config::Compression::Deflate {
            crate::protocol::event::share_deflated_events();
        }
        let shards = if config.server.shards == 0 {
            cores()
        } else {
            config.server.shards
        };
        #[allow(clippy::let_unit_value)] // `()` without the `nats` feature
        let backplane_slot = crate::publish::bridges::BackplaneSlot::default();
        #[cfg(feature = "nats")]
        let history = crate::history::ClusterHistory::new(&config, backplane_slot.clone());
        let registry = Registry::start(
            shards,
            TopicSettings {
                history_size: config.history.size,
                history_ttl_ms: config.history.ttl_ms,
                mailbox_capacity: config.server.ingest_capacity,
                #[cfg(feature = "nats")]
                cluster: history.clone(),
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
            config.server.max_upgrades_per_s,
        );
        let readiness = Arc::new(Readiness::default());
        let bridges = Bridges::start(
            components.bridges,
            &config,
            &node,
            &registry,
            &readiness,
            backplane_slot,
        );
        #[cfg(feature = "nats")]
        if let Some(history) = &history {
            actix_rt::spawn(history.clone().run(readiness.clone()));
        }
        let publisher = Publisher::new(registry, &bridges, &config.cluster.subject_prefix);
        let tickets = ticket_store(&config, &bridges);
        let broker = Broker {
            inner: Arc::new(Inner {
                publisher,
                // Time-ordered, so a later start has a later epoch; clients treat it
                // as opaque. With cluster history, the stream's.
                epoch: uuid::Uuid::now_v7().simple().to_string(),
                #[cfg(feature = "nats")]
                history,
                node,
                auth: components.auth,
                jwks: components
                    .jwks
                    .map(|jwks| (jwks.clone(), actix_rt::spawn(jwks.run()))),
                tls: components.tls,
                limiter,
                sessions: SessionDirectory::default(),
                readiness,
                bridges,
                tickets,
                // Validated: every entry parses.
                trusted_proxies: crate::http::forwarded::TrustedProxies::parse(
                    &config.server.trusted_proxies,
                )
                .unwrap_or_default(),
                ticket_rate: crate::auth::ticket_rate::TicketRate::new(
                    config.auth.ticket_rate_per_s,
                    config.auth.ticket_rate_burst,
                ),
                #[cfg(feature = "nats")]
                cluster: crate::cluster::Cluster::default(),
                #[cfg(feature = "nats")]
                started: std::time::Instant::now(),
                shutting_down: AtomicBool::new(false),
                draining: AtomicBool::new(false),
                config,
            }),
        };
        #[cfg(feature = "nats")]
        if let Some(slot) = broker.inner.bridges.backplane_client() {
            crate::cluster::start(broker.clone(), slot);
        }
        broker
    }

    /// The nodes this one has heard from over the backplane.
    #[cfg(feature = "nats")]
    pub(crate) fn cluster(&self) -> &crate::cluster::Cluster {
        &self.inner.cluster
    }

    /// How long this node has been running.
    #[cfg(feature = "nats")]
    pub(crate) fn uptime(&self) -> std::time::Duration {
        self.inner.started.elapsed()
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The epoch of the positions this node gives (opaque to clients): new on every
    /// start, or with cluster history the stream's (empty until it is known; no
    /// session is let in before, see [`Broker::history_unready`]).
    pub fn epoch(&self) -> &str {
        #[cfg(feature = "nats")]
        if let Some(history) = &self.inner.history {
            return history.epoch().unwrap_or_default();
        }
        &self.inner.epoch
    }

    /// With cluster history, why no session can be let in: the stream was recreated
    /// under this node (its positions are the old stream's), is not set up yet (no
    /// epoch to give), or this node has not caught up with it (its live
    /// events would be the stream's past, and what was published meanwhile would
    /// reach a subscriber only as the last event of its topic).
    pub(crate) fn history_unready(&self) -> Option<String> {
        #[cfg(feature = "nats")]
        if let Some(history) = &self.inner.history {
            if history.recreated() {
                return Some(format!(
                    "the cluster history stream {} was recreated since this node started; connect to another node",
                    history.stream_name()
                ));
            }
            let backplane = &self.inner.config.cluster.backplane;
            if history.epoch().is_none() || !self.inner.readiness.was_ready(backplane) {
                return Some(format!(
                    "this node has not caught up with the cluster history stream {} yet; connect again shortly",
                    history.stream_name()
                ));
            }
        }
        None
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// The listener's TLS configuration, when `server.tls_cert_file` is set.
    pub fn tls(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.inner.tls.clone()
    }

    /// Number of open WebSocket sessions.
    pub fn open_sessions(&self) -> usize {
        self.inner.sessions.len()
    }

    /// The topic registry.
    pub(crate) fn registry(&self) -> &Registry {
        self.inner.publisher.registry()
    }

    pub(crate) fn authenticator(&self) -> &dyn Authenticator {
        &*self.inner.auth
    }

    /// The JWKS of `auth.jwks_url`, when set.
    pub(crate) fn jwks(&self) -> Option<&crate::auth::jwks::Jwks> {
        self.inner.jwks.as_ref().map(|(jwks, _)| &**jwks)
    }

    /// Where this node issues and redeems tickets.
    pub(crate) fn tickets(&self) -> &TicketStore {
        &self.inner.tickets
    }

    /// The client's address: the TCP peer, or, when that is one of
    /// `server.trusted_proxies`, who the proxies say the client is
    /// (`http/forwarded.rs`).
    pub fn client_ip(&self, req: &actix_web::HttpRequest) -> Option<std::net::IpAddr> {
        self.inner
            .trusted_proxies
            .client(req.peer_addr().map(|a| a.ip()), req.headers())
    }

    pub(crate) fn ticket_rate(&self) -> &crate::auth::ticket_rate::TicketRate {
        &self.inner.ticket_rate
    }

    pub(crate) fn limiter(&self) -> &Arc<ConnectionLimiter> {
        &self.inner.limiter
    }

    /// Open sessions.
    pub(crate) fn sessions(&self) -> &SessionDirectory {
        &self.inner.sessions
    }

    /// Bridge statuses for `/readyz`.
    pub(crate) fn readiness(&self) -> &Readiness {
        &self.inner.readiness
    }

    /// Counters of every running bridge, by name.
    pub(crate) fn bridge_counters(&self) -> &[(String, Arc<BridgeCounters>)] {
        self.inner.bridges.counters()
    }

    /// Makes a validated event ready to publish (see [`Publisher::prepare`]), so a
    /// batch can be refused as a whole before any of it goes out.
    pub(crate) fn prepare(&self, event: Event) -> Result<Prepared, PublishError> {
        self.inner.publisher.prepare(event)
    }

    /// Publishes prepared events in order; see [`Publisher::send_all`].
    pub(crate) async fn send_all(
        &self,
        prepared: Vec<Prepared>,
    ) -> Result<(), (usize, usize, PublishError)> {
        self.inner.publisher.send_all(prepared).await
    }

    /// Publishes an event: to the cluster backplane when one is configured (every
    /// node, this one included, receives it through its NATS bridge), else straight
    /// to the local topic. Best-effort: `Ok` means accepted for fan-out, not
    /// delivered. An invalid topic is refused (and counted as `invalid_topic`).
    pub async fn publish(&self, event: BridgeEvent) -> Result<(), PublishError> {
        self.publish_one(Publisher::validate(event)?).await
    }

    /// Publishes one validated event (see [`Publisher::publish`]).
    pub(crate) async fn publish_one(&self, event: Event) -> Result<(), PublishError> {
        self.inner.publisher.publish(event).await
    }

    /// Mounts Herald's routes (`/ws`, `/api/*`, `/healthz`, `/readyz`, `/metrics`,
    /// `/`, `/herald.js`, `/asyncapi.json`; the table is in docs/security.md) in an
    /// actix-web `App`: `App::new().configure(broker.configure())`, or under a prefix
    /// with `web::scope("/realtime").configure(broker.configure())`. With
    /// `server.dashboard = false` it leaves out `/` and `/herald.js`; with
    /// `server.admin_listen` set, the operational routes (see
    /// [`Broker::configure_admin`]). It leaves the app's default service (its 404
    /// handling) alone.
    pub fn configure(&self) -> impl Fn(&mut actix_web::web::ServiceConfig) + Clone + 'static {
        let broker = self.clone();
        move |cfg| crate::http::configure(cfg, broker.clone())
    }

    /// Mounts the operational routes (`/metrics`, `/healthz`, `/readyz`,
    /// `/api/topics`) for a second listener, when `server.admin_listen` is set:
    /// [`Broker::configure`] then leaves them out.
    pub fn configure_admin(&self) -> impl Fn(&mut actix_web::web::ServiceConfig) + Clone + 'static {
        let broker = self.clone();
        move |cfg| crate::http::configure_admin(cfg, broker.clone())
    }

    /// Closes every open session with 1001, and every session that opens from now
    /// on (graceful shutdown, once the listener stops accepting); returns how many
    /// were open.
    pub fn shutdown(&self) -> usize {
        // Before the directory is walked: a session inserted after the walk sees the
        // flag (see `Session::started`).
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        self.inner.sessions.shutdown_all()
    }

    /// Starts draining (the first step of a graceful shutdown with `server.drain_ms`):
    /// `/readyz` answers 503 from now on, so load balancers stop sending new clients,
    /// while everything else goes on being served.
    pub fn drain(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    /// Whether [`Broker::drain`] or [`Broker::shutdown`] has been called.
    pub(crate) fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst) || self.is_shutting_down()
    }

    /// Whether [`Broker::shutdown`] has been called.
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::SeqCst)
    }

    /// Stops every bridge: each stops reading, closes its client and returns (the
    /// step of graceful shutdown after the sessions are closed). Returns how many
    /// stopped within the time allowed.
    pub async fn stop_bridges(&self) -> usize {
        self.inner.bridges.stop().await
    }
}

/// Where tickets live: a formality with auth off; with auth on, in the backplane's
/// JetStream bucket when there is a backplane (`auth/cluster_tickets.rs`), else in
/// this node's memory.
fn ticket_store(config: &Config, bridges: &Bridges) -> TicketStore {
    let ttl = std::time::Duration::from_millis(config.auth.ticket_ttl_ms);
    if config.auth.mode != "jwt" {
        return TicketStore::Formal {
            ttl_ms: config.auth.ticket_ttl_ms,
        };
    }
    #[cfg(feature = "nats")]
    if let Some(slot) = bridges.backplane_client() {
        return TicketStore::Cluster(crate::auth::cluster_tickets::ClusterTickets::start(
            slot,
            config.cluster.tickets_bucket.clone(),
            ttl,
        ));
    }
    #[cfg(not(feature = "nats"))]
    let _ = bridges;
    TicketStore::Local(Tickets::new(ttl))
}
