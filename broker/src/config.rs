//! Configuration: one TOML file, `HERALD_<SECTION>__<KEY>` environment overrides, and
//! defaults for every key (see `docs/configuration.md` and ../shared/CONFIG.md).
//!
//! Loading goes file → TOML table → environment overrides → typed [`Config`] through
//! `serde_path_to_error`, so every error names the key (`session.slow_consumer`), the
//! source (the file or the environment variable) and what was expected. Unknown keys
//! are errors: a typo must never silently fall back to a default.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where a configuration value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// No file given: built-in defaults (plus environment).
    Defaults,
    /// A TOML file.
    File(PathBuf),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Defaults => f.write_str("the built-in defaults"),
            Origin::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Why a configuration was refused. Each variant names the key or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("environment variable {var}: no such key `{key}` (keys look like HERALD_SESSION__QUEUE_MAX_BYTES)")]
    UnknownEnv { var: String, key: String },
    #[error("{flag}: {message}")]
    Flag { flag: &'static str, message: String },
    #[error("config error in {origin}{env}: `{key}`: {message}")]
    Invalid {
        origin: Origin,
        /// ` (from HERALD_…)` when an environment variable set the key.
        env: String,
        key: String,
        message: String,
    },
}

fn invalid(key: &str, value: impl fmt::Display, expected: &str) -> ConfigError {
    ConfigError::Invalid {
        origin: Origin::Defaults,
        env: String::new(),
        key: key.to_owned(),
        message: format!("`{value}` is not valid: expected {expected}"),
    }
}

/// The whole configuration. Field docs are the user documentation of each key.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
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
    /// Most WebSocket connections at once. 0: unlimited.
    pub max_connections: usize,
    /// Most WebSocket connections at once from one client IP. 0: unlimited.
    pub max_connections_per_ip: usize,
    /// On SIGTERM/SIGINT, how long sessions get to close (with 1001) before the
    /// process exits anyway, in milliseconds. Default 5000.
    pub shutdown_grace_ms: u64,
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
    /// 1 to 3600000. Default 5000. (A Herald addition.)
    pub client_request_timeout_ms: u64,
    /// How long an idle HTTP/1.1 connection is kept open for a next request, in
    /// milliseconds; 0 turns keep-alive off (one request per connection). The
    /// header deadline above covers only a connection's first request, so where
    /// untrusted clients reach the HTTP port, 0 also closes that gap. At most
    /// 3600000. Default 5000. (A Herald addition.)
    pub keep_alive_ms: u64,
    /// Test-only (a Herald addition): mount `/echo`, a WebSocket route whose sessions
    /// send every text and binary message back unchanged, with the same frame
    /// handling as `/ws`; the Autobahn conformance run uses it (docs/conformance.md).
    /// Never turn it on in production. Default false.
    pub conformance_echo: bool,
    /// TLS certificate chain (PEM). With `tls_key_file`, Herald serves `https://`
    /// and `wss://` only (rustls). Empty: plain HTTP.
    pub tls_cert_file: String,
    /// TLS private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub tls_key_file: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".into(),
            node_id: String::new(),
            allowed_origins: Vec::new(),
            max_connections: 0,
            max_connections_per_ip: 0,
            shutdown_grace_ms: 5000,
            workers: 0,
            shards: 0,
            ingest_capacity: 8192,
            client_request_timeout_ms: 5000,
            keep_alive_ms: 5000,
            conformance_echo: false,
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
        }
    }
}

/// What a connection does when its outbound queue is full (PROTOCOL.md section 6).
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

/// `[auth]`: authentication (PROTOCOL.md sections 2, 8 and 9; docs/security.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `none` or `jwt`.
    pub mode: String,
    pub jwt_secret: String,
    pub jwt_public_key_file: String,
    pub issuer: String,
    pub audience: String,
    pub api_keys: Vec<String>,
    pub ticket_ttl_ms: u64,
    pub default_subscribe: Vec<String>,
    pub default_publish: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: "none".into(),
            jwt_secret: String::new(),
            jwt_public_key_file: String::new(),
            issuer: String::new(),
            audience: String::new(),
            api_keys: Vec::new(),
            ticket_ttl_ms: 30_000,
            default_subscribe: vec![">".into()],
            default_publish: Vec::new(),
        }
    }
}

/// `[cluster]`: NATS as the backplane between nodes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Name of a `[[bridge.nats]]` whose connection carries publishes. Empty: none.
    pub backplane: String,
    /// Publishes go to subject `subject_prefix + topic`.
    pub subject_prefix: String,
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
pub use herald_bridges::config::{Deliver as JetStreamDeliver, JetStreamStart as JetStreamConfig};

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

/// `[log]`: logging (a Herald addition; `RUST_LOG` overrides `level`).
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

const ENV_PREFIX: &str = "HERALD_";

/// Longest HTTP header deadline or keep-alive, in milliseconds (one hour).
const MAX_HTTP_TIMER_MS: u64 = 3_600_000;

impl Config {
    /// Loads `path` (or the defaults when `None`), applies `HERALD_*` variables from
    /// `env`, and validates the result.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let (origin, mut table) = match path {
            None => (Origin::Defaults, toml::Table::new()),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_owned(),
                    source,
                })?;
                let table = text
                    .parse::<toml::Table>()
                    .map_err(|e| ConfigError::Syntax {
                        path: p.to_owned(),
                        message: e.message().to_owned(),
                    })?;
                (Origin::File(p.to_owned()), table)
            }
        };
        let from_env = apply_env(&mut table, env)?;
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let key = e.path().to_string();
                let env = env_note(&from_env, &key).unwrap_or_default();
                ConfigError::Invalid {
                    origin: origin.clone(),
                    env,
                    key,
                    message: e.into_inner().to_string(),
                }
            })?;
        config.validate().map_err(|e| match e {
            ConfigError::Invalid {
                key, message, env, ..
            } => {
                let env = env_note(&from_env, &key).unwrap_or(env);
                ConfigError::Invalid {
                    origin,
                    env,
                    key,
                    message,
                }
            }
            other => other,
        })?;
        Ok(config)
    }

    /// Checks what serde cannot: ranges, addresses, and combinations.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        let s = &self.session;
        if s.heartbeat_interval_ms == 0 {
            return Err(invalid(
                "session.heartbeat_interval_ms",
                0,
                "a positive number of milliseconds",
            ));
        }
        if s.heartbeat_timeout_ms == 0 {
            return Err(invalid(
                "session.heartbeat_timeout_ms",
                0,
                "a positive number of milliseconds",
            ));
        }
        if s.max_message_bytes < 128 {
            return Err(invalid(
                "session.max_message_bytes",
                s.max_message_bytes,
                "at least 128",
            ));
        }
        if s.queue_max_bytes < 1024 {
            return Err(invalid(
                "session.queue_max_bytes",
                s.queue_max_bytes,
                "at least 1024",
            ));
        }
        if s.max_subscriptions == 0 {
            return Err(invalid("session.max_subscriptions", 0, "at least 1"));
        }
        if s.rate_limit_per_s == 0 {
            return Err(invalid("session.rate_limit_per_s", 0, "at least 1"));
        }
        if s.rate_limit_burst == 0 {
            return Err(invalid("session.rate_limit_burst", 0, "at least 1"));
        }
        if self.server.ingest_capacity == 0 {
            return Err(invalid("server.ingest_capacity", 0, "at least 1"));
        }
        // Bounded above too: actix-web adds them to `Instant::now()`, which panics
        // on overflow for every connection.
        let timeout = self.server.client_request_timeout_ms;
        if !(1..=MAX_HTTP_TIMER_MS).contains(&timeout) {
            return Err(invalid(
                "server.client_request_timeout_ms",
                timeout,
                "1 to 3600000 milliseconds",
            ));
        }
        if self.server.keep_alive_ms > MAX_HTTP_TIMER_MS {
            return Err(invalid(
                "server.keep_alive_ms",
                self.server.keep_alive_ms,
                "0 (off) to 3600000 milliseconds",
            ));
        }
        if s.mailbox_capacity == 0 {
            return Err(invalid("session.mailbox_capacity", 0, "at least 1"));
        }
        // An echo is a reply: with the queue at least one message long, the echo of a
        // largest message fits even while the previous one is still being written.
        if self.server.conformance_echo && s.queue_max_bytes < s.max_message_bytes {
            return Err(invalid(
                "server.conformance_echo",
                true,
                &format!(
                    "false, or session.queue_max_bytes ({}) at least session.max_message_bytes ({}) so that echoes fit the outbound queue",
                    s.queue_max_bytes, s.max_message_bytes
                ),
            ));
        }
        if self.history.size > 0 && self.history.ttl_ms == 0 {
            return Err(invalid(
                "history.ttl_ms",
                0,
                "a positive number of milliseconds (or history.size = 0)",
            ));
        }
        if self.publish.max_body_bytes == 0 {
            return Err(invalid(
                "publish.max_body_bytes",
                0,
                "a positive number of bytes",
            ));
        }
        for (i, o) in self.server.allowed_origins.iter().enumerate() {
            if !(o.starts_with("http://") || o.starts_with("https://")) || o.ends_with('/') {
                return Err(invalid(
                    &format!("server.allowed_origins[{i}]"),
                    o,
                    "an origin like `https://app.example.com` (scheme, host, optional port, no path)",
                ));
            }
        }
        self.validate_auth()?;
        self.validate_tls()?;
        let mut names = std::collections::BTreeSet::new();
        for (i, b) in self.bridge.nats.iter().enumerate() {
            let key = |k: &str| format!("bridge.nats[{i}].{k}");
            if b.name.is_empty() || !names.insert(b.name.clone()) {
                return Err(invalid(
                    &key("name"),
                    &b.name,
                    "a name that no other bridge has",
                ));
            }
            if b.url.trim().is_empty() {
                return Err(invalid(
                    &key("url"),
                    &b.url,
                    "a NATS URL like nats://127.0.0.1:4222",
                ));
            }
            if b.subjects.is_empty() {
                return Err(invalid(&key("subjects"), "[]", "at least one subject"));
            }
            for s in &b.subjects {
                if s.is_empty()
                    || s.contains(char::is_whitespace)
                    || s.split('.').any(str::is_empty)
                {
                    return Err(invalid(
                        &key("subjects"),
                        s,
                        "NATS subjects like `events.>`",
                    ));
                }
            }
            #[cfg(feature = "nats")]
            if let Err(why) = herald_bridges::nats::server_addrs(&b.url) {
                return Err(invalid(
                    &key("url"),
                    &b.url,
                    &format!("NATS URLs like nats://127.0.0.1:4222 ({why})"),
                ));
            }
            if b.subscription_capacity == 0 {
                return Err(invalid(&key("subscription_capacity"), 0, "at least 1"));
            }
            if b.jetstream.as_ref().is_some_and(|j| j.stream.is_empty()) {
                return Err(invalid(
                    &key("jetstream.stream"),
                    "",
                    "the name of an existing stream",
                ));
            }
        }
        for (i, b) in self.bridge.kafka.iter().enumerate() {
            self.validate_kafka(i, b, &mut names)?;
        }
        if !self.cluster.backplane.is_empty() {
            self.validate_backplane()?;
        } else if !self.cluster.subject_prefix.is_empty() {
            return Err(invalid(
                "cluster.subject_prefix",
                &self.cluster.subject_prefix,
                "empty unless cluster.backplane is set (it has no effect without one)",
            ));
        }
        Ok(())
    }

    /// `[auth]`: a known mode; for `jwt`, a usable key, sane lifetimes and valid
    /// default grants. Secrets set while the mode is `none` are an error: Herald would
    /// otherwise run open while its operator believes it is protected.
    fn validate_auth(&self) -> Result<(), ConfigError> {
        let a = &self.auth;
        for (i, p) in a.default_subscribe.iter().enumerate() {
            if crate::pattern::validate_pattern(p).is_err() {
                return Err(invalid(
                    &format!("auth.default_subscribe[{i}]"),
                    p,
                    "a topic pattern like `orders.*`",
                ));
            }
        }
        for (i, p) in a.default_publish.iter().enumerate() {
            if crate::pattern::validate_pattern(p).is_err() {
                return Err(invalid(
                    &format!("auth.default_publish[{i}]"),
                    p,
                    "a topic pattern like `chat.*`",
                ));
            }
        }
        if !(1_000..=3_600_000).contains(&a.ticket_ttl_ms) {
            return Err(invalid(
                "auth.ticket_ttl_ms",
                a.ticket_ttl_ms,
                "1000 to 3600000",
            ));
        }
        match a.mode.as_str() {
            "none" => {
                let set = [
                    ("auth.jwt_secret", !a.jwt_secret.is_empty()),
                    (
                        "auth.jwt_public_key_file",
                        !a.jwt_public_key_file.is_empty(),
                    ),
                    ("auth.api_keys", !a.api_keys.is_empty()),
                ];
                if let Some((key, _)) = set.iter().find(|(_, on)| *on) {
                    return Err(invalid(
                        "auth.mode",
                        "none",
                        &format!("\"jwt\" since {key} is set (with mode \"none\" Herald would accept everyone)"),
                    ));
                }
                Ok(())
            }
            "jwt" => {
                if !a.jwt_secret.is_empty() && a.jwt_secret.len() < 32 {
                    return Err(invalid(
                        "auth.jwt_secret",
                        "***",
                        "at least 32 bytes (HS256 needs a key as long as its hash)",
                    ));
                }
                for (i, k) in a.api_keys.iter().enumerate() {
                    if k.len() < 16 {
                        return Err(invalid(
                            &format!("auth.api_keys[{i}]"),
                            "***",
                            "at least 16 bytes",
                        ));
                    }
                }
                crate::jwt::JwtAuth::new(a).map(drop).map_err(|e| {
                    let key = match e {
                        crate::jwt::JwtConfigError::NoKey => "auth.jwt_secret",
                        _ => "auth.jwt_public_key_file",
                    };
                    ConfigError::Invalid {
                        origin: Origin::Defaults,
                        env: String::new(),
                        key: key.into(),
                        message: e.to_string(),
                    }
                })
            }
            other => Err(invalid("auth.mode", other, "\"none\" or \"jwt\"")),
        }
    }

    /// `server.tls_cert_file` and `server.tls_key_file`: both or neither, and
    /// loadable by rustls.
    fn validate_tls(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        match (s.tls_cert_file.is_empty(), s.tls_key_file.is_empty()) {
            (true, true) => Ok(()),
            (false, true) => Err(invalid(
                "server.tls_key_file",
                "(empty)",
                "the private key of server.tls_cert_file",
            )),
            (true, false) => Err(invalid(
                "server.tls_cert_file",
                "(empty)",
                "the certificate of server.tls_key_file",
            )),
            (false, false) => crate::tls::server_config(&s.tls_cert_file, &s.tls_key_file)
                .map(drop)
                .map_err(|e| ConfigError::Invalid {
                    origin: Origin::Defaults,
                    env: String::new(),
                    key: e.key().into(),
                    message: e.to_string(),
                }),
        }
    }

    /// One `[[bridge.kafka]]` entry: a unique name, brokers, Kafka topic names, a
    /// template that makes valid Herald topics of them, and properties librdkafka
    /// accepts (checked without connecting).
    fn validate_kafka(
        &self,
        i: usize,
        b: &KafkaBridgeConfig,
        names: &mut std::collections::BTreeSet<String>,
    ) -> Result<(), ConfigError> {
        let key = |k: &str| format!("bridge.kafka[{i}].{k}");
        if b.name.is_empty() || !names.insert(b.name.clone()) {
            return Err(invalid(
                &key("name"),
                &b.name,
                "a name that no other bridge has",
            ));
        }
        if b.brokers.trim().is_empty() {
            return Err(invalid(
                &key("brokers"),
                &b.brokers,
                "host:port of one or more brokers, comma-separated",
            ));
        }
        if b.topics.is_empty() {
            return Err(invalid(&key("topics"), "[]", "at least one Kafka topic"));
        }
        for t in &b.topics {
            let kafka_name = !t.is_empty()
                && t.len() <= 249
                && t.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
            if !kafka_name {
                return Err(invalid(
                    &key("topics"),
                    t,
                    "Kafka topic names (1 to 249 of `a-z A-Z 0-9 . _ -`, no wildcards)",
                ));
            }
        }
        if b.metadata_refresh_ms < 100 {
            return Err(invalid(
                &key("metadata_refresh_ms"),
                b.metadata_refresh_ms,
                "at least 100",
            ));
        }
        #[cfg(feature = "kafka")]
        {
            use herald_bridges::kafka::{check, Template};
            if let Err((field, why)) = check(b) {
                return Err(ConfigError::Invalid {
                    origin: Origin::Defaults,
                    env: String::new(),
                    key: key(field),
                    message: why,
                });
            }
            let template = Template::parse(&b.topic_template)
                .map_err(|why| invalid(&key("topic_template"), &b.topic_template, &why))?;
            for t in &b.topics {
                let sample = template.render(t, Some(b"key"));
                if crate::pattern::validate_topic(&sample).is_err() {
                    return Err(invalid(
                        &key("topic_template"),
                        &b.topic_template,
                        &format!(
                            "a template that makes Herald topics of Kafka topic `{t}` (it gives `{sample}`; topics are dot-separated tokens of `A-Z a-z 0-9 _ - :`)"
                        ),
                    ));
                }
            }
        }
        #[cfg(not(feature = "kafka"))]
        return Err(invalid(
            "bridge.kafka",
            &b.name,
            "no entries (this build has no Kafka bridge: build with the `kafka` feature)",
        ));
        #[cfg(feature = "kafka")]
        Ok(())
    }

    /// The backplane must name a NATS bridge whose subscriptions bring every
    /// publish back under the same topic name, or nodes would miss or rename events.
    fn validate_backplane(&self) -> Result<(), ConfigError> {
        let c = &self.cluster;
        let Some(b) = self.bridge.nats.iter().find(|b| b.name == c.backplane) else {
            return Err(invalid(
                "cluster.backplane",
                &c.backplane,
                "the name of a [[bridge.nats]] entry",
            ));
        };
        let prefix_tokens = c
            .subject_prefix
            .strip_suffix('.')
            .unwrap_or(&c.subject_prefix);
        if !c.subject_prefix.is_empty()
            && (!c.subject_prefix.ends_with('.')
                || crate::pattern::validate_topic(prefix_tokens).is_err())
        {
            return Err(invalid(
                "cluster.subject_prefix",
                &c.subject_prefix,
                "empty, or topic tokens ending with `.` (no wildcards), like `herald.`",
            ));
        }
        let all = format!("{}>", c.subject_prefix);
        if !b.subjects.iter().any(|s| crate::pattern::covers(s, &all)) {
            return Err(invalid(
                "cluster.backplane",
                &c.backplane,
                &format!("a bridge that subscribes to `{all}` (its subjects must cover every backplane subject)"),
            ));
        }
        if b.strip_prefix != c.subject_prefix || !b.topic_prefix.is_empty() {
            return Err(invalid(
                "cluster.subject_prefix",
                &c.subject_prefix,
                &format!(
                    "the backplane bridge `{}` to have strip_prefix = \"{}\" and no topic_prefix, so subjects map back to the same topics",
                    b.name, c.subject_prefix
                ),
            ));
        }
        Ok(())
    }

    /// `server.listen` as a socket address (`localhost:8080` resolves too).
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        use std::net::ToSocketAddrs as _;
        let listen = &self.server.listen;
        listen
            .parse()
            .ok()
            .or_else(|| listen.to_socket_addrs().ok().and_then(|mut a| a.next()))
            .ok_or_else(|| invalid("server.listen", listen, "host:port, e.g. 127.0.0.1:8080"))
    }

    /// The effective configuration as TOML with every secret replaced by `***`.
    pub fn to_masked_toml(&self) -> String {
        let mut masked = self.clone();
        let mask = |s: &mut String| {
            if !s.is_empty() {
                *s = "***".into();
            }
        };
        mask(&mut masked.auth.jwt_secret);
        for k in &mut masked.auth.api_keys {
            mask(k);
        }
        for b in &mut masked.bridge.kafka {
            for (k, v) in &mut b.properties {
                let k = k.to_ascii_lowercase();
                if k.contains("password") || k.contains("secret") || k.contains("key") {
                    mask(v);
                }
            }
        }
        for b in &mut masked.bridge.nats {
            mask(&mut b.password);
            mask(&mut b.token);
            mask(&mut b.nkey);
            b.url = mask_url_credentials(&b.url);
        }
        toml::to_string_pretty(&masked).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

/// `nats://user:pass@host` → `nats://***@host`, for every URL of a comma-separated
/// list, with or without a scheme.
fn mask_url_credentials(urls: &str) -> String {
    urls.split(',')
        .map(|url| {
            let lead = url.len() - url.trim_start().len();
            let start = url.find("://").map_or(lead, |i| i + 3);
            let end = url[start..].find('/').map_or(url.len(), |i| start + i);
            match url[start..end].rfind('@') {
                Some(at) => format!("{}***{}", &url[..start], &url[start + at..]),
                None => url.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// ` (from HERALD_…)` when an environment variable set `key`.
fn env_note(from_env: &[(String, String)], key: &str) -> Option<String> {
    from_env
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, var)| format!(" (from {var})"))
}

/// Applies `HERALD_<SECTION>__<KEY>=value` variables to `table`. A value is read as
/// TOML (numbers, booleans, arrays) unless the key is a string key, in which case it
/// is taken verbatim, so `HERALD_SERVER__NODE_ID=42` stays the string `"42"`.
/// Returns `(dotted key, variable name)` for every override, for error messages.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let defaults = toml::Table::try_from(Config::default()).unwrap_or_default();
    let mut applied = Vec::new();
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.contains("__"))
        .collect();
    vars.sort();
    for (var, raw) in vars {
        let rest = var[ENV_PREFIX.len()..].to_ascii_lowercase();
        let Some((section, key)) = rest.split_once("__") else {
            continue;
        };
        let known = defaults
            .get(section)
            .and_then(|s| s.as_table())
            .and_then(|s| s.get(key));
        let Some(default) = known else {
            return Err(ConfigError::UnknownEnv {
                var,
                key: format!("{section}.{key}"),
            });
        };
        let value = if default.is_str() {
            toml::Value::String(raw)
        } else {
            format!("v = {raw}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(raw))
        };
        let entry = table
            .entry(section.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let Some(t) = entry.as_table_mut() {
            t.insert(key.to_owned(), value);
        }
        applied.push((format!("{section}.{key}"), var));
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(text.as_bytes()).expect("write");
        f
    }

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    #[test]
    fn defaults_match_config_md() {
        let c = Config::load(None, no_env()).expect("defaults load");
        assert_eq!(c.server.listen, "127.0.0.1:8080");
        assert_eq!(c.session.heartbeat_interval_ms, 25_000);
        assert_eq!(c.session.queue_max_bytes, 1_048_576);
        assert_eq!(c.session.slow_consumer, SlowConsumer::Drop);
        assert_eq!(c.history.size, 100);
        assert_eq!(c.history.ttl_ms, 300_000);
        assert!(c.publish.from_clients && c.publish.http);
        assert_eq!(c.auth.mode, "none");
        assert_eq!(c.auth.default_subscribe, vec![">".to_string()]);
    }

    #[test]
    fn file_values_apply() {
        let f = file("[session]\nslow_consumer = \"disconnect\"\nmax_subscriptions = 3\n[history]\nsize = 0\n");
        let c = Config::load(Some(f.path()), no_env()).expect("loads");
        assert_eq!(c.session.slow_consumer, SlowConsumer::Disconnect);
        assert_eq!(c.session.max_subscriptions, 3);
        assert_eq!(c.history.size, 0);
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let f = file("[session]\nqueue_max_byte = 10\n");
        let err = Config::load(Some(f.path()), no_env()).expect_err("unknown key");
        let msg = err.to_string();
        assert!(msg.contains("queue_max_byte"), "{msg}");
        assert!(msg.contains(&f.path().display().to_string()), "{msg}");
    }

    #[test]
    fn unknown_section_is_an_error() {
        let f = file("[sessions]\nx = 1\n");
        let msg = Config::load(Some(f.path()), no_env())
            .expect_err("unknown")
            .to_string();
        assert!(msg.contains("sessions"), "{msg}");
    }

    #[test]
    fn bad_value_names_key_value_and_expectation() {
        let f = file("[session]\nslow_consumer = \"dropp\"\n");
        let msg = Config::load(Some(f.path()), no_env())
            .expect_err("bad")
            .to_string();
        assert!(msg.contains("session.slow_consumer"), "{msg}");
        assert!(msg.contains("dropp"), "{msg}");
        let f = file("[server]\nlisten = \"nowhere\"\n");
        let msg = Config::load(Some(f.path()), no_env())
            .expect_err("bad")
            .to_string();
        assert!(
            msg.contains("server.listen") && msg.contains("nowhere") && msg.contains("host:port"),
            "{msg}"
        );
        let f = file("[session]\nmax_subscriptions = \"many\"\n");
        let msg = Config::load(Some(f.path()), no_env())
            .expect_err("bad")
            .to_string();
        assert!(msg.contains("session.max_subscriptions"), "{msg}");
    }

    #[test]
    fn syntax_error_names_file() {
        let f = file("[server\n");
        let msg = Config::load(Some(f.path()), no_env())
            .expect_err("bad")
            .to_string();
        assert!(msg.contains("not valid TOML"), "{msg}");
    }

    #[test]
    fn env_overrides_single_keys_with_types() {
        let f = file("[server]\nlisten = \"127.0.0.1:9000\"\n");
        let env = vec![
            (
                "HERALD_SERVER__LISTEN".to_string(),
                "0.0.0.0:8080".to_string(),
            ),
            ("HERALD_SERVER__NODE_ID".to_string(), "42".to_string()),
            (
                "HERALD_SESSION__MAX_SUBSCRIPTIONS".to_string(),
                "7".to_string(),
            ),
            ("HERALD_PUBLISH__HTTP".to_string(), "false".to_string()),
            (
                "HERALD_SERVER__ALLOWED_ORIGINS".to_string(),
                "[\"https://a.example\"]".to_string(),
            ),
            ("HERALD_LOG".to_string(), "debug".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
        ];
        let c = Config::load(Some(f.path()), env).expect("loads");
        assert_eq!(c.server.listen, "0.0.0.0:8080");
        assert_eq!(c.server.node_id, "42");
        assert_eq!(c.session.max_subscriptions, 7);
        assert!(!c.publish.http);
        assert_eq!(
            c.server.allowed_origins,
            vec!["https://a.example".to_string()]
        );
    }

    #[test]
    fn env_errors_name_the_variable() {
        let env = vec![("HERALD_SERVER__LISTENN".to_string(), "x".to_string())];
        let msg = Config::load(None, env).expect_err("unknown").to_string();
        assert!(
            msg.contains("HERALD_SERVER__LISTENN") && msg.contains("server.listenn"),
            "{msg}"
        );
        let env = vec![(
            "HERALD_SESSION__MAX_SUBSCRIPTIONS".to_string(),
            "lots".to_string(),
        )];
        let msg = Config::load(None, env).expect_err("bad").to_string();
        assert!(
            msg.contains("HERALD_SESSION__MAX_SUBSCRIPTIONS")
                && msg.contains("session.max_subscriptions"),
            "{msg}"
        );
        let env = vec![(
            "HERALD_SESSION__QUEUE_MAX_BYTES".to_string(),
            "10".to_string(),
        )];
        let msg = Config::load(None, env).expect_err("range").to_string();
        assert!(
            msg.contains("HERALD_SESSION__QUEUE_MAX_BYTES") && msg.contains("at least 1024"),
            "{msg}"
        );
    }

    #[test]
    fn auth_settings_are_refused_by_name() {
        let load = |text: &str| {
            Config::load(Some(file(text).path()), no_env())
                .expect_err(text)
                .to_string()
        };
        let msg = load("[auth]\nmode = \"jwt\"\n");
        assert!(msg.contains("auth.jwt_secret"), "jwt needs a key: {msg}");
        let msg = load("[auth]\napi_keys = [\"0123456789abcdef\"]\n");
        assert!(msg.contains("auth.mode"), "keys without jwt mode: {msg}");
        let msg = load("[auth]\ndefault_subscribe = [\"a..b\"]\n");
        assert!(msg.contains("auth.default_subscribe[0]"), "{msg}");
        let ok = "[auth]\nmode = \"jwt\"\njwt_secret = \"0123456789abcdef0123456789abcdef\"\n";
        assert!(Config::load(Some(file(ok).path()), no_env()).is_ok());
    }

    #[test]
    fn cluster_settings_are_checked() {
        let load = |text: &str| Config::load(Some(file(text).path()), no_env());
        let node = |prefix: &str| {
            format!(
                "[cluster]\nbackplane = \"bus\"\nsubject_prefix = \"{prefix}\"\n[[bridge.nats]]\nname = \"bus\"\nsubjects = [\">\"]\nstrip_prefix = \"{prefix}\"\n"
            )
        };
        assert!(load(&node("herald.")).is_ok());
        assert!(load(&node("")).is_ok());
        for bad in ["*.", "herald", "a..b."] {
            let msg = load(&node(bad)).expect_err(bad).to_string();
            assert!(msg.contains("cluster.subject_prefix"), "{bad}: {msg}");
        }
        let msg = load("[cluster]\nsubject_prefix = \"herald.\"\n")
            .expect_err("no backplane")
            .to_string();
        assert!(msg.contains("cluster.subject_prefix"), "{msg}");
        let msg = load("[[bridge.nats]]\nurl = \"nats://a:notaport\"\n")
            .expect_err("url")
            .to_string();
        assert!(msg.contains("bridge.nats[0].url"), "{msg}");
        assert!(
            load("[[bridge.nats]]\nurl = \"nats://127.0.0.1:4222, nats://127.0.0.1:4223\"\n")
                .is_ok()
        );
    }

    #[test]
    fn nats_bridges_are_validated_by_key() {
        let load = |text: &str| Config::load(Some(file(text).path()), no_env());
        let c = load("[[bridge.nats]]\njetstream = { stream = \"E\", deliver = \"all\" }\n")
            .expect("jetstream");
        assert_eq!(
            c.bridge.nats[0].jetstream.as_ref().map(|j| j.deliver),
            Some(JetStreamDeliver::All)
        );
        let msg = load("[[bridge.nats]]\njetstream = { stream = \"E\", deliver = \"latest\" }\n")
            .expect_err("bad deliver")
            .to_string();
        assert!(
            msg.contains("bridge.nats[0].jetstream.deliver") && msg.contains("latest"),
            "{msg}"
        );
        let msg = load("[[bridge.nats]]\nsubjects = [\"a..b\"]\n")
            .expect_err("subject")
            .to_string();
        assert!(
            msg.contains("bridge.nats[0].subjects") && msg.contains("a..b"),
            "{msg}"
        );
        let msg = load("[[bridge.nats]]\n[[bridge.nats]]\n")
            .expect_err("names")
            .to_string();
        assert!(msg.contains("bridge.nats[1].name"), "{msg}");
        let c =
            load("[[bridge.nats]]\nurl = \"nats://127.0.0.1:4222\"\npassword = \"pw-secret\"\n")
                .expect("a NATS bridge is valid");
        assert_eq!(c.bridge.nats[0].subjects, vec!["events.>".to_string()]);
        assert!(!c.to_masked_toml().contains("pw-secret"));
    }

    #[test]
    fn masked_output_hides_secrets() {
        let mut c = Config::default();
        c.auth.jwt_secret = "hunter2".into();
        c.auth.api_keys = vec!["k-123".into()];
        let out = c.to_masked_toml();
        assert!(!out.contains("hunter2") && !out.contains("k-123"), "{out}");
        assert!(out.contains("***"));
        assert!(out.contains("listen = \"127.0.0.1:8080\""), "{out}");
    }

    #[test]
    fn origins_must_be_origins() {
        let mut c = Config::default();
        c.server.allowed_origins = vec!["https://ok.example".into(), "ok.example".into()];
        let msg = c.validate().expect_err("bad origin").to_string();
        assert!(msg.contains("server.allowed_origins[1]"), "{msg}");
    }

    #[test]
    fn conformance_echo_is_off_by_default_and_needs_room_for_echoes() {
        let load = |text: &str| Config::load(Some(file(text).path()), no_env());
        assert!(!Config::default().server.conformance_echo);
        let c = load("[server]\nconformance_echo = true\n").expect("the defaults leave room");
        assert!(c.server.conformance_echo);
        let msg =
            load("[server]\nconformance_echo = true\n[session]\nmax_message_bytes = 2097152\n")
                .expect_err("an echo larger than the queue")
                .to_string();
        assert!(
            msg.contains("server.conformance_echo") && msg.contains("queue_max_bytes"),
            "{msg}"
        );
        let msg = load("[server]\nconformance_echo = \"yes\"\n")
            .expect_err("not a boolean")
            .to_string();
        assert!(msg.contains("server.conformance_echo"), "{msg}");
    }

    #[test]
    fn http_timers_are_bounded() {
        let c = Config::load(None, no_env()).expect("defaults");
        assert_eq!(c.server.client_request_timeout_ms, 5000);
        assert_eq!(c.server.keep_alive_ms, 5000);
        let env = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        assert!(Config::load(None, env("HERALD_SERVER__KEEP_ALIVE_MS", "0")).is_ok());
        for (var, value) in [
            ("HERALD_SERVER__CLIENT_REQUEST_TIMEOUT_MS", "0"),
            ("HERALD_SERVER__CLIENT_REQUEST_TIMEOUT_MS", "3600001"),
            // Added to an Instant by actix-web, this would panic on every connection.
            ("HERALD_SERVER__KEEP_ALIVE_MS", "9223372036854775807"),
        ] {
            let msg = Config::load(None, env(var, value))
                .expect_err(value)
                .to_string();
            let key = var["HERALD_SERVER__".len()..].to_ascii_lowercase();
            assert!(msg.contains(&format!("server.{key}")), "{msg}");
        }
    }

    #[test]
    fn masking_hides_every_nats_password_and_never_panics() {
        // Found by fuzzing: a user-info `@` before the first `://` (a list whose first
        // URL has no scheme) panicked `check-config`, and only the first URL of a
        // list was masked.
        for (url, secrets) in [
            ("u:pw1@127.0.0.1:4222,nats://127.0.0.1:4223", vec!["pw1"]),
            (
                "nats://u:pw1@h1:4222, nats://v:pw2@h2:4222",
                vec!["pw1", "pw2"],
            ),
            ("nats://h1:4222,tls://v:pw2@h2:4222", vec!["pw2"]),
            ("nats://tok3n@h1:4222/path@x", vec!["tok3n"]),
        ] {
            let mut c = Config::default();
            c.bridge.nats.push(NatsBridgeConfig {
                url: url.into(),
                ..NatsBridgeConfig::default()
            });
            let out = c.to_masked_toml();
            for secret in secrets {
                assert!(!out.contains(secret), "{url}: {secret} shown in\n{out}");
            }
            assert!(out.contains("***@"), "{url}: {out}");
        }
        assert_eq!(
            mask_url_credentials("nats://a:b@h1:1, c@h2:2,nats://h3:3"),
            "nats://***@h1:1, ***@h2:2,nats://h3:3"
        );
    }
}
