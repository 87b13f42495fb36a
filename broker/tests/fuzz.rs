//! Property-based fuzzing on stable Rust (proptest): what a hostile client or a bad
//! configuration file controls must never panic the broker, and must always get the
//! answer the contract promises.
//!
//! - **Client messages** (`protocol::parse`): arbitrary text, JSON objects with the
//!   right keys but wrong types, duplicate keys, huge numbers, deep nesting, escaped
//!   and unpaired-surrogate strings. Structured messages are checked against a small
//!   reference model of the parser; every result must render into a valid reply.
//! - **The session**, in process over a real socket: every message gets exactly the
//!   replies the contract promises (an error with the parser's code, or the op's
//!   reply), and the connection survives.
//! - **Topics and patterns** (`pattern`): validation agrees with a reference model on
//!   generated and arbitrary strings; `matches` agrees with a recursive model;
//!   `covers(g, p)` holds exactly when every topic `p` matches is matched by `g`.
//! - **Configuration** (`Config::load`): arbitrary TOML text, generated tables of real
//!   and unknown keys with values of every type, and arbitrary `HERALD_*` overrides
//!   give a config or an error that names a key, never a panic; a loaded config
//!   validates again, its masked rendering loads back and shows no NATS password.
//!
//! Each property runs a bounded number of cases (the `check(N, …)` calls below): the
//! whole file takes about ten seconds in a debug build. For a longer run, set
//! `PROPTEST_CASES` to run every property with that many cases instead (20,000 take
//! about ten minutes in a debug build); `PROPTEST_RNG_SEED` repeats a run:
//!
//! ```sh
//! PROPTEST_CASES=20000 cargo test -p herald-broker --test fuzz
//! ```
//!
//! A failure prints the shrunk input; turn it into a unit test next to the code.
//! (cargo-fuzz needs a nightly toolchain; these properties run on stable, in CI.)

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use herald::config::{Config, ConfigError};
use herald::protocol::{self, ErrorCode, Op, ServerMessage};
use herald::topic::{self, TopicError, MAX_TOPIC_BYTES};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};
use serde_json::value::RawValue;

// ---------------------------------------------------------------------------------
// Running properties
// ---------------------------------------------------------------------------------

/// `PROPTEST_CASES` when set, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A runner for `n` cases. Failures are not persisted to files: a failure prints its
/// shrunk input, which belongs in a unit test.
fn runner(n: u32) -> TestRunner {
    TestRunner::new(RunnerConfig {
        cases: cases(n),
        failure_persistence: None,
        ..RunnerConfig::default()
    })
}

/// Runs `test` on `n` cases of `strategy`; panics with the shrunk failing input.
fn check<S: Strategy>(n: u32, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    if let Err(e) = runner(n).run(&strategy, test) {
        panic!("{e}");
    }
}

// ---------------------------------------------------------------------------------
// JSON generation
// ---------------------------------------------------------------------------------

/// A JSON value as the generator builds it; rendered as text by [`J::render`], so it
/// can hold what `serde_json::Value` cannot (numbers beyond f64, unpaired surrogates,
/// nesting far past serde's recursion limit).
#[derive(Debug, Clone)]
enum J {
    Null,
    Bool(bool),
    /// An integer, rendered in full (beyond u64 too).
    Int(i128),
    /// Raw number text that is not an integer serde could read into u32/u64:
    /// exponents, fractions, `-0`, out-of-range magnitudes.
    Num(&'static str),
    Str(String),
    /// A string literal written with escapes; `decoded` is what serde reads it as,
    /// `None` when serde refuses it as a `String` (an unpaired surrogate).
    RawStr {
        text: &'static str,
        decoded: Option<&'static str>,
    },
    Arr(Vec<J>),
    /// Keys in order, duplicates allowed.
    Obj(Vec<(String, J)>),
    /// `depth` nested arrays (`[[[]]]`) or objects (`{"a":{"a":1}}`).
    Deep {
        depth: usize,
        objects: bool,
    },
}

impl J {
    fn render(&self) -> String {
        let mut out = String::new();
        self.render_into(&mut out);
        out
    }

    fn render_into(&self, out: &mut String) {
        match self {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Int(n) => out.push_str(&n.to_string()),
            J::Num(text) | J::RawStr { text, .. } => out.push_str(text),
            J::Str(s) => out.push_str(&string_literal(s)),
            J::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.render_into(out);
                }
                out.push(']');
            }
            J::Obj(fields) => {
                out.push('{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&string_literal(k));
                    out.push(':');
                    v.render_into(out);
                }
                out.push('}');
            }
            J::Deep { depth, objects } => {
                if *objects {
                    out.push_str(&r#"{"a":"#.repeat(*depth));
                    out.push('1');
                    out.push_str(&"}".repeat(*depth));
                } else {
                    out.push_str(&"[".repeat(*depth));
                    out.push_str(&"]".repeat(*depth));
                }
            }
        }
    }

    /// What serde reads as a `String`: `Some(Some(s))`; not a string: `Some(None)`;
    /// a string serde refuses: `None` (unknown to the model).
    fn as_str(&self) -> Option<Option<&str>> {
        match self {
            J::Str(s) => Some(Some(s)),
            J::RawStr { decoded, .. } => decoded.map(Some),
            _ => Some(None),
        }
    }

    /// Whether this is a string serde would read (`None`: unknown).
    fn is_str(&self) -> Option<bool> {
        self.as_str().map(|s| s.is_some())
    }

    fn is_uint(&self, max: u64) -> bool {
        matches!(self, J::Int(n) if *n >= 0 && *n <= i128::from(max))
    }

    /// `Option<T>` fields: JSON `null` reads as absent.
    fn is_null(&self) -> bool {
        matches!(self, J::Null)
    }

    /// Whether serde reads this as a `Vec<String>` (`None`: unknown); `Some(Some(n))`
    /// gives the length.
    fn as_string_array(&self) -> Option<Option<usize>> {
        match self {
            J::Arr(items) => {
                for item in items {
                    if !item.is_str()? {
                        return Some(None);
                    }
                }
                Some(Some(items.len()))
            }
            J::Deep {
                depth: 1,
                objects: false,
            } => Some(Some(0)),
            _ => Some(None),
        }
    }

    /// Whether serde reads this as a map whose values pass `value` (`None`: unknown).
    fn is_map_of(&self, value: impl Fn(&J) -> Option<bool>) -> Option<bool> {
        match self {
            J::Obj(fields) => {
                for (_, v) in fields {
                    if !value(v)? {
                        return Some(false);
                    }
                }
                Some(true)
            }
            _ => Some(false),
        }
    }

    /// Whether this is a valid `resume` object (`None`: unknown).
    fn is_resume(&self) -> Option<bool> {
        let J::Obj(fields) = self else {
            return Some(false);
        };
        let mut epoch = 0;
        let mut topics = 0;
        for (k, v) in fields {
            match k.as_str() {
                "epoch" => {
                    epoch += 1;
                    if !v.is_str()? {
                        return Some(false);
                    }
                }
                "topics" => {
                    topics += 1;
                    if !v.is_map_of(|t| Some(t.is_uint(u64::MAX)))? {
                        return Some(false);
                    }
                }
                _ => return Some(false),
            }
        }
        Some(epoch == 1 && topics == 1)
    }

    /// Whether this is a request id the protocol echoes (a string or a number).
    fn is_valid_id(&self) -> bool {
        matches!(self, J::Int(_) | J::Num(_) | J::Str(_) | J::RawStr { .. })
    }
}

fn string_literal(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

/// Number texts serde cannot read into an integer field.
const ODD_NUMBERS: &[&str] = &[
    "-0",
    "0.0",
    "1.5",
    "1e2",
    "1E+2",
    "-1e-7",
    "1e400",
    "-1e400",
    "1e-400",
    "123456789012345678901234567890",
    "-123456789012345678901234567890",
    "18446744073709551616",
    "4.2949672950e9",
];

/// String literals written with escapes.
const ESCAPED_STRINGS: &[(&str, Option<&str>)] = &[
    (r#""\u0070ing""#, Some("ping")),
    (r#""\u0073ubscribe""#, Some("subscribe")),
    (r#""a\u002eb""#, Some("a.b")),
    (r#""\u0000""#, Some("\u{0}")),
    (r#""\ud83d\ude00""#, Some("\u{1F600}")),
    (r#""\/\b\f\n\r\t\"\\""#, Some("/\u{8}\u{c}\n\r\t\"\\")),
    (r#""\ud800""#, None),
    (r#""\udc00x""#, None),
    (r#""\ud800\u0041""#, None),
];

/// Strings a client might send: topic-like, op-like, unicode, arbitrary.
fn text() -> BoxedStrategy<String> {
    prop_oneof![
        3 => "[a-z>*.]{0,12}",
        2 => any::<String>(),
        1 => prop::sample::select(vec![
            "", " ", "ping", "subscribe", "orders.*", ">", "é", "👍", "\u{0}", "\u{feff}",
            "\u{202e}rtl", "a\nb", "\"", "\\",
        ])
        .prop_map(str::to_owned),
        1 => (1usize..400).prop_map(|n| "é".repeat(n)),
    ]
    .boxed()
}

/// Topic names and patterns: valid ones over a small alphabet (so they overlap), and
/// invalid ones.
fn topicish() -> BoxedStrategy<String> {
    prop_oneof![
        4 => vec(prop::sample::select(vec!["a", "b", "c", "*"]), 1..4)
            .prop_flat_map(|tokens| (Just(tokens), any::<bool>()))
            .prop_map(|(tokens, tail)| {
                let mut s = tokens.join(".");
                if tail {
                    s.push_str(".>");
                }
                s
            }),
        1 => prop::sample::select(vec![
            "", ".", "a..b", ".a", "a.", ">.a", "a.>.b", "a b", "é", "a*", "**", "a/b",
        ])
        .prop_map(str::to_owned),
        1 => (250usize..260).prop_map(|n| "a".repeat(n)),
        1 => text(),
    ]
    .boxed()
}

/// Any JSON value, nested a few levels, with deep nesting as a leaf.
fn json() -> BoxedStrategy<J> {
    let leaf = prop_oneof![
        1 => Just(J::Null),
        1 => any::<bool>().prop_map(J::Bool),
        3 => prop_oneof![
            any::<i64>().prop_map(i128::from),
            any::<u64>().prop_map(i128::from),
            prop::sample::select(vec![
                0,
                1,
                -1,
                i128::from(u32::MAX),
                i128::from(u32::MAX) + 1,
                i128::from(u64::MAX),
                i128::from(u64::MAX) + 1,
                i128::MAX,
                i128::MIN,
            ]),
        ]
        .prop_map(J::Int),
        1 => prop::sample::select(ODD_NUMBERS).prop_map(J::Num),
        3 => text().prop_map(J::Str),
        1 => prop::sample::select(ESCAPED_STRINGS)
            .prop_map(|(text, decoded)| J::RawStr { text, decoded }),
        1 => (
            prop_oneof![1usize..200, 200usize..5_000, 5_000usize..20_000],
            any::<bool>()
        )
            .prop_map(|(depth, objects)| J::Deep { depth, objects }),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(J::Arr),
            vec((text(), inner), 0..6).prop_map(J::Obj),
        ]
    })
    .boxed()
}

/// Every field a client op may carry.
const FIELDS: [&str; 10] = [
    "op", "id", "topics", "last", "resume", "topic", "data", "key", "headers", "token",
];

const OPS: [&str; 6] = [
    "subscribe",
    "unsubscribe",
    "publish",
    "ping",
    "pong",
    "auth",
];

/// A value of the right type for field `name`.
fn right_value(name: &str) -> BoxedStrategy<J> {
    match name {
        "op" => prop_oneof![
            5 => prop::sample::select(OPS.to_vec()).prop_map(|s| J::Str(s.to_owned())),
            1 => text().prop_map(J::Str),
        ]
        .boxed(),
        "id" => prop_oneof![
            any::<u32>().prop_map(|n| J::Int(n.into())),
            text().prop_map(J::Str),
            prop::sample::select(ODD_NUMBERS).prop_map(J::Num),
        ]
        .boxed(),
        "topics" => prop_oneof![
            1 => Just(Vec::new()),
            9 => vec(topicish().prop_map(J::Str), 1..5),
        ]
        .prop_map(J::Arr)
        .boxed(),
        "last" => prop_oneof![0u32..20, any::<u32>()]
            .prop_map(|n| J::Int(n.into()))
            .boxed(),
        "resume" => (text(), vec((topicish(), any::<u64>()), 0..4))
            .prop_map(|(epoch, topics)| {
                J::Obj(vec![
                    ("epoch".into(), J::Str(epoch)),
                    (
                        "topics".into(),
                        J::Obj(
                            topics
                                .into_iter()
                                .map(|(t, s)| (t, J::Int(s.into())))
                                .collect(),
                        ),
                    ),
                ])
            })
            .boxed(),
        "topic" => topicish().prop_map(J::Str).boxed(),
        "data" => json(),
        "headers" => vec((text(), text().prop_map(J::Str)), 0..4)
            .prop_map(J::Obj)
            .boxed(),
        _ => text().prop_map(J::Str).boxed(),
    }
}

/// A value for field `name`: mostly of the right type, sometimes anything.
fn field_value(name: &'static str) -> BoxedStrategy<J> {
    prop_oneof![6 => right_value(name), 3 => json(), 1 => Just(J::Null)].boxed()
}

/// The fields op `op` reads, each with whether it is required.
fn fields_of(op: &str) -> &'static [(&'static str, bool)] {
    match op {
        "subscribe" => &[("topics", true), ("last", false), ("resume", false)],
        "unsubscribe" => &[("topics", true)],
        "publish" => &[
            ("topic", true),
            ("data", true),
            ("key", false),
            ("headers", false),
        ],
        "auth" => &[("token", true)],
        _ => &[],
    }
}

/// A client message: a JSON object of known fields (each maybe absent, maybe
/// mistyped), unknown fields, sometimes a duplicated field, in any order.
#[derive(Debug, Clone)]
struct Message {
    fields: Vec<(String, J)>,
    /// Whitespace before the object.
    lead: &'static str,
}

impl Message {
    fn render(&self) -> String {
        format!("{}{}", self.lead, J::Obj(self.fields.clone()).render())
    }

    /// How many times `name` occurs.
    fn count(&self, name: &str) -> usize {
        self.fields.iter().filter(|(k, _)| k == name).count()
    }

    fn get(&self, name: &str) -> Option<&J> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

/// Any mix of known fields, each maybe absent or mistyped.
fn any_fields() -> BoxedStrategy<Vec<(String, J)>> {
    FIELDS
        .iter()
        .map(|name| {
            let weight = if *name == "op" { 0.9 } else { 0.4 };
            prop::option::weighted(weight, field_value(name))
                .prop_map(move |v| v.map(|v| (name.to_string(), v)))
        })
        .collect::<Vec<_>>()
        .prop_map(|fields| fields.into_iter().flatten().collect())
        .boxed()
}

/// A well-formed request for one op (every field it reads, mostly of the right
/// type), sometimes with one field replaced by anything.
fn op_fields() -> BoxedStrategy<Vec<(String, J)>> {
    prop::sample::select(OPS.to_vec())
        .prop_flat_map(|op| {
            let fields = fields_of(op)
                .iter()
                .map(|(name, required)| {
                    let weight = if *required { 0.95 } else { 0.3 };
                    prop::option::weighted(weight, right_value(name))
                        .prop_map(move |v| v.map(|v| (name.to_string(), v)))
                })
                .collect::<Vec<_>>();
            (
                Just(op),
                prop::option::weighted(0.7, right_value("id")),
                fields,
                prop::option::weighted(0.15, (0usize..FIELDS.len(), json())),
            )
        })
        .prop_map(|(op, id, fields, corrupt)| {
            let mut out = vec![("op".to_owned(), J::Str(op.to_owned()))];
            out.extend(id.map(|id| ("id".to_owned(), id)));
            out.extend(fields.into_iter().flatten());
            if let Some((i, v)) = corrupt {
                let name = FIELDS[i];
                match out.iter_mut().find(|(k, _)| k == name) {
                    Some(field) => field.1 = v,
                    None => out.push((name.to_owned(), v)),
                }
            }
            out
        })
        .boxed()
}

fn message() -> impl Strategy<Value = Message> {
    (
        prop_oneof![3 => op_fields(), 2 => any_fields()],
        vec((text(), json()), 0..3),
        prop::option::weighted(0.05, (0usize..FIELDS.len(), json())),
        prop::sample::select(vec!["", " ", "\n\t "]),
    )
        .prop_flat_map(|(mut fields, unknown, duplicate, lead)| {
            fields.extend(unknown);
            if let Some((i, v)) = duplicate {
                fields.push((FIELDS[i].to_owned(), v));
            }
            Just(fields)
                .prop_shuffle()
                .prop_map(move |fields| Message { fields, lead })
        })
}

// ---------------------------------------------------------------------------------
// The parser's reference model
// ---------------------------------------------------------------------------------

/// What `parse` must return for a message: the op's name or the error code, and the
/// request id echoed in the reply (raw JSON text).
#[derive(Debug, PartialEq, Eq)]
struct Expected {
    result: Result<&'static str, ErrorCode>,
    id: Option<String>,
}

/// The model of `protocol::parse` for a generated message; `None` when the message
/// holds something the model does not decide (a string serde refuses, in a typed
/// field).
fn expected(m: &Message) -> Option<Expected> {
    let bad = |id: Option<String>| {
        Some(Expected {
            result: Err(ErrorCode::BadRequest),
            id,
        })
    };
    // The id the error reply of a message that fails as a whole still carries: read
    // on its own, when it occurs once and is a string or a number.
    let id = m
        .get("id")
        .filter(|v| m.count("id") == 1 && v.is_valid_id());
    let fallback_id = id.map(J::render);

    // Does the whole object deserialize? Known fields at most once, `op` a string,
    // every typed field of its type (or null).
    if FIELDS.iter().any(|f| m.count(f) > 1) {
        return bad(fallback_id);
    }
    let Some(op) = m.get("op") else {
        return bad(fallback_id);
    };
    let Some(op) = op.as_str()? else {
        return bad(fallback_id);
    };
    // A typed field reads when absent, null, or of its type (`None`: unknown).
    let field_ok = |name: &str, of_type: &dyn Fn(&J) -> Option<bool>| {
        m.get(name)
            .map_or(Some(true), |v| Some(v.is_null() || of_type(v)?))
    };
    let typed = [
        field_ok("topics", &|v| Some(v.as_string_array()?.is_some())),
        field_ok("last", &|v| Some(v.is_uint(u32::MAX.into()))),
        field_ok("resume", &J::is_resume),
        field_ok("topic", &J::is_str),
        field_ok("key", &J::is_str),
        field_ok("headers", &|v| v.is_map_of(J::is_str)),
        field_ok("token", &J::is_str),
    ];
    for ok in typed {
        if !ok? {
            return bad(fallback_id);
        }
    }
    // The whole object reads; now the id must be a string or a number.
    let id = match m.get("id") {
        None => None,
        Some(v) if v.is_valid_id() => Some(v.render()),
        Some(_) => return bad(None),
    };
    let present = |f: &str| m.get(f).is_some_and(|v| !v.is_null());
    let topics_ok = m
        .get("topics")
        .filter(|v| !v.is_null())
        .and_then(|v| v.as_string_array().flatten())
        .is_some_and(|n| n > 0);
    let result = match op {
        "subscribe" if !topics_ok => Err(ErrorCode::BadRequest),
        "subscribe" if present("last") && present("resume") => Err(ErrorCode::BadRequest),
        "subscribe" => Ok("subscribe"),
        "unsubscribe" if !topics_ok => Err(ErrorCode::BadRequest),
        "unsubscribe" => Ok("unsubscribe"),
        // `data` counts when present, even as null.
        "publish" if !present("topic") || m.get("data").is_none() => Err(ErrorCode::BadRequest),
        "publish" => Ok("publish"),
        "ping" => Ok("ping"),
        "pong" => Ok("pong"),
        "auth" if !present("token") => Err(ErrorCode::BadRequest),
        "auth" => Ok("auth"),
        _ => Err(ErrorCode::UnknownOp),
    };
    Some(Expected { result, id })
}

/// A server frame as a map of raw JSON values (so any id or `data` survives).
fn frame_fields(frame: &str) -> Result<BTreeMap<String, Box<RawValue>>, TestCaseError> {
    serde_json::from_str(frame).map_err(|e| {
        TestCaseError::fail(format!("server frame is not a JSON object ({e}): {frame}"))
    })
}

fn raw_str(fields: &BTreeMap<String, Box<RawValue>>, name: &str) -> Option<String> {
    fields
        .get(name)
        .and_then(|v| serde_json::from_str::<String>(v.get()).ok())
}

/// What the session's reply to a parse result looks like: a valid JSON frame with
/// the right type and the request id verbatim.
fn check_reply_frames(text: &str) -> Result<(), TestCaseError> {
    let parsed = protocol::parse(text);
    let (id, frame, kind) = match &parsed {
        Err((id, e)) => {
            prop_assert!(
                matches!(e.code, ErrorCode::BadRequest | ErrorCode::UnknownOp),
                "parse can only fail with bad_request or unknown_op, got {:?}",
                e.code
            );
            prop_assert!(!e.message.is_empty(), "an error without a message");
            let frame = ServerMessage::Error {
                id: id.as_deref(),
                code: e.code,
                message: &e.message,
            }
            .to_frame();
            (id, frame, "error")
        }
        Ok((id, op)) => {
            let frame = match op {
                Op::Subscribe { topics, .. } => ServerMessage::Subscribed {
                    id: id.as_deref(),
                    topics,
                },
                Op::Unsubscribe { topics } => ServerMessage::Unsubscribed {
                    id: id.as_deref(),
                    topics,
                },
                Op::Ping => ServerMessage::Pong { id: id.as_deref() },
                _ => ServerMessage::Ok { id: id.as_deref() },
            }
            .to_frame();
            let kind = match op {
                Op::Subscribe { .. } => "subscribed",
                Op::Unsubscribe { .. } => "unsubscribed",
                Op::Ping => "pong",
                _ => "ok",
            };
            (id, frame, kind)
        }
    };
    if let Some(id) = id {
        let first = id.get().as_bytes().first().copied().unwrap_or(b' ');
        prop_assert!(
            first == b'"' || first == b'-' || first.is_ascii_digit(),
            "an echoed id that is not a string or a number: {}",
            id.get()
        );
    }
    let fields = frame_fields(&frame)?;
    let frame_type = raw_str(&fields, "type");
    prop_assert_eq!(frame_type.as_deref(), Some(kind));
    prop_assert_eq!(
        fields.get("id").map(|v| v.get().to_owned()),
        id.as_ref().map(|v| v.get().to_owned()),
        "the reply carries the request id verbatim"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// Client messages: the parser
// ---------------------------------------------------------------------------------

/// Arbitrary text never panics the parser, and whatever it returns renders into a
/// valid reply frame carrying the id verbatim.
#[test]
fn parse_survives_arbitrary_text() {
    let soup = "[\\[\\]{}\":,0-9a-z .\\\\-]{0,64}";
    check(
        2000,
        prop_oneof![any::<String>(), soup.prop_map(|s| s)],
        |text| check_reply_frames(&text),
    );
}

/// Structured messages (right keys, wrong types, duplicates, huge numbers, deep
/// nesting, escapes): `parse` agrees with the reference model, carries `data`
/// verbatim, and its result renders into a valid reply.
#[test]
fn parse_agrees_with_the_model_on_structured_messages() {
    check(800, message(), |m| {
        let text = m.render();
        check_reply_frames(&text)?;
        let got = protocol::parse(&text);
        let Some(want) = expected(&m) else {
            return Ok(());
        };
        let got_summary = match &got {
            Ok((id, op)) => Expected {
                result: Ok(op.name()),
                id: id.as_ref().map(|r| r.get().to_owned()),
            },
            Err((id, e)) => Expected {
                result: Err(e.code),
                id: id.as_ref().map(|r| r.get().to_owned()),
            },
        };
        prop_assert_eq!(&got_summary, &want, "message {}", text);
        if let Ok((_, Op::Publish { data, .. })) = &got {
            let sent = m.get("data").map(J::render);
            prop_assert_eq!(
                Some(data.as_str()),
                sent.as_deref(),
                "data is carried verbatim"
            );
        }
        if let Ok((_, Op::Subscribe { topics, .. } | Op::Unsubscribe { topics })) = &got {
            if let Some(J::Arr(items)) = m.get("topics") {
                let sent: Vec<Option<&str>> = items.iter().map(|i| i.as_str().flatten()).collect();
                let got: Vec<Option<&str>> = topics.iter().map(|t| Some(t.as_str())).collect();
                prop_assert_eq!(got, sent, "topics are read as sent");
            }
        }
        Ok(())
    });
}

/// Valid messages cut short, or with one byte changed, inserted or removed: still an
/// answer, never a panic.
#[test]
fn parse_survives_mutated_messages() {
    let mutated = (
        message(),
        any::<prop::sample::Index>(),
        0u8..4,
        any::<char>(),
    )
        .prop_map(|(m, at, how, c)| {
            let mut text = m.render();
            let mut cut = at.index(text.len() + 1);
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            match how {
                0 => text.truncate(cut),
                1 => text.insert(cut, c),
                2 if cut < text.len() => {
                    text.remove(cut);
                }
                _ => {
                    let tail = text[cut..].replacen('"', "", 1);
                    text.truncate(cut);
                    text.push_str(&tail);
                }
            }
            text
        });
    check(800, mutated, |text| check_reply_frames(&text));
}

// ---------------------------------------------------------------------------------
// Client messages: the session, in process, over a real socket
// ---------------------------------------------------------------------------------

/// Reply types; every other frame a session may send is a notice or an event.
const REPLY_TYPES: [&str; 5] = ["error", "ok", "subscribed", "unsubscribed", "pong"];
const NOTICE_TYPES: [&str; 5] = ["event", "ping", "lagged", "reset", "welcome"];

/// A broker served in process (its own actix system on a thread) for the session
/// property: generous limits, so that the rate limiter and the size limit never
/// decide a fuzz case.
fn fuzz_server() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let system = actix_rt::System::new();
            let result = system.block_on(async move {
                let mut config = Config::default();
                config.server.shards = 2;
                config.session.max_message_bytes = 1 << 20;
                config.session.rate_limit_per_s = 1_000_000;
                config.session.rate_limit_burst = 1_000_000;
                config.history.size = 5;
                let broker = herald::Broker::start(config)?;
                let server = actix_web::HttpServer::new(move || {
                    actix_web::App::new().configure(broker.configure())
                })
                .workers(1)
                .disable_signals()
                .bind(("127.0.0.1", 0))?;
                let _ = tx.send(server.addrs()[0]);
                server.run().await?;
                anyhow::Ok(())
            });
            if let Err(e) = result {
                eprintln!("fuzz server failed: {e:#}");
            }
        });
        rx.recv_timeout(Duration::from_secs(20))
            .expect("the in-process broker starts")
    })
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Next text frame within 5 s.
async fn next_text(ws: &mut Ws) -> Result<String, TestCaseError> {
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .map_err(|_| TestCaseError::fail("no reply within 5 s"))?;
        match msg {
            Some(Ok(WsMessage::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(WsMessage::Close(frame))) => {
                return Err(TestCaseError::fail(format!(
                    "the session closed: {frame:?}"
                )))
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(TestCaseError::fail(format!("websocket error: {e}"))),
            None => return Err(TestCaseError::fail("the connection ended")),
        }
    }
}

/// Sends `text`, then a ping with a unique id, and reads until that ping's pong (and
/// for a publish, until its asynchronous `ok`). Every frame must be a JSON object of
/// a known type; the message must get exactly the replies the contract promises.
async fn exchange(ws: &mut Ws, text: &str, sentinel: u64) -> Result<(), TestCaseError> {
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    let parsed = protocol::parse(text);
    let sentinel_id = format!("\"fuzz-sentinel-{sentinel}\"");
    ws.send(WsMessage::text(text.to_owned()))
        .await
        .map_err(|e| TestCaseError::fail(format!("send: {e}")))?;
    ws.send(WsMessage::text(format!(
        r#"{{"op":"ping","id":{sentinel_id}}}"#
    )))
    .await
    .map_err(|e| TestCaseError::fail(format!("send sentinel: {e}")))?;
    let expected_replies = match &parsed {
        Ok((_, Op::Pong)) => 0,
        _ => 1,
    };
    let mut replies: Vec<BTreeMap<String, Box<RawValue>>> = Vec::new();
    let mut sentinel_seen = false;
    while !sentinel_seen || replies.len() < expected_replies {
        let frame = next_text(ws).await?;
        let fields = frame_fields(&frame)?;
        let kind = raw_str(&fields, "type").unwrap_or_default();
        if kind == "pong" && fields.get("id").map(|v| v.get()) == Some(sentinel_id.as_str()) {
            sentinel_seen = true;
        } else if REPLY_TYPES.contains(&kind.as_str()) {
            replies.push(fields);
        } else {
            prop_assert!(
                NOTICE_TYPES.contains(&kind.as_str()),
                "unknown frame type in {}",
                frame
            );
        }
    }
    prop_assert_eq!(replies.len(), expected_replies, "replies to {}", text);
    let Some(reply) = replies.first() else {
        return Ok(());
    };
    let kind = raw_str(reply, "type").unwrap_or_default();
    let reply_id = reply.get("id").map(|v| v.get().to_owned());
    match parsed {
        Err((id, e)) => {
            prop_assert_eq!(kind.as_str(), "error");
            let code = raw_str(reply, "code");
            prop_assert_eq!(code.as_deref(), Some(e.code.as_str()));
            prop_assert_eq!(reply_id, id.map(|r| r.get().to_owned()));
        }
        Ok((id, op)) => {
            prop_assert_eq!(reply_id, id.map(|r| r.get().to_owned()));
            let success = match op {
                Op::Subscribe { .. } => "subscribed",
                Op::Unsubscribe { .. } => "unsubscribed",
                Op::Ping => "pong",
                _ => "ok",
            };
            prop_assert!(
                kind == success || kind == "error",
                "reply {} to {}",
                kind,
                text
            );
            if kind == "error" {
                prop_assert!(
                    raw_str(reply, "code").is_some() && raw_str(reply, "message").is_some(),
                    "an error reply without code or message"
                );
            }
        }
    }
    Ok(())
}

/// Every message, over a real WebSocket to an in-process broker, gets the replies the
/// contract promises and leaves the connection open.
#[test]
fn session_answers_every_message() {
    let addr = fuzz_server();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ws = rt.block_on(async {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .expect("connect to the in-process broker");
        let welcome = next_text(&mut ws).await.expect("welcome");
        assert!(welcome.contains(r#""type":"welcome""#), "{welcome}");
        ws
    });
    let ws = RefCell::new(ws);
    let sentinel = std::cell::Cell::new(0u64);
    let inputs = prop_oneof![
        6 => message().prop_map(|m| m.render()),
        1 => any::<String>(),
        1 => "[\\[\\]{}\":,0-9a-z .\\\\-]{0,64}".prop_map(|s| s),
    ];
    check(300, inputs, |text| {
        sentinel.set(sentinel.get() + 1);
        rt.block_on(exchange(&mut ws.borrow_mut(), &text, sentinel.get()))
    });
}

// ---------------------------------------------------------------------------------
// Topics and patterns
// ---------------------------------------------------------------------------------

/// The reference model of `validate_pattern`, written from docs/protocol.md#1-topics.
fn model_validate(s: &str) -> Result<bool, TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong);
    }
    let tokens: Vec<&str> = s.split('.').collect();
    let mut wildcard = false;
    for (i, token) in tokens.iter().enumerate() {
        let last = i + 1 == tokens.len();
        if token.is_empty() {
            return Err(TopicError::EmptyToken(s.to_owned()));
        } else if *token == "*" {
            wildcard = true;
        } else if *token == ">" {
            if !last {
                return Err(TopicError::TailNotLast(s.to_owned()));
            }
            wildcard = true;
        } else if !token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-:".contains(c))
        {
            return Err(TopicError::BadCharacter(s.to_owned()));
        }
    }
    Ok(wildcard)
}

/// The reference model of `matches`: token by token, recursively.
fn model_matches(pattern: &[&str], topic: &[&str]) -> bool {
    match (pattern.split_first(), topic.split_first()) {
        (None, None) => true,
        (Some((&">", rest)), Some(_)) => rest.is_empty(),
        (Some((&"*", p)), Some((_, t))) => model_matches(p, t),
        (Some((a, p)), Some((b, t))) => a == b && model_matches(p, t),
        _ => false,
    }
}

fn tokens(s: &str) -> Vec<&str> {
    s.split('.').collect()
}

/// Candidate patterns from pieces that stress the grammar.
fn pattern_soup() -> impl Strategy<Value = String> {
    vec(
        prop::sample::select(vec![
            "a", "b", "*", ">", "", "é", " ", "a*", ">>", "-", ":", "_", "A9", "x-y:z",
        ]),
        1..6,
    )
    .prop_map(|t| t.join("."))
}

/// A valid pattern over {a, b, *, >} with at most `max` tokens.
fn small_pattern(max: usize) -> impl Strategy<Value = String> {
    (
        vec(prop::sample::select(vec!["a", "b", "*"]), 0..max),
        prop::sample::select(vec!["a", "b", "*", ">"]),
    )
        .prop_map(|(mut t, last)| {
            t.push(last);
            t.join(".")
        })
}

/// Every topic of 1..=`len` tokens over `alphabet`.
fn all_topics(alphabet: &[&str], len: usize) -> Vec<String> {
    let mut all: Vec<Vec<&str>> = vec![Vec::new()];
    let mut out = Vec::new();
    for _ in 0..len {
        let mut next = Vec::new();
        for prefix in &all {
            for t in alphabet {
                let mut p = prefix.clone();
                p.push(*t);
                out.push(p.join("."));
                next.push(p);
            }
        }
        all = next;
    }
    out
}

/// `validate_pattern` and `validate_topic` never panic and agree with the model, on
/// arbitrary strings and on strings built from the grammar's pieces.
#[test]
fn validation_agrees_with_the_model() {
    let input = prop_oneof![
        any::<String>(),
        pattern_soup(),
        (pattern_soup(), 200usize..300).prop_map(|(p, n)| format!("{}{p}", "a".repeat(n))),
    ];
    check(3000, input, |s| {
        let want = model_validate(&s);
        prop_assert_eq!(topic::validate_pattern(&s), want.clone(), "{:?}", s);
        let topic = topic::validate_topic(&s);
        match want {
            Ok(false) => prop_assert_eq!(topic, Ok(())),
            Ok(true) => prop_assert_eq!(topic, Err(TopicError::Wildcard(s.clone()))),
            Err(e) => prop_assert_eq!(topic, Err(e)),
        }
        // Messages go to clients verbatim: never empty.
        if let Err(e) = topic::validate_pattern(&s) {
            prop_assert!(!e.to_string().is_empty());
        }
        Ok(())
    });
}

/// `matches` and `Pattern::matches` agree with the model on generated patterns and
/// topics over a small alphabet (so they often match), and never panic on arbitrary
/// strings.
#[test]
fn matching_agrees_with_the_model() {
    let topic = vec(prop::sample::select(vec!["a", "b", "c"]), 1..6).prop_map(|t| t.join("."));
    check(3000, (small_pattern(5), topic), |(p, t)| {
        let want = model_matches(&tokens(&p), &tokens(&t));
        prop_assert_eq!(topic::matches(&p, &t), want, "{} ~ {}", p, t);
        let parsed = topic::Pattern::parse(&p).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(parsed.matches(&t), want, "Pattern {} ~ {}", p, t);
        Ok(())
    });
    check(1000, (any::<String>(), any::<String>()), |(p, t)| {
        let _ = topic::matches(&p, &t);
        let _ = topic::covers(&p, &t);
        Ok(())
    });
}

/// `covers(g, p)` holds exactly when every topic `p` matches is matched by `g`,
/// checked over every topic that could tell them apart (each token of either, plus
/// one neither has, up to one token longer than the longer of them).
#[test]
fn covers_is_exact() {
    check(2000, (small_pattern(4), small_pattern(4)), |(g, p)| {
        let (gt, pt) = (tokens(&g), tokens(&p));
        let mut alphabet: Vec<&str> = gt
            .iter()
            .chain(&pt)
            .copied()
            .filter(|t| *t != "*" && *t != ">")
            .collect();
        alphabet.sort_unstable();
        alphabet.dedup();
        alphabet.push("fresh");
        let universe = all_topics(&alphabet, gt.len().max(pt.len()) + 1);
        let counterexample = universe
            .iter()
            .find(|t| topic::matches(&p, t) && !topic::matches(&g, t));
        let covers = topic::covers(&g, &p);
        prop_assert_eq!(
            covers,
            counterexample.is_none(),
            "covers({}, {}) = {}; a topic p matches but g does not: {:?}",
            g,
            p,
            covers,
            counterexample
        );
        // A concrete topic is covered exactly when it is matched.
        for t in universe.iter().take(40) {
            prop_assert_eq!(topic::covers(&g, t), topic::matches(&g, t), "{} / {}", g, t);
        }
        Ok(())
    });
}

/// Coverage is a preorder: reflexive and transitive.
#[test]
fn covers_is_reflexive_and_transitive() {
    check(
        2000,
        (small_pattern(4), small_pattern(4), small_pattern(4)),
        |(a, b, c)| {
            prop_assert!(topic::covers(&a, &a), "covers({}, {})", a, a);
            if topic::covers(&a, &b) && topic::covers(&b, &c) {
                prop_assert!(
                    topic::covers(&a, &c),
                    "{} ⊇ {} ⊇ {} but not {} ⊇ {}",
                    a,
                    b,
                    c,
                    a,
                    c
                );
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------

/// Every configuration key: `(section, key, default value)`, from the defaults.
fn config_keys() -> Vec<(String, String, toml::Value)> {
    let defaults = toml::Table::try_from(Config::default()).expect("defaults serialize");
    let mut keys = Vec::new();
    for (section, table) in &defaults {
        if let Some(table) = table.as_table() {
            for (key, value) in table {
                keys.push((section.clone(), key.clone(), value.clone()));
            }
        }
    }
    keys
}

/// The keys of one `[[bridge.nats]]` or `[[bridge.kafka]]` entry, with defaults.
fn bridge_keys(nats: bool) -> Vec<(String, toml::Value)> {
    let table = if nats {
        toml::Table::try_from(herald::config::NatsBridgeConfig::default())
    } else {
        toml::Table::try_from(herald::config::KafkaBridgeConfig::default())
    };
    let mut keys: Vec<(String, toml::Value)> =
        table.expect("bridge defaults").into_iter().collect();
    // Optional keys the defaults leave out.
    if nats {
        let mut jetstream = toml::Table::new();
        jetstream.insert("stream".into(), "EVENTS".into());
        jetstream.insert("deliver".into(), "all".into());
        keys.push(("jetstream".into(), toml::Value::Table(jetstream)));
    }
    keys
}

/// Addresses `server.listen` may get: literal addresses or none at all, never a host
/// name, so that no property ever resolves a name.
const LISTENS: &[&str] = &[
    "127.0.0.1:0",
    "0.0.0.0:8080",
    "[::1]:0",
    "127.0.0.1:99999",
    "127.0.0.1",
    "nowhere",
    "",
    "1.2.3.4.5:80",
    "[::1:0",
];

/// String values that mean something to some key.
const WORDS: &[&str] = &[
    "none",
    "jwt",
    "drop",
    "disconnect",
    "text",
    "json",
    "latest",
    "earliest",
    "last:5",
    "last:0",
    "{topic}",
    "{topic}.{key}",
    "{nope}",
    "a.>",
    "events.>",
    "herald.",
    "nats://127.0.0.1:4222",
    "nats://a:notaport",
    "tls://127.0.0.1:4222",
    "https://a.example",
    "a..b",
    "*",
    "info",
    "herald=debug",
    "[",
    "new",
    "all",
    "last_per_subject",
    "orders",
    "u:pw@127.0.0.1:4222,nats://127.0.0.1:4223",
    "nats://127.0.0.1:1, nats://u:pw@127.0.0.1:2",
];

/// librdkafka property names, real and not.
const KAFKA_PROPERTIES: &[&str] = &[
    "fetch.min.bytes",
    "session.timeout.ms",
    "security.protocol",
    "sasl.mechanisms",
    "ssl.key.password",
    "compression.codec",
    "group.id",
    "bootstrap.servers",
    "no.such.property",
    "",
];

/// A TOML value of any type.
fn any_toml() -> BoxedStrategy<toml::Value> {
    use toml::Value as V;
    let leaf = prop_oneof![
        3 => prop_oneof![
            any::<i64>(),
            prop::sample::select(vec![
                0, 1, -1, 99, 127, 128, 1023, 1024, 65_536, 1 << 32, 1 << 61, i64::MAX, i64::MIN,
            ]),
        ]
        .prop_map(V::Integer),
        1 => prop_oneof![any::<f64>(), Just(f64::NAN), Just(f64::INFINITY), Just(0.5)]
            .prop_map(V::Float),
        1 => any::<bool>().prop_map(V::Boolean),
        3 => prop_oneof![prop::sample::select(WORDS).prop_map(str::to_owned), text()]
            .prop_map(V::String),
        1 => Just(V::Datetime("1979-05-27T07:32:00Z".parse().expect("datetime"))),
    ];
    leaf.prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(V::Array),
            vec(("[a-z_]{1,8}", inner), 0..4).prop_map(|kv| V::Table(kv.into_iter().collect())),
        ]
    })
    .boxed()
}

/// A value for `key`: mostly of the type of its default (in ranges that pass and
/// ranges that do not), sometimes of any type. `listen` gets addresses only.
fn toml_value(key: &str, default: &toml::Value) -> BoxedStrategy<toml::Value> {
    use toml::Value as V;
    if key == "listen" {
        return prop::sample::select(LISTENS)
            .prop_map(|s| V::String(s.to_owned()))
            .boxed();
    }
    let right: BoxedStrategy<V> = match default {
        V::Integer(d) => prop_oneof![
            3 => 0..=(d.saturating_mul(2).max(10)),
            1 => prop::sample::select(vec![0, 1, 127, 128, 1023, 1024, 4096, 1 << 20]),
        ]
        .prop_map(V::Integer)
        .boxed(),
        V::Boolean(_) => any::<bool>().prop_map(V::Boolean).boxed(),
        V::String(d) => prop_oneof![
            Just(d.clone()),
            prop::sample::select(WORDS).prop_map(str::to_owned),
            text(),
        ]
        .prop_map(V::String)
        .boxed(),
        V::Array(_) => vec(
            prop_oneof![
                prop::sample::select(WORDS).prop_map(str::to_owned),
                topicish()
            ],
            0..3,
        )
        .prop_map(|items| V::Array(items.into_iter().map(V::String).collect()))
        .boxed(),
        V::Table(d) if key == "properties" || d.is_empty() => vec(
            (
                prop::sample::select(KAFKA_PROPERTIES).prop_map(str::to_owned),
                prop_oneof![
                    prop::sample::select(WORDS).prop_map(|s| V::String(s.to_owned())),
                    (0i64..100_000).prop_map(V::Integer),
                    any::<bool>().prop_map(V::Boolean),
                    text().prop_map(V::String),
                ],
            ),
            0..3,
        )
        .prop_map(|kv| V::Table(kv.into_iter().collect()))
        .boxed(),
        other => Just(other.clone()).boxed(),
    };
    prop_oneof![8 => right, 1 => any_toml(), 1 => Just(default.clone())].boxed()
}

/// Entries for a section or bridge: real keys with values, sometimes an unknown key.
fn section_entries(keys: Vec<(String, toml::Value)>, most: usize) -> BoxedStrategy<toml::Table> {
    let real = prop::sample::select(keys).prop_flat_map(|(k, default)| {
        let v = toml_value(&k, &default);
        (Just(k), v)
    });
    (
        vec(real, 0..most),
        prop::option::weighted(0.05, ("[a-z_]{1,10}", any_toml())),
    )
        .prop_map(|(entries, unknown)| entries.into_iter().chain(unknown).collect())
        .boxed()
}

/// A whole config file as a TOML table.
fn config_table() -> impl Strategy<Value = toml::Table> {
    let mut sections: BTreeMap<String, Vec<(String, toml::Value)>> = BTreeMap::new();
    for (section, key, default) in config_keys() {
        sections.entry(section).or_default().push((key, default));
    }
    let names: Vec<String> = sections.keys().cloned().collect();
    let per_section = prop::sample::select(names).prop_flat_map(move |name| {
        let keys = sections.get(&name).cloned().unwrap_or_default();
        (Just(name), section_entries(keys, 6))
    });
    let bridges = |nats: bool| {
        prop::option::weighted(0.25, vec(section_entries(bridge_keys(nats), 5), 1..3))
            .prop_map(Option::unwrap_or_default)
    };
    (
        vec(per_section, 0..5),
        bridges(true),
        bridges(false),
        prop::option::weighted(0.03, ("[a-z]{1,8}", any_toml())),
    )
        .prop_map(|(sections, nats, kafka, stray)| {
            use toml::Value as V;
            let mut table = toml::Table::new();
            for (name, entries) in sections {
                table.insert(name, V::Table(entries));
            }
            let mut bridge = toml::Table::new();
            if !nats.is_empty() {
                bridge.insert(
                    "nats".into(),
                    V::Array(nats.into_iter().map(V::Table).collect()),
                );
            }
            if !kafka.is_empty() {
                bridge.insert(
                    "kafka".into(),
                    V::Array(kafka.into_iter().map(V::Table).collect()),
                );
            }
            if !bridge.is_empty() {
                table.insert("bridge".into(), V::Table(bridge));
            }
            if let Some((k, v)) = stray {
                table.insert(k, v);
            }
            table
        })
}

/// `HERALD_*` variables: real keys, unknown ones, odd spellings, values of any shape.
fn env_vars() -> impl Strategy<Value = Vec<(String, String)>> {
    let keys = config_keys();
    let var = prop_oneof![
        6 => prop::sample::select(keys).prop_map(|(s, k, _)| {
            (format!("HERALD_{}__{}", s.to_uppercase(), k.to_uppercase()), k)
        }),
        1 => "HERALD_[A-Z_]{0,12}".prop_map(|v| (v, String::new())),
        1 => prop::sample::select(vec![
            "HERALD___", "HERALD_SERVER__", "HERALD__LISTEN", "HERALD_BRIDGE__NATS",
            "HERALD_BRIDGE__NATS__0__URL", "HERALD_SESSION__QUEUE_MAX_BYTES__X", "herald_server__listen",
        ])
        .prop_map(|v| (v.to_owned(), String::new())),
    ];
    let value_text = prop_oneof![
        prop::sample::select(vec![
            "",
            "0",
            "-1",
            "1e999",
            "9223372036854775808",
            "true",
            "[1,2",
            "[\"a\",\"b\"]",
            "{a=1}",
            "\"quoted\"",
            "1\nserver = 2",
            "[[x]]",
            "nan",
            "inf",
            "0x10",
            "[{name=\"n\",url=\"nats://127.0.0.1:1\"}]",
        ])
        .prop_map(str::to_owned),
        prop::sample::select(WORDS).prop_map(str::to_owned),
        text(),
    ];
    vec(
        (var, value_text).prop_map(|((var, key), value)| {
            // `server.listen` gets addresses only (no name resolution).
            let value = if key == "listen" {
                LISTENS[value.len() % LISTENS.len()].to_owned()
            } else {
                value
            };
            (var, value)
        }),
        0..4,
    )
}

/// What a refused configuration must say: which key (or variable, or file) is at
/// fault.
fn check_config_error(e: &ConfigError, structured: bool) -> Result<(), TestCaseError> {
    let message = e.to_string();
    match e {
        ConfigError::Invalid { key, .. } => {
            prop_assert!(
                !key.is_empty() && key != ".",
                "an error that names no key: {}",
                message
            );
            prop_assert!(message.contains(key.as_str()), "{}", message);
        }
        ConfigError::UnknownEnv { var, key } => {
            prop_assert!(
                var.starts_with("HERALD_") && message.contains(key.as_str()),
                "{}",
                message
            );
        }
        ConfigError::Syntax { .. } => {
            prop_assert!(
                !structured,
                "a generated TOML table is not TOML: {}",
                message
            );
        }
        other => prop_assert!(false, "unexpected error kind: {other}"),
    }
    Ok(())
}

/// A loaded configuration is consistent: it validates again, and its masked TOML
/// rendering loads back.
fn check_loaded(config: &Config, file: &std::path::Path) -> Result<(), TestCaseError> {
    prop_assert!(
        config.validate().is_ok(),
        "a loaded config fails validate()"
    );
    let masked = config.to_masked_toml();
    std::fs::write(file, &masked).map_err(|e| TestCaseError::fail(e.to_string()))?;
    if let Err(e) = Config::load(Some(file), Vec::new()) {
        prop_assert!(
            false,
            "the effective config does not load back: {e}\n{masked}"
        );
    }
    Ok(())
}

/// Arbitrary text as a config file: a config or an error, never a panic.
#[test]
fn config_survives_arbitrary_text() {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    let soup = "[\\[\\]{}=\"'.,a-z_0-9 \n#]{0,80}";
    let text = prop_oneof![any::<String>(), soup.prop_map(|s| s)];
    check(1000, text, |text| {
        std::fs::write(file.path(), &text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        match Config::load(Some(file.path()), Vec::new()) {
            Ok(_) => Ok(()),
            Err(e) => check_config_error(&e, false),
        }
    });
}

/// Generated config files (real and unknown keys, values of every type, bridges)
/// with generated `HERALD_*` overrides: a consistent config or an error that names
/// the key, never a panic.
#[test]
fn config_loads_or_names_the_key() {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    let scratch = tempfile::NamedTempFile::new().expect("temp file");
    check(600, (config_table(), env_vars()), |(table, env)| {
        let text = toml::to_string(&table).map_err(|e| TestCaseError::reject(e.to_string()))?;
        std::fs::write(file.path(), &text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        match Config::load(Some(file.path()), env.clone()) {
            Ok(config) => check_loaded(&config, scratch.path()),
            Err(e) => check_config_error(&e, true),
        }
    });
}

/// Environment overrides alone, on the built-in defaults.
#[test]
fn env_overrides_load_or_name_the_variable() {
    let scratch = tempfile::NamedTempFile::new().expect("temp file");
    check(1000, env_vars(), |env| match Config::load(None, env) {
        Ok(config) => check_loaded(&config, scratch.path()),
        Err(e) => check_config_error(&e, true),
    });
}

/// Secrets in a NATS URL list (user info of any URL, with or without a scheme) never
/// show in the masked configuration, and masking never panics.
#[test]
fn masked_config_shows_no_nats_password() {
    let url = (
        prop::sample::select(vec!["", "nats://", "tls://", "ws://"]),
        prop::option::of(("[a-z]{1,6}", prop::option::of("SECRET[A-Z0-9]{4}"))),
        prop::sample::select(vec!["127.0.0.1:4222", "h", "[::1]:4222", "h:1/p@q"]),
        prop::sample::select(vec!["", " "]),
    )
        .prop_map(|(scheme, user, host, pad)| {
            let user = match user {
                Some((u, Some(p))) => format!("{u}:{p}@"),
                Some((u, None)) => format!("SECRET{u}@"),
                None => String::new(),
            };
            format!("{pad}{scheme}{user}{host}")
        });
    check(1000, vec(url, 1..4), |urls| {
        let mut config = Config::default();
        config.bridge.nats.push(herald::config::NatsBridgeConfig {
            url: urls.join(","),
            ..Default::default()
        });
        let masked = config.to_masked_toml();
        prop_assert!(!masked.contains("SECRET"), "a secret shows in\n{}", masked);
        Ok(())
    });
}
