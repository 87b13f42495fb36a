//! The wire contract (docs/protocol.md, sections 3–7): what clients send, what the server
//! answers, error codes and close codes.
//!
//! Client messages are parsed into one flat [`Request`] borrowing from the frame, then
//! turned into a typed [`Op`]; every failure maps to a [`ProtocolError`] carrying the
//! error code the client sees. Server messages are the [`ServerMessage`] enum,
//! serialized with serde; events are rendered separately in `event.rs` because they
//! are serialized once and shared by every subscriber.

pub mod event;

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

/// The only subprotocol, offered in `Sec-WebSocket-Protocol`.
pub const SUBPROTOCOL: &str = "herald.v1.json";

/// WebSocket close codes Herald uses (docs/protocol.md#7-close-codes).
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// Broker shutting down or restarting.
    pub const GOING_AWAY: u16 = 1001;
    /// WebSocket protocol error.
    pub const PROTOCOL: u16 = 1002;
    /// Binary frame received.
    pub const UNSUPPORTED: u16 = 1003;
    /// Invalid UTF-8 in a text frame.
    pub const INVALID_UTF8: u16 = 1007;
    /// Message larger than `max_message_bytes`.
    pub const TOO_BIG: u16 = 1009;
    /// Internal error.
    pub const INTERNAL: u16 = 1011;
    /// Try again later: the identity provider's keys (`auth.jwks_url`) are not
    /// fetched yet, so a first-message token cannot be verified.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// Unauthorized.
    pub const UNAUTHORIZED: u16 = 4001;
    /// Heartbeat timeout.
    pub const HEARTBEAT_TIMEOUT: u16 = 4008;
    /// Slow consumer under policy `disconnect`.
    pub const SLOW_CONSUMER: u16 = 4009;
    /// Rate limit exceeded repeatedly.
    pub const RATE_LIMITED: u16 = 4029;

    /// Every code, in the order metrics list them.
    pub const ALL: [u16; 14] = [
        NORMAL,
        GOING_AWAY,
        PROTOCOL,
        UNSUPPORTED,
        INVALID_UTF8,
        TOO_BIG,
        INTERNAL,
        TRY_AGAIN_LATER,
        UNAUTHORIZED,
        HEARTBEAT_TIMEOUT,
        SLOW_CONSUMER,
        RATE_LIMITED,
        // 1005: the client sent a close frame without a code.
        1005,
        // 1006: the connection ended without a close frame.
        1006,
    ];
}

/// Error codes of `{"type":"error"}` replies and HTTP error bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    UnknownOp,
    InvalidTopic,
    Forbidden,
    Unauthorized,
    TooManySubscriptions,
    RateLimited,
    PayloadTooLarge,
    PublishDisabled,
    Internal,
}

impl ErrorCode {
    /// Every code, in the order metrics list them (tests/asyncapi.rs checks that the
    /// list is complete).
    pub const ALL: [ErrorCode; 10] = [
        ErrorCode::BadRequest,
        ErrorCode::UnknownOp,
        ErrorCode::InvalidTopic,
        ErrorCode::Forbidden,
        ErrorCode::Unauthorized,
        ErrorCode::TooManySubscriptions,
        ErrorCode::RateLimited,
        ErrorCode::PayloadTooLarge,
        ErrorCode::PublishDisabled,
        ErrorCode::Internal,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::InvalidTopic => "invalid_topic",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::PublishDisabled => "publish_disabled",
            ErrorCode::Internal => "internal",
        }
    }
}

/// A request refused with an error reply (the connection stays open).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ProtocolError {
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
}

/// Deserializes a present field into `Some` even when it is JSON `null`, so that a
/// publish of `"data": null` is distinguishable from one without `data`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Every field any client op may carry, borrowed from the frame. Unknown fields are
/// ignored so that newer clients can talk to older brokers.
#[derive(Debug, Deserialize)]
struct Request<'a> {
    #[serde(borrow)]
    op: std::borrow::Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(default)]
    topics: Option<Vec<String>>,
    #[serde(default)]
    last: Option<u32>,
    #[serde(default)]
    resume: Option<Resume>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default, borrow, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    token: Option<String>,
}

/// Only the `id` of a request, to answer requests that fail to parse as a whole.
#[derive(Deserialize)]
struct IdOnly<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    id: Option<&'a RawValue>,
}

/// `"resume": {"epoch": "…", "topics": {"orders.eu": 41}}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resume {
    pub epoch: String,
    pub topics: BTreeMap<String, u64>,
}

/// What a subscriber wants from history when it subscribes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replay {
    /// Live events only.
    None,
    /// Up to N most recent events per matching topic.
    Last(u32),
    /// The events after the given seq of each listed topic (epoch already checked).
    Resume(BTreeMap<String, u64>),
}

/// A parsed client message.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Subscribe {
        topics: Vec<String>,
        last: Option<u32>,
        resume: Option<Resume>,
    },
    Unsubscribe {
        topics: Vec<String>,
    },
    Publish {
        topic: String,
        /// The raw JSON text of `data`, kept verbatim.
        data: String,
        key: Option<String>,
        headers: BTreeMap<String, String>,
    },
    Ping,
    Pong,
    Auth {
        token: String,
    },
}

impl Op {
    /// The op's wire name (for logs).
    pub fn name(&self) -> &'static str {
        match self {
            Op::Subscribe { .. } => "subscribe",
            Op::Unsubscribe { .. } => "unsubscribe",
            Op::Publish { .. } => "publish",
            Op::Ping => "ping",
            Op::Pong => "pong",
            Op::Auth { .. } => "auth",
        }
    }
}

/// A request id, echoed verbatim (a JSON string or number the client chose).
pub type RequestId = Option<Box<RawValue>>;

fn checked_id(id: Option<&RawValue>) -> Result<RequestId, ProtocolError> {
    match id {
        None => Ok(None),
        Some(raw) => {
            let text = raw.get();
            let first = text.as_bytes().first().copied().unwrap_or(b' ');
            if first == b'"' || first == b'-' || first.is_ascii_digit() {
                Ok(Some(raw.to_owned()))
            } else {
                Err(ProtocolError::bad_request(
                    "`id` must be a string or a number",
                ))
            }
        }
    }
}

fn topics_field(topics: Option<Vec<String>>) -> Result<Vec<String>, ProtocolError> {
    match topics {
        None => Err(ProtocolError::bad_request("missing field `topics`")),
        Some(t) if t.is_empty() => Err(ProtocolError::bad_request("`topics` must not be empty")),
        Some(t) => Ok(t),
    }
}

/// Parses one client text frame. On error, returns the request's id when it could be
/// read, so the error reply still carries it.
pub fn parse(text: &str) -> Result<(RequestId, Op), (RequestId, ProtocolError)> {
    // serde would also read a struct from a JSON array; the protocol takes objects.
    if !text.trim_start().starts_with('{') {
        return Err((
            None,
            ProtocolError::bad_request("a message must be a JSON object"),
        ));
    }
    let req: Request<'_> = match serde_json::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let id = serde_json::from_str::<IdOnly<'_>>(text)
                .ok()
                .and_then(|r| checked_id(r.id).ok().flatten());
            let message = if e.is_syntax() || e.is_eof() {
                format!("not valid JSON: {e}")
            } else {
                e.to_string()
            };
            return Err((id, ProtocolError::bad_request(message)));
        }
    };
    let id = checked_id(req.id).map_err(|e| (None, e))?;
    let op = build_op(req).map_err(|e| (id.clone(), e))?;
    Ok((id, op))
}

fn build_op(req: Request<'_>) -> Result<Op, ProtocolError> {
    match req.op.as_ref() {
        "subscribe" => {
            let topics = topics_field(req.topics)?;
            if req.last.is_some() && req.resume.is_some() {
                return Err(ProtocolError::bad_request(
                    "`last` and `resume` are exclusive",
                ));
            }
            Ok(Op::Subscribe {
                topics,
                last: req.last,
                resume: req.resume,
            })
        }
        "unsubscribe" => Ok(Op::Unsubscribe {
            topics: topics_field(req.topics)?,
        }),
        "publish" => {
            let topic = req
                .topic
                .ok_or_else(|| ProtocolError::bad_request("missing field `topic`"))?;
            let data = req
                .data
                .ok_or_else(|| ProtocolError::bad_request("missing field `data`"))?;
            Ok(Op::Publish {
                topic,
                data: data.get().to_owned(),
                key: req.key,
                headers: req.headers.unwrap_or_default(),
            })
        }
        "ping" => Ok(Op::Ping),
        "pong" => Ok(Op::Pong),
        "auth" => Ok(Op::Auth {
            token: req
                .token
                .ok_or_else(|| ProtocolError::bad_request("missing field `token`"))?,
        }),
        other => Err(ProtocolError::new(
            ErrorCode::UnknownOp,
            format!("unknown op `{}`", truncate(other, 64)),
        )),
    }
}

/// Cuts `s` to at most `max` bytes on a char boundary (echoed input stays bounded).
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `welcome.heartbeat`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Heartbeat {
    pub interval_ms: u64,
    pub timeout_ms: u64,
}

/// `welcome.limits`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_subscriptions: usize,
}

/// Why a resume was impossible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResetReason {
    EpochChanged,
    HistoryExpired,
}

/// Every message the server sends except `event` (see `event.rs`).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage<'a> {
    Welcome {
        session: &'a str,
        node: &'a str,
        epoch: &'a str,
        protocol: &'a str,
        delivery: &'a str,
        heartbeat: Heartbeat,
        limits: Limits,
    },
    Subscribed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        topics: &'a [String],
    },
    Unsubscribed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        topics: &'a [String],
    },
    Ok {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        code: ErrorCode,
        message: &'a str,
    },
    Ping,
    Lagged {
        dropped: u64,
    },
    Reset {
        topic: &'a str,
        reason: ResetReason,
    },
    /// Over SSE only: the last message of a stream Herald ends, with the close code
    /// a WebSocket would have got (1001, 4001, 4009).
    Close {
        code: u16,
        reason: &'a str,
    },
}

impl ServerMessage<'_> {
    /// The JSON text of this message.
    pub fn to_frame(&self) -> bytestring::ByteString {
        // Serializing these plain structs cannot fail; fall back to a valid error
        // frame rather than panicking if it ever did.
        serde_json::to_string(self)
            .unwrap_or_else(|_| {
                r#"{"type":"error","code":"internal","message":"serialization failed"}"#.to_owned()
            })
            .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> (RequestId, Op) {
        parse(text).unwrap_or_else(|(_, e)| panic!("{text}: {e}"))
    }

    fn err(text: &str) -> (Option<String>, ProtocolError) {
        match parse(text) {
            Ok(op) => panic!("{text} parsed as {op:?}"),
            Err((id, e)) => (id.map(|r| r.get().to_owned()), e),
        }
    }

    #[test]
    fn parses_every_op() {
        let (id, op) = ok(r#"{"op":"subscribe","id":1,"topics":["orders.*","news"],"last":10}"#);
        assert_eq!(id.map(|r| r.get().to_owned()), Some("1".into()));
        assert_eq!(
            op,
            Op::Subscribe {
                topics: vec!["orders.*".into(), "news".into()],
                last: Some(10),
                resume: None
            }
        );
        let (_, op) =
            ok(r#"{"op":"subscribe","topics":["a.*"],"resume":{"epoch":"E","topics":{"a.b":41}}}"#);
        match op {
            Op::Subscribe {
                resume: Some(r), ..
            } => {
                assert_eq!(r.epoch, "E");
                assert_eq!(r.topics.get("a.b"), Some(&41));
            }
            other => panic!("{other:?}"),
        }
        let (id, op) = ok(r#"{"op":"publish","id":"x","topic":"chat.room1","data":{"text":"hi"}}"#);
        assert_eq!(id.map(|r| r.get().to_owned()), Some("\"x\"".into()));
        assert_eq!(
            op,
            Op::Publish {
                topic: "chat.room1".into(),
                data: r#"{"text":"hi"}"#.into(),
                key: None,
                headers: BTreeMap::new()
            }
        );
        assert!(
            matches!(ok(r#"{"op":"publish","topic":"a","data":null}"#).1, Op::Publish { data, .. } if data == "null")
        );
        assert_eq!(ok(r#"{"op":"ping","id":4}"#).1, Op::Ping);
        assert_eq!(ok(r#"{"op":"pong"}"#).1, Op::Pong);
        assert_eq!(
            ok(r#"{"op":"unsubscribe","topics":["a"]}"#).1,
            Op::Unsubscribe {
                topics: vec!["a".into()]
            }
        );
        assert_eq!(
            ok(r#"{"op":"auth","token":"t"}"#).1,
            Op::Auth { token: "t".into() }
        );
        // Unknown fields are ignored for forward compatibility.
        assert_eq!(ok(r#"{"op":"ping","future":true}"#).1, Op::Ping);
    }

    #[test]
    fn malformed_messages_are_bad_requests() {
        for text in [
            "not json",
            "[1,2]",
            "42",
            "\"op\"",
            "{",
            "{}",
            r#"{"op":1}"#,
            r#"{"op":"subscribe"}"#,
            r#"{"op":"subscribe","topics":[]}"#,
            r#"{"op":"subscribe","topics":"a"}"#,
            r#"{"op":"subscribe","topics":["a"],"last":-1}"#,
            r#"{"op":"subscribe","topics":["a"],"last":1,"resume":{"epoch":"e","topics":{}}}"#,
            r#"{"op":"publish","topic":"a"}"#,
            r#"{"op":"publish","data":1}"#,
            r#"{"op":"publish","topic":"a","data":1,"headers":{"a":1}}"#,
            r#"{"op":"auth"}"#,
            r#"{"op":"ping","id":{"a":1}}"#,
            r#"{"op":"ping","id":[1]}"#,
        ] {
            let (_, e) = err(text);
            assert_eq!(e.code, ErrorCode::BadRequest, "{text}: {e}");
        }
    }

    #[test]
    fn arrays_are_not_messages_even_when_serde_could_read_them() {
        for text in [r#"["ping"]"#, "[1]", r#"["subscribe",1,["a"]]"#] {
            let (id, e) = err(text);
            assert_eq!((id, e.code), (None, ErrorCode::BadRequest), "{text}");
        }
    }

    #[test]
    fn errors_keep_the_id_when_readable() {
        let (id, e) = err(r#"{"op":"subscribe","id":7,"topics":"nope"}"#);
        assert_eq!(id.as_deref(), Some("7"));
        assert_eq!(e.code, ErrorCode::BadRequest);
        let (id, e) = err(r#"{"op":"fly","id":"abc"}"#);
        assert_eq!(id.as_deref(), Some("\"abc\""));
        assert_eq!(e.code, ErrorCode::UnknownOp);
    }

    #[test]
    fn deep_nesting_is_bounded_not_a_crash() {
        // `data` is skipped over iteratively (serde_json's ignore_value), so even
        // 100k levels cost no stack; it is carried verbatim to subscribers.
        let depth = 100_000;
        let deep = format!(
            r#"{{"op":"publish","topic":"a","data":{}{}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        match ok(&deep).1 {
            Op::Publish { data, .. } => assert_eq!(data.len(), 2 * depth),
            other => panic!("{other:?}"),
        }
        // Unbalanced nesting is a syntax error, not a hang.
        let broken = format!(
            r#"{{"op":"publish","topic":"a","data":{}}}"#,
            "[".repeat(depth)
        );
        assert_eq!(err(&broken).1.code, ErrorCode::BadRequest);
        // Typed fields go through serde's recursion limit.
        let typed = format!(
            r#"{{"op":"subscribe","topics":{}{}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        assert_eq!(err(&typed).1.code, ErrorCode::BadRequest);
        // Unknown fields are skipped the same iterative way.
        let unknown = format!(
            r#"{{"op":"ping","x":{}{}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        assert!(matches!(parse(&unknown), Ok((_, Op::Ping))));
    }

    #[test]
    fn server_messages_serialize_as_documented() {
        let id = RawValue::from_string("5".into()).expect("raw");
        let f = ServerMessage::Error {
            id: Some(&id),
            code: ErrorCode::Forbidden,
            message: "no",
        }
        .to_frame();
        assert_eq!(
            &*f,
            r#"{"type":"error","id":5,"code":"forbidden","message":"no"}"#
        );
        assert_eq!(
            &*ServerMessage::Ok { id: None }.to_frame(),
            r#"{"type":"ok"}"#
        );
        assert_eq!(&*ServerMessage::Ping.to_frame(), r#"{"type":"ping"}"#);
        assert_eq!(
            &*ServerMessage::Lagged { dropped: 120 }.to_frame(),
            r#"{"type":"lagged","dropped":120}"#
        );
        assert_eq!(
            &*ServerMessage::Reset {
                topic: "a",
                reason: ResetReason::HistoryExpired
            }
            .to_frame(),
            r#"{"type":"reset","topic":"a","reason":"history_expired"}"#
        );
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
