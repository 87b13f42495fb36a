//! The configuration's schema: one struct per section, each field documented with
//! its unit and default (the user documentation of each key), defaults as the
//! structs' `Default`.

use serde::{Deserialize, Serialize};

/// The whole configuration. Field docs are the user documentation of each key.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where it was loaded from (not a key; opaque, so `..Default::default()`
    /// still fills it in a struct literal).
    #[serde(skip)]
    pub provenance: super::Provenance,
    pub server: ServerConfig,
    pub session: SessionConfig,
    pub history: HistoryConfig,
    pub publish: PublishConfig,
    pub auth: AuthConfig,
    pub cluster: ClusterConfig,
    pub bridge: BridgeConfig,
    pub log: LogConfig,
}

/// `[server]`: listening, admission and shutdown.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on (`host:port`; port 0 picks a free port). Default
    /// `127.0.0.1:8080`.
    pub listen: String,
    /// This node's name in `welcome` and logs. Empty: generated at start.
    pub node_id: String,
    /// Browser `Origin`s allowed to open a WebSocket. Empty: any. Upgrades without an
    /// `Origin` header (non-browser clients) are not subject to the list.
    pub allowed_origins: Vec<String>,
    /// Proxies (addresses or CIDR networks) whose `Forwarded` / `X-Forwarded-For`
    /// headers give the client's address, for per-address limits and logs. Empty:
    /// the TCP peer is the client.
    pub trusted_proxies: Vec<String>,
    /// Most WebSocket connections at once. 0: unlimited.
    pub max_connections: usize,
    /// Most WebSocket connections at once from one client IP. 0: unlimited.
    pub max_connections_per_ip: usize,
    /// Most WebSocket upgrades a second this node accepts (with a second's worth of
    /// burst); past it an upgrade gets 503 with a jittered `Retry-After` of 1 to 5 s.
    /// When a node dies its clients all reconnect to the others at once: this spreads
    /// them out instead of letting them crowd out the sessions already served. 0:
    /// unlimited. Default 2000, what one core took in the benchmarks' ramp.
    pub max_upgrades_per_s: u32,
    /// On SIGTERM/SIGINT, how long sessions get to close (with 1001) before the
    /// process exits anyway, in milliseconds. Default 5000.
    pub shutdown_grace_ms: u64,
    /// On SIGTERM/SIGINT, how long to go on serving before shutting down, in
    /// milliseconds, with `/readyz` answering 503 from the first moment, so a load
    /// balancer stops sending new clients before the sessions are closed. A second
    /// signal ends the drain at once. Default 0: shut down at once.
    pub drain_ms: u64,
    /// HTTP worker threads. 0: one per CPU core.
    pub workers: usize,
    /// Topic registry shards (each on its own thread). 0: one per CPU core.
    pub shards: usize,
    /// Events waiting per registry shard and per topic before further events are
    /// dropped and counted (`herald_events_dropped_total{reason="topic_busy"}`).
    /// Default 8192.
    pub ingest_capacity: usize,
    /// Time a client has to send the whole head of the first HTTP request on a
    /// connection (the WebSocket upgrade included), in milliseconds, counted from
    /// the connection's start; past it the request gets 408 and the connection is
    /// closed, so a client that dribbles its headers (slowloris) cannot hold it.
    /// 1 to 3600000. Default 5000.
    pub client_request_timeout_ms: u64,
    /// How long an idle HTTP/1.1 connection is kept open for a next request, in
    /// milliseconds; 0 turns keep-alive off (one request per connection). The
    /// header deadline above covers only a connection's first request, so where
    /// untrusted clients reach the HTTP port, 0 also closes that gap. At most
    /// 3600000. Default 5000.
    pub keep_alive_ms: u64,
    /// Test-only: mount `/echo`, a WebSocket route whose sessions
    /// send every text and binary message back unchanged, with the same frame
    /// handling as `/ws`; the Autobahn conformance run uses it (docs/conformance.md).
    /// Never turn it on in production. Default false.
    pub conformance_echo: bool,
    /// TLS certificate chain (PEM). With `tls_key_file`, Herald serves `https://`
    /// and `wss://` only (rustls). Empty: plain HTTP.
    pub tls_cert_file: String,
    /// TLS private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub tls_key_file: String,
    /// Serve the dashboard at `/` and the JavaScript client at `/herald.js`.
    /// Default true.
    pub dashboard: bool,
    /// A second address (`host:port`) for the operational routes: `/metrics`,
    /// `/healthz`, `/readyz` and `/api/topics` move there, off `listen`, so a public
    /// load balancer never exposes them. Plain HTTP, even with TLS on `listen`.
    /// Empty (the default): everything on `listen`.
    pub admin_listen: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".into(),
            node_id: String::new(),
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            max_connections: 0,
            max_connections_per_ip: 0,
            max_upgrades_per_s: 2000,
            shutdown_grace_ms: 5000,
            drain_ms: 0,
            workers: 0,
            shards: 0,
            ingest_capacity: 8192,
            client_request_timeout_ms: 5000,
            keep_alive_ms: 5000,
            conformance_echo: false,
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            dashboard: true,
            admin_listen: String::new(),
        }
    }
}

/// What a connection does when its outbound queue is full (docs/protocol.md#6-slow-consumers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlowConsumer {
    /// Drop the event for this connection, count it, send `lagged` later.
    Drop,
    /// Close the connection with 4009.
    Disconnect,
}

/// `[session]`: per-connection limits and timers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// Server `ping` interval, in milliseconds. Default 25000.
    pub heartbeat_interval_ms: u64,
    /// Extra silence allowed after an interval before closing with 4008, ms. Default 10000.
    pub heartbeat_timeout_ms: u64,
    /// Time to authenticate after the upgrade when auth is on, ms. Default 10000.
    pub auth_timeout_ms: u64,
    /// Largest inbound message (after joining fragments), bytes; larger closes 1009.
    /// Also the largest `data` of one HTTP-published event. Default 65536.
    pub max_message_bytes: usize,
    /// Most subscriptions (patterns) per connection. Default 256.
    pub max_subscriptions: usize,
    /// Outbound queue bound per connection, bytes. Default 1 MiB.
    pub queue_max_bytes: usize,
    /// `drop` (default) or `disconnect`.
    pub slow_consumer: SlowConsumer,
    /// Client messages per second per connection (token bucket refill). Default 100.
    pub rate_limit_per_s: u32,
    /// Token bucket size: messages a client may send in a burst. Default 200.
    pub rate_limit_burst: u32,
    /// Bound of a session actor's mailbox (wake-ups and shutdown; events travel
    /// through its byte-bounded inbox instead). Default 1024.
    pub mailbox_capacity: usize,
    /// WebSocket compression: `none` (default) or `deflate` (permessage-deflate,
    /// RFC 7692, with the clients that offer it).
    pub compression: Compression,
}

/// `session.compression`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// Frames go uncompressed, whatever the client offers.
    #[default]
    None,
    /// permessage-deflate when the client offers it: each event is compressed once
    /// and shared by every subscriber.
    Deflate,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            heartbeat_interval_ms: 25_000,
            heartbeat_timeout_ms: 10_000,
            auth_timeout_ms: 10_000,
            max_message_bytes: 65_536,
            max_subscriptions: 256,
            queue_max_bytes: 1_048_576,
            slow_consumer: SlowConsumer::Drop,
            rate_limit_per_s: 100,
            rate_limit_burst: 200,
            mailbox_capacity: 1024,
            compression: Compression::None,
        }
    }
}

/// `[history]`: the per-topic replay ring.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Events kept per topic; 0 turns history off. Default 100.
    pub size: usize,
    /// Age after which an event leaves history, ms. Default 300000 (5 min).
    pub ttl_ms: u64,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            size: 100,
            ttl_ms: 300_000,
        }
    }
}

/// `[publish]`: who may publish into Herald directly.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublishConfig {
    /// Allow `{"op":"publish"}` over WebSocket (still subject to auth). Default true.
    pub from_clients: bool,
    /// Allow `POST /api/publish`. Default true.
    pub http: bool,
    /// Largest `POST /api/publish` body, bytes. Default 1 MiB.
    pub max_body_bytes: usize,
}

impl Default for PublishConfig {
    fn default() -> Self {
        PublishConfig {
            from_clients: true,
            http: true,
            max_body_bytes: 1_048_576,
        }
    }
}

/// `[auth]`: authentication (docs/protocol.md#2-connecting, docs/protocol.md#8-http-api, docs/protocol.md#authentication; docs/security.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `none` or `jwt`.
    pub mode: String,
    pub jwt_secret: String,
    pub jwt_public_key_file: String,
    /// Where the identity provider publishes its signing keys (a JWKS document,
    /// `http://` or `https://`). Empty: no JWKS.
    pub jwks_url: String,
    /// PEM certificates trusted for `jwks_url` besides the system's roots (a private
    /// CA). Empty: the system's roots only.
    pub jwks_ca_file: String,
    /// A token signed with a key id the node does not know makes it fetch the JWKS
    /// again, at most once per this many milliseconds; also the shortest refresh
    /// interval whatever `Cache-Control` says.
    pub jwks_min_refresh_ms: u64,
    /// The longest the node keeps a JWKS before it fetches it again: the interval
    /// when the response says nothing in `Cache-Control`, and the cap on its `max-age`.
    pub jwks_max_refresh_ms: u64,
    /// How old the keys may be (since the last successful fetch) before `/readyz`
    /// answers 503 and `herald_jwks_stale` turns 1. They keep verifying tokens.
    pub jwks_stale_ms: u64,
    pub issuer: String,
    pub audience: String,
    pub api_keys: Vec<String>,
    pub ticket_ttl_ms: u64,
    /// Tickets a second that one token subject, and one client address, may get
    /// from `POST /api/tickets` (past it: 429 with `Retry-After`). 0: no limit.
    pub ticket_rate_per_s: u32,
    /// Tickets a subject or an address may get at once before the rate applies.
    pub ticket_rate_burst: u32,
    pub default_subscribe: Vec<String>,
    pub default_publish: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: "none".into(),
            jwt_secret: String::new(),
            jwt_public_key_file: String::new(),
            jwks_url: String::new(),
            jwks_ca_file: String::new(),
            jwks_min_refresh_ms: 30_000,
            jwks_max_refresh_ms: 300_000,
            jwks_stale_ms: 3_600_000,
            issuer: String::new(),
            audience: String::new(),
            api_keys: Vec::new(),
            ticket_ttl_ms: 30_000,
            ticket_rate_per_s: 2,
            ticket_rate_burst: 20,
            default_subscribe: vec![">".into()],
            default_publish: Vec::new(),
        }
    }
}

/// `[cluster]`: NATS as the backplane between nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Name of a `[[bridge.nats]]` whose connection carries publishes. Empty: none.
    pub backplane: String,
    /// Publishes go to subject `subject_prefix + topic`.
    pub subject_prefix: String,
    /// With a backplane and `auth.mode = "jwt"`: the JetStream key-value bucket on the
    /// backplane's NATS where tickets live, so that every node accepts them. Nodes of
    /// one cluster share it; separate clusters on one NATS need separate names.
    /// Default `HERALD_TICKETS`.
    pub tickets_bucket: String,
    /// With a backplane: the cluster's name in its node-to-node subjects
    /// (`$HERALD.<name>.…`: announcements and the cluster view of `/api/topics`).
    /// Nodes of one cluster share it; two clusters on one NATS need two names.
    /// Default `herald`.
    pub name: String,
    /// Where positions and history live: `local` (each node's own, default) or
    /// `jetstream` (one stream on the backplane's NATS: positions the same on every
    /// node, resume on any node and across restarts).
    pub history: HistoryMode,
    /// With `history = "jetstream"`: the stream's name. Default `HERALD`.
    pub history_stream: String,
    /// With `history = "jetstream"`: the stream's replicas (1 to 5). Default 1.
    pub replicas: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            backplane: String::new(),
            subject_prefix: String::new(),
            tickets_bucket: "HERALD_TICKETS".into(),
            name: "herald".into(),
            history: HistoryMode::Local,
            history_stream: "HERALD".into(),
            replicas: 1,
        }
    }
}

/// `cluster.history`: whose positions an event's `seq` counts in
/// (docs/protocol.md#cluster-history).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HistoryMode {
    /// This node's: `seq` counts per topic on this node, history is this node's ring.
    Local,
    /// The cluster's: `seq` is the position in one JetStream stream that every node
    /// reads, so it is the same on every node and outlives restarts.
    Jetstream,
}

/// `[bridge]`: the `[[bridge.nats]]` and `[[bridge.kafka]]` lists.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeConfig {
    pub nats: Vec<NatsBridgeConfig>,
    pub kafka: Vec<KafkaBridgeConfig>,
}

/// One `[[bridge.nats]]` entry (defined beside the bridge that uses it).
pub use herald_bridges::config::NatsSettings as NatsBridgeConfig;
/// `jetstream = { stream, deliver }` of a `[[bridge.nats]]`.
pub use herald_bridges::config::{JetStreamDeliver, JetStreamStart as JetStreamConfig};

/// One `[[bridge.kafka]]` entry (defined beside the bridge that uses it).
pub use herald_bridges::config::KafkaSettings as KafkaBridgeConfig;
/// `start` of a `[[bridge.kafka]]`.
pub use herald_bridges::config::Start as KafkaStart;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable `key=value` lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`: logging (`RUST_LOG` overrides `level`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter, e.g. `info` or `herald=debug`. Default
    /// `info,async_nats=warn`: the NATS client logs every connection event at
    /// `info`, which would flood the log during a slow-consumer storm.
    pub level: String,
    /// `text` (default) or `json`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info,async_nats=warn".into(),
            format: LogFormat::Text,
        }
    }
}
