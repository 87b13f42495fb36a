//! Bridge configuration: the `[[bridge.nats]]` and `[[bridge.kafka]]` entries of
//! Herald's TOML, as the bridges use them. Always compiled (without the `nats` or
//! `kafka` feature too), so a config file stays valid whatever features a build has.
//! Field docs are user docs.

use std::collections::BTreeMap;

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
    pub deliver: JetStreamDeliver,
    /// Hand each message's stream position to the sink
    /// ([`crate::BridgeEvent::position`]). Not a configuration key: the broker sets it
    /// on the backplane bridge when it reads the cluster history stream.
    #[serde(skip)]
    pub positions: bool,
}

/// Where a JetStream start begins.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JetStreamDeliver {
    /// Only messages stored after the consumer is created.
    New,
    /// Everything the stream holds, then live.
    All,
    /// The last message of every subject, then live: dashboards get current state
    /// right after a broker restart.
    #[default]
    LastPerSubject,
}

/// One `[[bridge.kafka]]` entry: every partition of `topics`, read by this node alone
/// (no consumer-group split between nodes), mapped to Herald topics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSettings {
    /// Bridge name (unique among all bridges): in `/readyz`, logs, the `bridge`
    /// metric label and the per-node `group.id`. Default `kafka`.
    pub name: String,
    /// Bootstrap brokers, comma-separated `host:port`. Default `127.0.0.1:9092`.
    pub brokers: String,
    /// Kafka topics to read (exact names). Default `["orders"]`.
    pub topics: Vec<String>,
    /// Herald topic for a record: `{topic}` is the Kafka topic, `{key}` the record key
    /// made into one topic token (see the Kafka bridge docs). Default `{topic}`.
    pub topic_template: String,
    /// Where each partition starts when the bridge first sees it: `latest`,
    /// `earliest` or `last:N` (the last N records of every partition). Default `latest`.
    pub start: Start,
    /// librdkafka properties passed through as they are (SASL, TLS, fetch tuning).
    /// Values may be strings, numbers or booleans. Masked by `check-config` when the
    /// name mentions a password, secret or key.
    #[serde(deserialize_with = "properties")]
    pub properties: BTreeMap<String, String>,
    /// How often the bridge re-reads topic metadata to pick up new partitions
    /// (and notice a deleted topic), in milliseconds. Default 10000.
    pub metadata_refresh_ms: u64,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            name: "kafka".into(),
            brokers: "127.0.0.1:9092".into(),
            topics: vec!["orders".into()],
            topic_template: "{topic}".into(),
            start: Start::Latest,
            properties: BTreeMap::new(),
            metadata_refresh_ms: 10_000,
        }
    }
}

/// Where a Kafka partition starts (`start = "latest" | "earliest" | "last:N"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Start {
    /// Only records produced from now on.
    #[default]
    Latest,
    /// Everything the partition still holds.
    Earliest,
    /// The last N records of every partition, then live.
    Last(u32),
}

impl std::str::FromStr for Start {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "latest" => Ok(Start::Latest),
            "earliest" => Ok(Start::Earliest),
            _ => s
                .strip_prefix("last:")
                .and_then(|n| n.parse::<u32>().ok())
                .filter(|n| *n > 0)
                .map(Start::Last)
                .ok_or_else(|| {
                    format!("`{s}`: expected \"latest\", \"earliest\" or \"last:N\" with N ≥ 1")
                }),
        }
    }
}

impl std::fmt::Display for Start {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Start::Latest => f.write_str("latest"),
            Start::Earliest => f.write_str("earliest"),
            Start::Last(n) => write!(f, "last:{n}"),
        }
    }
}

impl Serialize for Start {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Start {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// librdkafka takes every property as a string; TOML users write `50` or `true`.
fn properties<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Value {
        Text(String),
        Int(i64),
        Float(f64),
        Bool(bool),
    }
    let raw = BTreeMap::<String, Value>::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Value::Text(s) => s,
                Value::Int(n) => n.to_string(),
                Value::Float(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
            };
            (k, v)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_positions_parse_and_print_back() {
        for s in ["latest", "earliest", "last:20"] {
            assert_eq!(s.parse::<Start>().map(|v| v.to_string()), Ok(s.to_owned()));
        }
        for bad in ["last:0", "last:", "last:-1", "newest", ""] {
            assert!(bad.parse::<Start>().is_err(), "{bad}");
        }
    }
}
