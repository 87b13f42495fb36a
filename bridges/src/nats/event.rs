//! A NATS message as a Herald event: subject to topic, payload and headers as they
//! are, and the `Herald-Source` / `Herald-Key` headers a node publishing through the
//! backplane sets.

use std::collections::BTreeMap;

use super::NatsSettings;
use crate::{BridgeEvent, Source};

/// Header carrying an event's original `source` through the backplane.
pub const SOURCE_HEADER: &str = "Herald-Source";
/// Header carrying an event's `key` through the backplane.
pub const KEY_HEADER: &str = "Herald-Key";

/// Whether `subject` is NATS system or JetStream traffic (`$JS.…`, `$KV.…`, a
/// cluster's own `$…` subjects): never a Herald topic (`$` is not a topic character),
/// so a bridge subscribed to `>` skips it rather than count it as an invalid topic.
pub fn is_system_subject(subject: &str) -> bool {
    subject.starts_with('$')
}

/// Maps a subject to a Herald topic: strip `strip_prefix` when present, then prepend
/// `topic_prefix`. The broker's sink validates the result (invalid topics are
/// dropped and counted there).
pub fn topic_for(subject: &str, strip_prefix: &str, topic_prefix: &str) -> String {
    let rest = if strip_prefix.is_empty() {
        subject
    } else {
        subject.strip_prefix(strip_prefix).unwrap_or(subject)
    };
    format!("{topic_prefix}{rest}")
}

/// Builds the event for a NATS message. `Herald-Source` and `Herald-Key` headers
/// (set by a Herald node publishing through the backplane) restore the event's
/// source and key; other headers pass through, multiple values joined by `,`.
pub fn event_for(s: &NatsSettings, msg: async_nats::Message) -> BridgeEvent {
    let mut headers = BTreeMap::new();
    let mut source = Source::Nats;
    let mut key = None;
    if let Some(h) = &msg.headers {
        for (name, values) in h.iter() {
            let joined: Vec<&str> = values.iter().map(|v| v.as_str()).collect();
            let value = joined.join(",");
            match name.as_ref() {
                SOURCE_HEADER => {
                    source = match value.as_str() {
                        "http" => Source::Http,
                        "ws" => Source::Ws,
                        "kafka" => Source::Kafka,
                        _ => Source::Nats,
                    }
                }
                KEY_HEADER => key = Some(value),
                _ => {
                    headers.insert(name.to_string(), value);
                }
            }
        }
    }
    BridgeEvent {
        topic: topic_for(msg.subject.as_str(), &s.strip_prefix, &s.topic_prefix),
        payload: msg.payload,
        key,
        headers,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_strips_then_prefixes() {
        assert_eq!(topic_for("events.orders.eu", "events.", ""), "orders.eu");
        assert_eq!(topic_for("events.orders.eu", "", ""), "events.orders.eu");
        assert_eq!(
            topic_for("events.orders.eu", "events.", "nats."),
            "nats.orders.eu"
        );
        // A subject without the prefix is kept whole.
        assert_eq!(topic_for("other.x", "events.", ""), "other.x");
    }

    #[test]
    fn dollar_subjects_are_system_traffic() {
        assert!(is_system_subject("$KV.HERALD_TICKETS.abc"));
        assert!(is_system_subject("$JS.API.INFO"));
        assert!(!is_system_subject("orders.eu"));
        assert!(!is_system_subject("_INBOX.x"));
    }
}
