//! A NATS message as a Herald event: subject to topic, payload and headers as they
//! are, and the `Herald-Source` / `Herald-Key` headers a node publishing through the
//! backplane sets.

use std::collections::BTreeMap;

use super::NatsSettings;
use crate::topic::Pattern;
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

/// The topics a subscription to `subject` can produce, as one pattern: the subject
/// (a NATS pattern is a Herald pattern) mapped as [`topic_for`] maps each message,
/// when every subject it matches is mapped the same way (no `strip_prefix`, or one
/// the subject spells out before any wildcard). Otherwise some of its subjects are
/// stripped and some kept whole, and the range is every topic under `topic_prefix`,
/// or every topic when that makes no pattern. Never narrower than the truth: it says
/// which topics may have missed events when the connection drops.
pub fn topic_range(subject: &str, strip_prefix: &str, topic_prefix: &str) -> Pattern {
    let literal = |p: &str| !p.contains(['*', '>']);
    let exact = strip_prefix.is_empty()
        || (subject.len() > strip_prefix.len()
            && subject.starts_with(strip_prefix)
            && literal(strip_prefix));
    let everything = || Pattern::parse(&format!("{topic_prefix}>")).unwrap_or_else(|_| all());
    if exact {
        Pattern::parse(&topic_for(subject, strip_prefix, topic_prefix))
            .unwrap_or_else(|_| everything())
    } else {
        everything()
    }
}

fn all() -> Pattern {
    Pattern::parse(">").expect("`>` is a pattern")
}

/// Builds the event for a NATS message. `Herald-Source` and `Herald-Key` headers
/// (set by a Herald node publishing through the backplane) restore the event's
/// source and key; other headers pass through, multiple values joined by `,`.
pub fn event_for(s: &NatsSettings, msg: async_nats::Message) -> BridgeEvent {
    event_from(s, msg.subject.as_str(), msg.headers.as_ref(), msg.payload)
}

/// [`event_for`] from a message's parts: also for a message read back from a
/// JetStream stream by sequence.
pub fn event_from(
    s: &NatsSettings,
    subject: &str,
    message_headers: Option<&async_nats::HeaderMap>,
    payload: bytes::Bytes,
) -> BridgeEvent {
    let mut headers = BTreeMap::new();
    let mut source = Source::Nats;
    let mut key = None;
    if let Some(h) = message_headers {
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
        topic: topic_for(subject, &s.strip_prefix, &s.topic_prefix),
        payload,
        key,
        headers,
        source,
        position: None,
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
    fn a_subscription_covers_the_topics_its_messages_map_to() {
        let range = |subject, strip, prefix| topic_range(subject, strip, prefix).to_string();
        assert_eq!(range("orders.>", "", ""), "orders.>");
        assert_eq!(range("orders.*", "", "nats."), "nats.orders.*");
        assert_eq!(range("events.>", "events.", ""), ">");
        assert_eq!(range("events.*.x", "events.", "n."), "n.*.x");
        assert_eq!(range("herald.cluster.>", "herald.cluster.", ""), ">");
        // `>` matches subjects with and without the prefix: both kinds of topic.
        assert_eq!(range(">", "events.", ""), ">");
        assert_eq!(range(">", "events.", "n."), "n.>");
        assert_eq!(range("*.x", "a.", "nats"), ">", "`nats>` is no pattern");
        // A subject equal to the prefix is kept whole (nothing after it to strip).
        assert_eq!(range("events.", "events.", ""), ">");
        // Whatever the range says must match what topic_for makes of a message.
        for (subject, message, strip, prefix) in [
            ("events.>", "events.a.b", "events.", ""),
            (">", "events.a", "events.", "p."),
            (">", "other.a", "events.", "p."),
            ("orders.*", "orders.eu", "", "x."),
        ] {
            let pattern = topic_range(subject, strip, prefix);
            let topic = topic_for(message, strip, prefix);
            assert!(pattern.matches(&topic), "{pattern} must match {topic}");
        }
    }

    #[test]
    fn dollar_subjects_are_system_traffic() {
        assert!(is_system_subject("$KV.HERALD_TICKETS.abc"));
        assert!(is_system_subject("$JS.API.INFO"));
        assert!(!is_system_subject("orders.eu"));
        assert!(!is_system_subject("_INBOX.x"));
    }
}
