//! Topic names and subscription patterns: the grammar of
//! [docs/protocol.md, section 1](../../docs/protocol.md#1-topics).
//! Both crates use this one definition: the bridges to build topics, the broker to
//! validate what clients send and to match subscriptions.
//!
//! A topic is 1..=255 bytes of dot-separated tokens of `A-Z a-z 0-9 _ - :`. A pattern
//! may also use `*` (exactly one token) and `>` (one or more trailing tokens, last
//! only). Everything here is pure and allocation-light so the registry can match a new
//! topic against every pattern it knows without cost worth measuring.

use std::fmt;

/// Longest topic or pattern, in bytes.
pub const MAX_TOPIC_BYTES: usize = 255;

/// Why a topic or pattern was refused. The message goes to the client verbatim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error("topic is longer than {MAX_TOPIC_BYTES} bytes")]
    TooLong,
    #[error("topic `{0}` has an empty token")]
    EmptyToken(String),
    #[error("topic `{0}` has a character outside A-Z a-z 0-9 _ - :")]
    BadCharacter(String),
    #[error("`>` may only be the last token, in `{0}`")]
    TailNotLast(String),
    #[error("wildcards are not allowed here: `{0}` is a pattern")]
    Wildcard(String),
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':')
}

/// Checks a subscription pattern (a topic name is a pattern without wildcards).
/// Returns whether it contains a wildcard.
pub fn validate_pattern(s: &str) -> Result<bool, TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong);
    }
    let mut wildcard = false;
    let mut tokens = s.split('.').peekable();
    while let Some(token) = tokens.next() {
        match token {
            "" => return Err(TopicError::EmptyToken(s.to_owned())),
            "*" => wildcard = true,
            ">" => {
                if tokens.peek().is_some() {
                    return Err(TopicError::TailNotLast(s.to_owned()));
                }
                wildcard = true;
            }
            t if t.bytes().all(is_token_char) => {}
            _ => return Err(TopicError::BadCharacter(s.to_owned())),
        }
    }
    Ok(wildcard)
}

/// Checks a concrete topic name: a valid pattern with no wildcard.
pub fn validate_topic(s: &str) -> Result<(), TopicError> {
    if validate_pattern(s)? {
        return Err(TopicError::Wildcard(s.to_owned()));
    }
    Ok(())
}

/// A concrete topic name that has passed [`validate_topic`]: made once at the edge
/// where a name enters Herald (HTTP, WebSocket, a bridge's sink, embedded publish),
/// so the topic layer never checks it again.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(String);

impl TopicName {
    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<Self, TopicError> {
        let name = name.into();
        validate_topic(&name)?;
        Ok(TopicName(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name, as an owned string.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::ops::Deref for TopicName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// Whether `pattern` (already validated) matches the concrete `topic`.
pub fn matches(pattern: &str, topic: &str) -> bool {
    let mut p = pattern.split('.');
    let mut t = topic.split('.');
    loop {
        match (p.next(), t.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether every topic `pattern` can match is also matched by `grant`
/// (docs/protocol.md#subscriptions: `orders.>` is not covered by a grant of `orders.*`).
pub fn covers(grant: &str, pattern: &str) -> bool {
    let mut g = grant.split('.');
    let mut p = pattern.split('.');
    loop {
        match (g.next(), p.next()) {
            // `>` in the grant takes one or more tokens, whatever they are.
            (Some(">"), Some(_)) => return true,
            // A pattern's `>` matches arbitrarily long topics; only `>` covers it.
            (Some(_), Some(">")) => return false,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// A validated subscription pattern or topic name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pattern {
    text: String,
    wildcard: bool,
}

impl Pattern {
    /// Validates `text` as a pattern.
    pub fn parse(text: &str) -> Result<Self, TopicError> {
        let wildcard = validate_pattern(text)?;
        Ok(Pattern {
            text: text.to_owned(),
            wildcard,
        })
    }

    /// The pattern as the client wrote it.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether it has `*` or `>`; a pattern without is one concrete topic.
    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    /// Whether it matches the concrete `topic`.
    pub fn matches(&self, topic: &str) -> bool {
        if self.wildcard {
            matches(&self.text, topic)
        } else {
            self.text == topic
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_topics_and_patterns() {
        for ok in [
            "a",
            "orders.eu.created",
            "A-z_0:9",
            "a.*",
            "a.>",
            ">",
            "*",
            "*.b.*",
        ] {
            assert!(validate_pattern(ok).is_ok(), "{ok}");
        }
        assert_eq!(validate_pattern("orders.eu"), Ok(false));
        assert_eq!(validate_pattern("orders.*"), Ok(true));
        assert!(validate_topic("orders.eu").is_ok());
        assert_eq!(validate_pattern(&"a".repeat(255)), Ok(false));
    }

    #[test]
    fn rejects_invalid_topics_with_the_reason() {
        assert_eq!(validate_pattern(""), Err(TopicError::Empty));
        assert_eq!(validate_pattern(&"a".repeat(256)), Err(TopicError::TooLong));
        assert!(matches!(
            validate_pattern("a..b"),
            Err(TopicError::EmptyToken(_))
        ));
        assert!(matches!(
            validate_pattern(".a"),
            Err(TopicError::EmptyToken(_))
        ));
        assert!(matches!(
            validate_pattern("a."),
            Err(TopicError::EmptyToken(_))
        ));
        assert!(matches!(
            validate_pattern("a b"),
            Err(TopicError::BadCharacter(_))
        ));
        assert!(matches!(
            validate_pattern("a/b"),
            Err(TopicError::BadCharacter(_))
        ));
        assert!(matches!(
            validate_pattern("é"),
            Err(TopicError::BadCharacter(_))
        ));
        assert!(matches!(
            validate_pattern("a*.b"),
            Err(TopicError::BadCharacter(_))
        ));
        assert!(matches!(
            validate_pattern("a.>.b"),
            Err(TopicError::TailNotLast(_))
        ));
        assert!(matches!(
            validate_topic("a.*"),
            Err(TopicError::Wildcard(_))
        ));
        assert!(matches!(
            validate_topic("a.>"),
            Err(TopicError::Wildcard(_))
        ));
    }

    #[test]
    fn star_matches_exactly_one_token() {
        assert!(matches("orders.*", "orders.eu"));
        assert!(!matches("orders.*", "orders"));
        assert!(!matches("orders.*", "orders.eu.created"));
        assert!(matches("*.eu.*", "orders.eu.created"));
        assert!(!matches("*.eu.*", "orders.us.created"));
    }

    #[test]
    fn tail_matches_one_or_more_trailing_tokens() {
        assert!(matches("orders.>", "orders.eu"));
        assert!(matches("orders.>", "orders.eu.created"));
        assert!(!matches("orders.>", "orders"));
        assert!(matches(">", "anything.at.all"));
        assert!(!matches("orders.>", "news.eu"));
    }

    #[test]
    fn exact_patterns_match_only_themselves() {
        let p = Pattern::parse("orders.eu").expect("valid");
        assert!(!p.is_wildcard());
        assert!(p.matches("orders.eu"));
        assert!(!p.matches("orders.eu.x"));
        assert!(!p.matches("orders"));
    }

    #[test]
    fn covers_requires_every_matched_topic_to_be_granted() {
        assert!(covers(">", "anything.>"));
        assert!(covers("orders.>", "orders.*"));
        assert!(covers("orders.>", "orders.>"));
        assert!(covers("orders.>", "orders.eu.created"));
        assert!(covers("orders.*", "orders.eu"));
        assert!(covers("orders.*", "orders.*"));
        assert!(!covers("orders.*", "orders.>"));
        assert!(!covers("orders.*", "orders.eu.x"));
        assert!(!covers("orders.eu", "orders.*"));
        assert!(!covers("orders.>", "orders"));
        assert!(!covers("orders.>", ">"));
        assert!(covers("*.eu", "orders.eu"));
        assert!(!covers("*.eu", "*.us"));
    }

    #[test]
    fn covers_agrees_with_matches_on_concrete_topics() {
        let grants = ["a.*", "a.>", "*.b", ">", "a.b", "*", "*.*.c"];
        let topics = ["a", "a.b", "a.b.c", "x.b", "x.y.c", "a.c"];
        for g in grants {
            for t in topics {
                assert_eq!(covers(g, t), matches(g, t), "grant {g} topic {t}");
            }
        }
    }
}
