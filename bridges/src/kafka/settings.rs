//! A Kafka bridge's settings as librdkafka and the topic mapping use them: the
//! `topic_template` parsed once, record keys made into topic tokens, and the client
//! configuration (Herald's defaults, the user's `properties`, what Herald owns).

use rdkafka::config::ClientConfig;

use super::KafkaSettings;
use crate::topic::MAX_TOPIC_BYTES;

/// Makes a record key into one Herald topic token: every character outside
/// `A-Z a-z 0-9 _ - :` (dots, spaces, slashes, any non-ASCII) becomes `_`, an absent
/// or empty key becomes `_`, and the token is cut to at most `max` bytes. Never
/// fails, so no record is lost to its key; distinct keys may share a token
/// (`a.b` and `a_b`), which the event's own `key` field still tells apart.
pub fn key_token(key: Option<&[u8]>, max: usize) -> String {
    let raw = key.map(String::from_utf8_lossy).unwrap_or_default();
    let mut token: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':') {
                c
            } else {
                '_'
            }
        })
        .collect();
    // Every character is ASCII now, so any byte index is a character boundary.
    token.truncate(max.max(1));
    if token.is_empty() {
        token.push('_');
    }
    token
}

/// A `topic_template` split once into its parts, so a record's topic is built
/// without parsing the template again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Topic,
    Key,
}

impl Template {
    /// Parses `{topic}` and `{key}` placeholders; any other `{…}` is an error.
    pub fn parse(template: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open..];
            if let Some(r) = after.strip_prefix("{topic}") {
                parts.push(Part::Topic);
                rest = r;
            } else if let Some(r) = after.strip_prefix("{key}") {
                parts.push(Part::Key);
                rest = r;
            } else {
                return Err(format!(
                    "`{template}`: only {{topic}} and {{key}} may appear in braces"
                ));
            }
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        if parts.is_empty() {
            return Err("an empty template".into());
        }
        Ok(Template { parts })
    }

    /// Whether the template uses `{key}`.
    pub fn uses_key(&self) -> bool {
        self.parts.contains(&Part::Key)
    }

    /// The Herald topic of a record of Kafka topic `topic` with key `key`. The key
    /// token gets whatever room the 255-byte topic limit leaves.
    pub fn render(&self, topic: &str, key: Option<&[u8]>) -> String {
        let fixed: usize = self
            .parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.len(),
                Part::Topic => topic.len(),
                Part::Key => 0,
            })
            .sum();
        let keys = self
            .parts
            .iter()
            .filter(|p| **p == Part::Key)
            .count()
            .max(1);
        let room = MAX_TOPIC_BYTES.saturating_sub(fixed) / keys;
        let mut out = String::with_capacity(fixed + 16);
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Topic => out.push_str(topic),
                Part::Key => out.push_str(&key_token(key, room)),
            }
        }
        out
    }
}

/// The librdkafka configuration of a bridge: Herald's defaults, then the user's
/// `properties`, then what Herald must own (never commit; statistics for readiness
/// and lag; the brokers and group of this node).
pub fn client_config(s: &KafkaSettings, group_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("client.id", format!("herald-{}", s.name))
        // Out of range (a broker that lost its data, retention passed us by): read
        // what the partition holds rather than skip to its end.
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // Live views: ask for records as soon as they exist.
        .set("fetch.wait.max.ms", "100")
        .set("socket.keepalive.enable", "true")
        .set("reconnect.backoff.ms", "250")
        .set("reconnect.backoff.max.ms", "5000");
    for (k, v) in &s.properties {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &s.brokers)
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("statistics.interval.ms", "1000");
    c
}

/// Checks a bridge's settings the way librdkafka will read them, without
/// connecting: property names and values, and the template. Returns the parsed
/// template; the error names the settings field.
pub fn prepare(s: &KafkaSettings) -> Result<Template, (&'static str, String)> {
    let owned = [
        ("bootstrap.servers", "use `brokers`"),
        ("group.id", "each node has its own, `herald-<node>-<name>`"),
        ("enable.auto.commit", "the bridge never commits"),
    ];
    if let Some((k, why)) = owned.iter().find(|(k, _)| s.properties.contains_key(*k)) {
        return Err(("properties", format!("`{k}` is set by Herald ({why})")));
    }
    let template = Template::parse(&s.topic_template).map_err(|e| ("topic_template", e))?;
    for t in &s.topics {
        let sample = template.render(t, Some(b"key"));
        if crate::topic::validate_topic(&sample).is_err() {
            return Err((
                "topic_template",
                format!(
                    "`{}` is not valid: expected a template that makes Herald topics of Kafka topic `{t}` (it gives `{sample}`; topics are dot-separated tokens of `A-Z a-z 0-9 _ - :`)",
                    s.topic_template
                ),
            ));
        }
    }
    client_config(s, "herald-check")
        .create_native_config()
        .map_err(|e| ("properties", e.to_string()))?;
    Ok(template)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_become_one_valid_token() {
        assert_eq!(key_token(Some(b"order-7"), 200), "order-7");
        assert_eq!(key_token(Some(b"a.b c/d"), 200), "a_b_c_d");
        assert_eq!(key_token(Some("zürich".as_bytes()), 200), "z_rich");
        assert_eq!(key_token(Some(&[0xff, 0x41]), 200), "_A");
        assert_eq!(key_token(Some(b""), 200), "_");
        assert_eq!(key_token(None, 200), "_");
        assert_eq!(key_token(Some(b"abcdef"), 3), "abc");
        assert_eq!(key_token(Some(b"abc"), 0), "a");
    }

    #[test]
    fn templates_render_topics_within_the_limit() {
        let t = Template::parse("{topic}.{key}").expect("valid");
        assert!(t.uses_key());
        assert_eq!(t.render("orders", Some(b"order-7")), "orders.order-7");
        assert_eq!(t.render("orders", None), "orders._");
        let long = vec![b'k'; 1000];
        assert_eq!(t.render("orders", Some(&long)).len(), 255);
        let t = Template::parse("kafka.{topic}").expect("valid");
        assert!(!t.uses_key());
        assert_eq!(t.render("orders", Some(b"x")), "kafka.orders");
        assert!(Template::parse("{topic}.{partition}").is_err());
        assert!(Template::parse("").is_err());
    }

    #[test]
    fn herald_owns_commit_group_and_brokers() {
        let mut s = KafkaSettings::default();
        assert!(prepare(&s).is_ok());
        s.properties
            .insert("enable.auto.commit".into(), "true".into());
        assert_eq!(prepare(&s).map_err(|e| e.0), Err("properties"));
        s.properties.clear();
        s.properties.insert("no.such.property".into(), "1".into());
        let err = prepare(&s).expect_err("unknown property");
        assert!(err.1.contains("no.such.property"), "{}", err.1);
        s.properties.clear();
        s.properties
            .insert("fetch.wait.max.ms".into(), "not a number".into());
        assert!(prepare(&s).is_err());
    }
}
