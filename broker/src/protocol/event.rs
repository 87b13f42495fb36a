//! Event frames: the one serialization each event gets.
//!
//! A topic renders an event into a [`Frame`] once; every subscriber's queue holds a
//! clone of the same `ByteString` (a reference count, no copy), and, with
//! permessage-deflate, the same compressed copy made once for all of them. The payload is
//! embedded as JSON when it parses as JSON, as a JSON string when it is other UTF-8,
//! and as `data_b64` otherwise (docs/protocol.md#event). History keeps the live frame;
//! a replayed copy differs only by `"replay":true`, spliced in after the type field.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use bytes::Bytes;
use bytestring::ByteString;
use herald_bridges::Source;
use serde::Serialize;
use serde_json::value::RawValue;

/// A serialized server message, shared by every connection that sends it.
#[derive(Clone)]
pub struct Frame {
    text: ByteString,
    /// Events under `session.compression = "deflate"`: the text compressed once, on
    /// first need, for every subscriber with a 15-bit window (`None` inside: it does
    /// not compress). Other frames (replies, notices) are one connection's own.
    deflated: Option<Arc<OnceLock<Option<Bytes>>>>,
}

/// Whether events get a shared compressed copy (`session.compression = "deflate"`
/// on a broker of this process); set by [`crate::Broker::start`].
static SHARED_DEFLATE: AtomicBool = AtomicBool::new(false);

/// Turns the shared compressed copy of events on (see [`Frame`]).
pub(crate) fn share_deflated_events() {
    SHARED_DEFLATE.store(true, Ordering::Relaxed);
}

impl Frame {
    /// A frame of static text (no compressed copy).
    pub const fn from_static(text: &'static str) -> Self {
        Frame {
            text: ByteString::from_static(text),
            deflated: None,
        }
    }

    /// An event frame: with a shared compressed copy when compression is on.
    fn event(text: String) -> Self {
        Frame {
            text: text.into(),
            deflated: SHARED_DEFLATE
                .load(Ordering::Relaxed)
                .then(|| Arc::new(OnceLock::new())),
        }
    }

    /// The text's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.text.as_bytes()
    }

    /// The text compressed with a `window_bits` window (permessage-deflate), or
    /// `None` when that does not make it smaller. An event compressed for a 15-bit
    /// window is compressed once and shared; anything else is compressed here.
    pub(crate) fn deflated(&self, window_bits: u8) -> Option<Bytes> {
        use crate::session::socket::deflate::{compress, MAX_WINDOW_BITS};
        match &self.deflated {
            Some(shared) if window_bits == MAX_WINDOW_BITS => shared
                .get_or_init(|| compress(self.as_bytes(), window_bits))
                .clone(),
            _ => compress(self.as_bytes(), window_bits),
        }
    }
}

impl std::ops::Deref for Frame {
    type Target = str;

    fn deref(&self) -> &str {
        &self.text
    }
}

impl PartialEq for Frame {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for Frame {}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.text.fmt(f)
    }
}

impl From<ByteString> for Frame {
    fn from(text: ByteString) -> Self {
        Frame {
            text,
            deflated: None,
        }
    }
}

impl From<String> for Frame {
    fn from(text: String) -> Self {
        ByteString::from(text).into()
    }
}

impl From<&'static str> for Frame {
    fn from(text: &'static str) -> Self {
        Frame::from_static(text)
    }
}

pub(crate) const EVENT_PREFIX: &str = r#"{"type":"event","#;

#[derive(Serialize)]
struct EventFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    topic: &'a str,
    seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    prev: Option<u64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    local: bool,
    ts: u64,
    source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Data<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_b64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    headers: &'a BTreeMap<String, String>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Data<'a> {
    Json(&'a RawValue),
    Text(&'a str),
}

/// What a topic knows about an event when it renders it.
#[derive(Debug, Clone, Copy)]
pub struct EventMeta<'a> {
    pub topic: &'a str,
    pub seq: u64,
    /// Cluster history: the topic's previous position, when known.
    pub prev: Option<u64>,
    /// Cluster history: an event that did not come from the stream (a bridge's),
    /// whose `seq` counts on this node only.
    pub local: bool,
    pub ts: u64,
    pub source: Source,
    pub key: Option<&'a str>,
    pub headers: &'a BTreeMap<String, String>,
}

/// Whether `frame` is an event (live or replayed), not a reply or a notice.
pub fn is_event(frame: &str) -> bool {
    frame.starts_with(EVENT_PREFIX)
}

/// Renders a live event frame.
pub fn render(meta: EventMeta<'_>, payload: &[u8]) -> Frame {
    let (data, data_b64) = match serde_json::from_slice::<&RawValue>(payload) {
        Ok(raw) => (Some(Data::Json(raw)), None),
        Err(_) => match std::str::from_utf8(payload) {
            Ok(text) => (Some(Data::Text(text)), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(payload)),
            ),
        },
    };
    let frame = EventFrame {
        kind: "event",
        topic: meta.topic,
        seq: meta.seq,
        prev: meta.prev,
        local: meta.local,
        ts: meta.ts,
        source: meta.source.as_str(),
        data,
        data_b64,
        key: meta.key,
        headers: meta.headers,
    };
    // Serializing strings, numbers and already-valid raw JSON cannot fail.
    Frame::event(serde_json::to_string(&frame).unwrap_or_default())
}

/// The same event flagged `"replay":true`, for `last` and `resume`.
pub fn replay_of(frame: &Frame) -> Frame {
    match frame.strip_prefix(EVENT_PREFIX) {
        Some(rest) => {
            let mut s = String::with_capacity(frame.len() + 15);
            s.push_str(EVENT_PREFIX);
            s.push_str(r#""replay":true,"#);
            s.push_str(rest);
            Frame::event(s)
        }
        None => frame.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta<'a>(headers: &'a BTreeMap<String, String>, key: Option<&'a str>) -> EventMeta<'a> {
        EventMeta {
            topic: "orders.eu",
            seq: 42,
            prev: None,
            local: false,
            ts: 1_763_800_000_123,
            source: Source::Kafka,
            key,
            headers,
        }
    }

    fn json(frame: &Frame) -> serde_json::Value {
        serde_json::from_str(frame).expect("frame is JSON")
    }

    #[test]
    fn json_payload_is_embedded() {
        let mut h = BTreeMap::new();
        h.insert("trace".to_string(), "abc".to_string());
        let f = render(meta(&h, Some("order-7")), br#" {"id": 7} "#);
        assert_eq!(
            json(&f),
            serde_json::json!({"type":"event","topic":"orders.eu","seq":42,"ts":1_763_800_000_123u64,
                "source":"kafka","data":{"id":7},"key":"order-7","headers":{"trace":"abc"}})
        );
        assert!(f.starts_with(EVENT_PREFIX));
    }

    #[test]
    fn text_payload_becomes_a_string_and_binary_becomes_base64() {
        let h = BTreeMap::new();
        let v = json(&render(meta(&h, None), b"hello \"world\""));
        assert_eq!(v["data"], "hello \"world\"");
        assert!(v.get("key").is_none() && v.get("headers").is_none());
        let v = json(&render(meta(&h, None), &[0xff, 0x00, 0x10]));
        assert_eq!(v["data_b64"], "/wAQ");
        assert!(v.get("data").is_none());
        // Two JSON values in a row are not one JSON payload: sent as text.
        let v = json(&render(meta(&h, None), b"1 2"));
        assert_eq!(v["data"], "1 2");
    }

    #[test]
    fn cluster_fields_follow_seq_and_are_absent_otherwise() {
        let h = BTreeMap::new();
        let plain = render(meta(&h, None), b"1");
        assert!(plain.starts_with(r#"{"type":"event","topic":"orders.eu","seq":42,"ts":"#));
        let with_prev = render(
            EventMeta {
                prev: Some(40),
                ..meta(&h, None)
            },
            b"1",
        );
        assert!(with_prev
            .starts_with(r#"{"type":"event","topic":"orders.eu","seq":42,"prev":40,"ts":"#));
        let local = render(
            EventMeta {
                local: true,
                ..meta(&h, None)
            },
            b"1",
        );
        assert!(
            local.starts_with(r#"{"type":"event","topic":"orders.eu","seq":42,"local":true,"ts":"#)
        );
    }

    #[test]
    fn replay_copy_adds_the_flag_only() {
        let h = BTreeMap::new();
        let live = render(meta(&h, None), b"{}");
        let replay = replay_of(&live);
        let mut expected = json(&live);
        expected["replay"] = serde_json::Value::Bool(true);
        assert_eq!(json(&replay), expected);
    }
}
