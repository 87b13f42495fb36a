//! Bridge configuration: the `[[bridge.nats]]` entries of Herald's TOML, as the
//! bridges use them. Always compiled (without the `nats` feature too), so a config
//! file stays valid whatever features a build has. Field docs are user docs.

use serde::{Deserialize, Serialize};

/// One `[[bridge.nats]]` entry: core NATS subscriptions (or a JetStream start)
/// mapped to Herald topics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsSettings {
    /// Bridge name (unique): in `/readyz`, logs and the `bridge` metric label.
    /// Default `nats`.
    pub name: String,
    /// Server URL, or several comma-separated (the client picks one and fails over).
    /// Default `nats://127.0.0.1:4222`.
    pub url: String,
    /// Subjects to subscribe to; wildcards allowed. Default `["events.>"]`.
    pub subjects: Vec<String>,
    /// Prepended to every topic (after `strip_prefix` is removed). Default empty.
    pub topic_prefix: String,
    /// Removed from the start of a subject when present. Default empty.
    pub strip_prefix: String,
    /// Username (with `password`).
    pub user: String,
    /// Password (masked by `check-config`).
    pub password: String,
    /// Token (masked).
    pub token: String,
    /// NKey seed (masked).
    pub nkey: String,
    /// Path of a `.creds` file (JWT + NKey).
    pub creds_file: String,
    /// CA certificate (PEM) to trust for TLS.
    pub tls_ca_file: String,
    /// Client certificate (PEM), with `tls_key_file`, for mutual TLS.
    pub tls_cert_file: String,
    /// Client key (PEM).
    pub tls_key_file: String,
    /// Require TLS. Default false (a `tls://` URL requires it too).
    pub tls_required: bool,
    /// Messages buffered per subscription in the NATS client before it drops them
    /// (counted as `herald_bridge_slow_consumer_total`). Sized on purpose: large
    /// enough to ride out a burst, bounded. Default 65536.
    pub subscription_capacity: usize,
    /// Start from a JetStream stream instead of core subscriptions:
    /// `{ stream = "EVENTS", deliver = "last_per_subject" }`. Default: none.
    pub jetstream: Option<JetStreamStart>,
}

impl Default for NatsSettings {
    fn default() -> Self {
        NatsSettings {
            name: "nats".into(),
            url: "nats://127.0.0.1:4222".into(),
            subjects: vec!["events.>".into()],
            topic_prefix: String::new(),
            strip_prefix: String::new(),
            user: String::new(),
            password: String::new(),
            token: String::new(),
            nkey: String::new(),
            creds_file: String::new(),
            tls_ca_file: String::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            tls_required: false,
            subscription_capacity: 65_536,
            jetstream: None,
        }
    }
}

/// `jetstream = { stream, deliver }`: an ordered, ephemeral push consumer on an
/// existing stream, filtered by the bridge's subjects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JetStreamStart {
    /// An existing stream holding the bridge's subjects.
    pub stream: String,
    /// What to replay at start. Default `last_per_subject`.
    #[serde(default)]
    pub deliver: Deliver,
}

/// Where a JetStream start begins.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Deliver {
    /// Only messages stored after the consumer is created.
    New,
    /// Everything the stream holds, then live.
    All,
    /// The last message of every subject, then live: dashboards get current state
    /// right after a broker restart.
    #[default]
    LastPerSubject,
}
